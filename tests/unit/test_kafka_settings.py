"""Kafka settings: where each comes from, the config file's strictness, secrets kept out of
sight, and every client builder handed the security settings (real client objects, built
without connecting)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from streams.cli.main import cli
from streams.kafka import clients
from streams.kafka.settings import (
    CONFIG_ENV,
    DEFAULT_BOOTSTRAP,
    KafkaSettings,
    KafkaSettingsError,
    child_environment,
)
from support.tls import TlsFiles, make_tls

SECRET = "hunter2-not-for-logs"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- where each setting comes from -------------------------------------------------------


def test_the_default_is_loopback_plaintext_and_not_named() -> None:
    s = KafkaSettings.resolve(env={})
    assert (s.bootstrap, s.security_protocol, s.bootstrap_named) == (
        DEFAULT_BOOTSTRAP,
        "PLAINTEXT",
        False,
    )
    assert s.ssl_context() is None


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    config = write(
        tmp_path / "kafka.toml",
        'bootstrap = "file:1"\nclient_id = "from-file"\nsasl_mechanism = "SCRAM-SHA-256"\n'
        'security_protocol = "SASL_PLAINTEXT"\nsasl_username = "u"\nsasl_password = "p"\n',
    )
    env = {"KAFKA_BOOTSTRAP": "env:2", "KAFKA_CLIENT_ID": "from-env", CONFIG_ENV: str(config)}

    assert KafkaSettings.resolve("flag:3", env=env).bootstrap == "flag:3"
    from_env = KafkaSettings.resolve(env=env)
    assert (from_env.bootstrap, from_env.client_id) == ("env:2", "from-env")
    assert from_env.sasl_mechanism == "SCRAM-SHA-256"  # only the file says it
    assert from_env.bootstrap_named
    only_file = KafkaSettings.resolve(env={CONFIG_ENV: str(config)})
    assert (only_file.bootstrap, only_file.client_id) == ("file:1", "from-file")


def test_the_flag_names_the_file_before_the_environment(tmp_path: Path) -> None:
    flagged = write(tmp_path / "a.toml", 'bootstrap = "a:1"\n')
    env_file = write(tmp_path / "b.toml", 'bootstrap = "b:1"\n')
    s = KafkaSettings.resolve(config_file=flagged, env={CONFIG_ENV: str(env_file)})
    assert s.bootstrap == "a:1"


def test_a_config_file_with_tls_files_read_from_its_folder(tmp_path: Path, tls: TlsFiles) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "ca.pem").write_bytes(tls.ca.read_bytes())
    config = write(
        folder / "kafka.toml",
        'bootstrap = "kafka-1:9093,kafka-2:9093"\nsecurity_protocol = "SSL"\n'
        'ssl_cafile = "ca.pem"\n',
    )
    s = KafkaSettings.resolve(config_file=config, env={})
    assert s.ssl_cafile == folder / "ca.pem"
    ctx = s.ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "caretally test ca"),),)]


# -- the file is strict; every bad case has a clear error --------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('bootstrap = "a:1"\nssl_ca_location = "x"\n', "unknown key 'ssl_ca_location'"),
        ("bootstrap = 9092\n", "bootstrap must be a string"),
        ("bootstrap = \n", "is not TOML"),
        ('security_protocol = "TLS"\n', "security_protocol: Input should be 'PLAINTEXT'"),
        ('bootstrap = "kafka"\n', "bootstrap address 'kafka' is not host:port"),
        ('security_protocol = "SASL_SSL"\n', "SASL_SSL needs sasl_username and sasl_password"),
        (
            'security_protocol = "SASL_PLAINTEXT"\nsasl_username = "u"\n',
            "SASL_PLAINTEXT needs sasl_password",
        ),
        ('sasl_username = "u"\nsasl_password = "p"\n', "security_protocol is PLAINTEXT"),
        ('ssl_cafile = "ca.pem"\n', "ssl_cafile given but security_protocol is PLAINTEXT"),
        ('sasl_mechanism = "GSSAPI"\n', "sasl_mechanism: Input should be 'PLAIN'"),
    ],
)
def test_a_bad_config_file_is_refused_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    config = write(tmp_path / "kafka.toml", text)
    with pytest.raises(KafkaSettingsError) as caught:
        KafkaSettings.resolve(config_file=config, env={})
    assert message in str(caught.value)


def test_missing_and_unusable_files_are_named(tmp_path: Path, tls: TlsFiles) -> None:
    with pytest.raises(KafkaSettingsError, match="No such file"):
        KafkaSettings.resolve(config_file=tmp_path / "absent.toml", env={})
    ssl_env = {"KAFKA_SECURITY_PROTOCOL": "SSL"}
    with pytest.raises(KafkaSettingsError, match=r"ssl_cafile '.*absent\.pem': No such file"):
        KafkaSettings.resolve(env={**ssl_env, "KAFKA_SSL_CAFILE": str(tmp_path / "absent.pem")})
    not_pem = write(tmp_path / "ca.der", "certainly not PEM")
    with pytest.raises(KafkaSettingsError, match=r"ssl_cafile .* is not a PEM file"):
        KafkaSettings.resolve(env={**ssl_env, "KAFKA_SSL_CAFILE": str(not_pem)})
    with pytest.raises(KafkaSettingsError, match="ssl_keyfile is given without ssl_certfile"):
        KafkaSettings.resolve(env={**ssl_env, "KAFKA_SSL_KEYFILE": str(tls.key)})
    mismatched = {"KAFKA_SSL_CERTFILE": str(tls.cert), "KAFKA_SSL_KEYFILE": str(tls.ca)}
    with pytest.raises(KafkaSettingsError, match="the TLS files cannot be used"):
        KafkaSettings.resolve(env={**ssl_env, **mismatched})


def test_bad_settings_are_a_usage_error_of_every_kafka_command(tmp_path: Path) -> None:
    config = write(tmp_path / "kafka.toml", 'bootstrap = "a:1"\nsasl_pasword = "x"\n')
    for command in (
        ["worker"],
        ["archive", "--once"],
        ["close", "--org", "o", "--month", "2025-03"],
    ):
        result = CliRunner().invoke(cli, [*command, "--kafka-config", str(config)])
        assert result.exit_code == 2, (command, result.output)
        assert "unknown key 'sasl_pasword'" in result.output
        assert "Traceback" not in result.output


# -- secrets stay out of sight ----------------------------------------------------------


def test_the_password_is_never_printed() -> None:
    s = KafkaSettings.resolve(
        env={
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_USERNAME": "caretally",
            "KAFKA_SASL_PASSWORD": SECRET,
        }
    )
    for text in (repr(s), str(s), s.describe(), s.model_dump_json()):
        assert SECRET not in text
    assert s.password() == SECRET
    assert SECRET not in repr(clients.faust_credentials(s))


def test_a_child_process_gets_the_same_settings_and_not_the_parents_file(tmp_path: Path) -> None:
    s = KafkaSettings(
        bootstrap="k:1", security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p"
    )
    parent = {"PATH": "/bin", CONFIG_ENV: str(tmp_path / "x.toml"), "KAFKA_CLIENT_ID": "old"}
    env = child_environment(s, parent)
    assert CONFIG_ENV not in env and "KAFKA_CLIENT_ID" not in env and env["PATH"] == "/bin"
    assert KafkaSettings.resolve(env=env) == s.model_copy(update={"bootstrap_named": True})


# -- every client builder gets the security settings ----------------------------------------


def sasl_ssl(tls: TlsFiles) -> KafkaSettings:
    return KafkaSettings(
        bootstrap="127.0.0.1:1",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="caretally",
        sasl_password=SECRET,
        ssl_cafile=tls.ca,
        client_id="caretally-test",
    )


def assert_secured(config: dict[str, Any]) -> None:
    assert config["security_protocol"] == "SASL_SSL"
    assert isinstance(config["ssl_context"], ssl.SSLContext)
    assert config["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert (config["sasl_mechanism"], config["sasl_plain_username"]) == (
        "SCRAM-SHA-512",
        "caretally",
    )
    assert config["sasl_plain_password"] == SECRET
    assert config["client_id"] == "caretally-test"


def test_kafka_python_clients_get_the_security_settings(tls: TlsFiles) -> None:
    s = sasl_ssl(tls)
    no_connect = {"api_version": (2, 8, 0)}  # given, the client does not ask the broker
    producer = clients.kafka_producer(s, clients.INGEST_PRODUCER, **no_connect)
    try:
        assert_secured(producer.config)
        assert producer.config["acks"] == -1  # the preset's "all"
        assert producer.config["linger_ms"] == 10
    finally:
        producer.close(timeout=0)
    consumer = clients.kafka_consumer(s, clients.ARCHIVE_CONSUMER, group_id="g", **no_connect)
    try:
        assert_secured(consumer.config)
        assert consumer.config["auto_offset_reset"] == "none"
    finally:
        consumer.close()
    assert_secured(clients.admin_config(s))  # the admin client connects as it is built


def test_aiokafka_clients_get_the_security_settings(tls: TlsFiles) -> None:
    s = sasl_ssl(tls)

    async def build() -> list[Any]:
        producer = clients.aio_producer(s, clients.SERVE_PRODUCER)
        consumer = clients.aio_consumer(s, clients.LOG_READER)
        found = [producer.client, consumer._client]
        await producer.stop()
        await consumer.stop()
        return found

    for client in asyncio.run(build()):
        assert client._security_protocol == "SASL_SSL"
        assert isinstance(client._ssl_context, ssl.SSLContext)
        assert (client._sasl_mechanism, client._sasl_plain_username) == (
            "SCRAM-SHA-512",
            "caretally",
        )
        assert client._sasl_plain_password == SECRET
        assert client._client_id == "caretally-test"
        assert client._bootstrap_servers == "127.0.0.1:1"


def test_the_faust_app_gets_the_security_settings(tls: TlsFiles, tmp_path: Path) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    s = sasl_ssl(tls)
    app = clients.faust_app(s, "caretally-test", clients.WORKER_APP, datadir=tmp_path)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("caretally", SECRET)
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert app.conf.broker_client_id == "caretally-test"
    assert app.conf.broker_session_timeout == 6  # the preset

    tls_only = KafkaSettings(bootstrap="127.0.0.1:1", security_protocol="SSL", ssl_cafile=tls.ca)
    app = clients.faust_app(tls_only, "caretally-tls", clients.WORKER_APP, datadir=tmp_path)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)


def test_plaintext_clients_keep_their_own_ids() -> None:
    config = clients.client_config("127.0.0.1:1", clients.INGEST_PRODUCER, {})
    assert config["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in config and "sasl_mechanism" not in config
    assert config["client_id"] == "caretally-ingest"
    assert clients.admin_config("127.0.0.1:1")["client_id"] == "caretally-admin"
