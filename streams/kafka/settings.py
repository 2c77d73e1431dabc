"""How to reach the Kafka cluster: one :class:`KafkaSettings`, resolved once per command.

Each setting comes from the first of, in order:

1. the command line: ``--bootstrap`` (the address) and ``--kafka-config FILE`` (the file);
2. the environment (names in :data:`ENVIRONMENT`, e.g. ``KAFKA_BOOTSTRAP``,
   ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_PASSWORD``; ``CARETALLY_KAFKA_CONFIG`` names
   the file when ``--kafka-config`` does not);
3. the file: TOML, one flat table whose keys are the field names below, nothing else
   (an unknown key is refused, naming it); relative paths are read from the file's folder::

       bootstrap = "kafka-1.example.org:9093,kafka-2.example.org:9093"
       security_protocol = "SASL_SSL"        # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
       sasl_mechanism = "SCRAM-SHA-512"      # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
       sasl_username = "caretally"
       sasl_password = "..."                 # or $KAFKA_SASL_PASSWORD, kept out of the file
       ssl_cafile = "ca.pem"                 # PEM files only (no Java keystores)
       ssl_certfile = "client.pem"           # a client certificate, when the cluster asks
       ssl_keyfile = "client.key"
       client_id = "caretally-billing"       # every client's id (default: one per use)

4. the default: ``127.0.0.1:9092`` in plaintext (``caretally broker``'s address).

Settings that would be silently ignored are refused instead: SASL credentials without a
SASL protocol, TLS files without a TLS protocol, a SASL protocol without credentials.
The TLS files must be readable PEM, checked when the settings are resolved. The SASL
password never appears in ``repr``, ``str`` or a log line.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, model_validator

DEFAULT_PORT = 9092
DEFAULT_BOOTSTRAP = f"127.0.0.1:{DEFAULT_PORT}"
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP"
CONFIG_ENV = "CARETALLY_KAFKA_CONFIG"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
FILE_FIELDS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")

ENVIRONMENT = {
    "bootstrap": BOOTSTRAP_ENV,
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
    "ssl_certfile": "KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "KAFKA_SSL_KEYFILE",
    "client_id": "KAFKA_CLIENT_ID",
}
"""The environment variable of each setting."""


class KafkaSettingsError(ValueError):
    """The Kafka settings cannot be used; the message (one line) names the setting."""


def split_bootstrap(bootstrap: str) -> tuple[str, int]:
    """``host:port`` (the first of a comma list) as a pair."""
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bootstrap address {bootstrap!r} is not host:port")
    return host, int(port)


class KafkaSettings(BaseModel):
    """Where the cluster is and how to authenticate to it (immutable)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str = DEFAULT_BOOTSTRAP
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    client_id: str | None = None
    bootstrap_named: bool = False
    """Whether the address was given (flag, environment or file), not the default."""

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        for address in self.bootstrap.split(","):
            split_bootstrap(address)
        protocol = self.security_protocol
        if protocol in SASL_PROTOCOLS:
            missing = [
                name
                for name in ("sasl_username", "sasl_password")
                if not _secret_or_text(getattr(self, name))
            ]
            if missing:
                raise ValueError(f"security_protocol {protocol} needs {' and '.join(missing)}")
        elif self.sasl_username is not None or self.sasl_password is not None:
            raise ValueError(
                f"sasl_username/sasl_password are given but security_protocol is {protocol} "
                "(use SASL_SSL or SASL_PLAINTEXT)"
            )
        files = [name for name in FILE_FIELDS if getattr(self, name) is not None]
        if files and protocol not in TLS_PROTOCOLS:
            raise ValueError(
                f"{', '.join(files)} given but security_protocol is {protocol} "
                "(use SSL or SASL_SSL)"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile is given without ssl_certfile")
        return self

    @property
    def tls(self) -> bool:
        return self.security_protocol in TLS_PROTOCOLS

    @property
    def sasl(self) -> bool:
        return self.security_protocol in SASL_PROTOCOLS

    def password(self) -> str | None:
        """The SASL password in clear (for the client libraries only)."""
        return None if self.sasl_password is None else self.sasl_password.get_secret_value()

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context every client uses (None without TLS): the server's certificate
        is verified against ``ssl_cafile`` (else the system's CAs) and its host name; a
        client certificate is offered when ``ssl_certfile`` is given."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if self.ssl_cafile is None else self.ssl_cafile
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # a certificate in ssl_cafile is trusted as it is, CA or not (Python 3.13's default)
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        if self.ssl_certfile is not None:
            ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return ctx

    def environment(self) -> dict[str, str]:
        """The settings given (the address always) as the variables :meth:`resolve` reads,
        for a child process (which should not also read ``CARETALLY_KAFKA_CONFIG``: see
        :func:`child_environment`)."""
        out = {}
        for name, variable in ENVIRONMENT.items():
            if name not in self.model_fields_set and name != "bootstrap":
                continue  # a default: a child's own flags or file may set it
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                out[variable] = str(value)
        return out

    def describe(self) -> str:
        """One line for messages: the address and the protocol (never a secret)."""
        if self.security_protocol == "PLAINTEXT":
            return self.bootstrap
        return f"{self.bootstrap} ({self.security_protocol})"

    @classmethod
    def of(cls, kafka: KafkaSettings | str) -> KafkaSettings:
        """``kafka`` as settings: a bare ``host:port`` list means plaintext."""
        if isinstance(kafka, KafkaSettings):
            return kafka
        return _build({"bootstrap": kafka, "bootstrap_named": True}, "the bootstrap address")

    @classmethod
    def resolve(
        cls,
        bootstrap: str | None = None,
        config_file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> KafkaSettings:
        """The settings from the flags, ``env`` (default ``os.environ``), the file and the
        defaults, in that order (module doc); :class:`KafkaSettingsError` when unusable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = config_file or env.get(CONFIG_ENV, "").strip() or None
        if path is not None:
            values.update(read_config_file(Path(path)))
        for name, variable in ENVIRONMENT.items():
            text = env.get(variable, "").strip()
            if text:
                values[name] = text
        if bootstrap:
            values["bootstrap"] = bootstrap
        values["bootstrap_named"] = "bootstrap" in values
        settings = _build(values, "the Kafka settings")
        settings.check_files()
        return settings

    def check_files(self) -> None:
        """:class:`KafkaSettingsError` unless every TLS file is a readable PEM file."""
        for name in FILE_FIELDS:
            path = getattr(self, name)
            if path is None:
                continue
            try:
                with open(path, "rb") as f:
                    head = f.read(1 << 16)
            except OSError as exc:
                raise KafkaSettingsError(f"{name} {str(path)!r}: {exc.strerror}") from None
            if b"-----BEGIN " not in head:
                raise KafkaSettingsError(f"{name} {str(path)!r} is not a PEM file")
        try:
            self.ssl_context()
        except (ssl.SSLError, OSError) as exc:
            raise KafkaSettingsError(f"the TLS files cannot be used: {exc}") from None


def _secret_or_text(value: SecretStr | str | None) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value or ""


def _build(values: dict[str, Any], what: str) -> KafkaSettings:
    try:
        return KafkaSettings(**values)
    except ValidationError as exc:
        raise KafkaSettingsError(f"{what}: {_first_problem(exc)}") from None


def _first_problem(exc: ValidationError) -> str:
    """One line out of pydantic's report, naming the setting (never echoing a value)."""
    err = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown setting {where!r}"
    return f"{where}: {message}" if where else message


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings of a ``--kafka-config`` TOML file (relative paths made absolute from
    its folder); :class:`KafkaSettingsError` naming the file and the key at fault."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise KafkaSettingsError(f"Kafka config {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise KafkaSettingsError(f"Kafka config {str(path)!r} is not TOML: {exc}") from None
    known = set(ENVIRONMENT)
    for key, value in data.items():
        if key not in known:
            raise KafkaSettingsError(
                f"Kafka config {str(path)!r}: unknown key {key!r} "
                f"(known: {', '.join(sorted(known))})"
            )
        if not isinstance(value, str):
            raise KafkaSettingsError(f"Kafka config {str(path)!r}: {key} must be a string")
    for key in FILE_FIELDS:
        if key in data:
            data[key] = str(path.parent / Path(data[key]).expanduser())
    return data


def child_environment(
    kafka: KafkaSettings, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default ``os.environ``) with its Kafka variables replaced by ``kafka``'s:
    a child ``caretally`` command resolves the same settings."""
    base = os.environ if base is None else base
    ours = {*ENVIRONMENT.values(), CONFIG_ENV}
    return {k: v for k, v in base.items() if k not in ours} | kafka.environment()
