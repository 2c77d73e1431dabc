"""``caretally ingest``: every line reaches care.ingress.v1 as sent (on the embedded broker),
invalid lines are reported with their line numbers, CSV rows become wire-contract JSON."""

from __future__ import annotations

import gzip
import re
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from schemas.events import parse_event
from streams.cli.exits import EXIT_BAD_LINES
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.records import event_key
from streams.kafka.topics import Topics
from support.ingest import (
    assert_in_ingress,
    assert_too_large_letter,
    ingest,
    practice_lines,
    read_deadletter,
    read_ingress,
)

ORG = "practice-17"


def key_for(line: bytes) -> bytes:
    event = orjson.loads(line)
    return event_key(event["org_id"], event.get("patient_id"))


def test_valid_ndjson_lands_on_ingress_byte_for_byte(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    lines = practice_lines()
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = ingest(broker, topics, str(path))

    assert result.exit_code == 0, result.output
    n = len(lines)
    assert f"sent {n:,} line(s) to {topics.ingress}: {n:,} valid, 0 rejected" in result.stdout
    assert "rejected:" not in result.stderr
    ingress = read_ingress(broker, topics, n)
    assert_in_ingress(ingress, [(key_for(line), line) for line in lines])
    assert any(r.key == f"{ORG}:".encode() for r in ingress.records)  # practice-wide events


def test_bad_lines_are_reported_and_still_sent(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    good = practice_lines(patients=1)[:3]
    partial = b'{"event_id": "x1", "type": "activity.logged", "org_id": "practice-17", '
    partial += b'"patient_id": "P-9"}'
    unknown = orjson.dumps({**orjson.loads(good[1]), "event_id": "x2", "type": "coffee.poured"})
    content = [good[0], b"this is not json", b"", partial, b"   ", good[1], unknown, good[2]]
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(b"\r\n".join(content) + b"\r\n")

    result = ingest(broker, topics, str(path))

    assert result.exit_code == EXIT_BAD_LINES == 3, result.output
    err = result.stderr
    assert f"{path}:2: rejected: event: Invalid JSON" in err
    assert f"{path}:4: rejected: " in err and "data: Field required" in err
    assert f"{path}:7: rejected: type: unknown type" in err
    assert err.count("rejected:") == 3
    assert "sent 6 line(s)" in result.stdout and "3 valid, 3 rejected" in result.stdout
    assert_in_ingress(
        read_ingress(broker, topics, 6),
        [
            (key_for(good[0]), good[0]),
            (None, b"this is not json"),
            (b"practice-17:P-9", partial),
            (key_for(good[1]), good[1]),
            (key_for(unknown), unknown),
            (key_for(good[2]), good[2]),
        ],
    )


def test_rejections_printed_are_capped(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    path = tmp_path / "junk.ndjson"
    path.write_bytes(b"".join(b"[%d]\n" % i for i in range(25)))

    result = ingest(broker, topics, str(path))

    assert result.exit_code == 3
    assert result.stderr.count("rejected: event: Input should be an object") == 20
    assert f"{path}:20: rejected" in result.stderr
    assert f"{path}:21: rejected" not in result.stderr
    assert "and 5 more rejected line(s)" in result.stderr
    assert len(read_ingress(broker, topics, 25).records) == 25


def test_gzip_input(broker: EmbeddedBroker, topics: Topics, tmp_path: Path) -> None:
    lines = practice_lines(patients=2, seed=9)
    path = tmp_path / "events.log.gz"  # neither .ndjson nor .csv: found by content
    path.write_bytes(gzip.compress(b"\n".join(lines)))  # no final newline

    result = ingest(broker, topics, str(path))

    assert result.exit_code == 0, result.output
    assert_in_ingress(read_ingress(broker, topics, len(lines)), [(key_for(x), x) for x in lines])


def test_stdin(broker: EmbeddedBroker, topics: Topics) -> None:
    lines = practice_lines(patients=2, seed=11)

    result = ingest(broker, topics, "-", input=b"\n".join(lines) + b"\n{broken\n")

    assert result.exit_code == 3, result.output
    assert f"<stdin>:{len(lines) + 1}: rejected: event: Invalid JSON" in result.stderr
    expected = [(key_for(x), x) for x in lines] + [(None, b"{broken")]
    assert_in_ingress(read_ingress(broker, topics, len(lines) + 1), expected)


# --- CSV -------------------------------------------------------------------------------------

CSV_HEADER = (
    "event_id,type,org_id,patient_id,recorded_at,source,data.timezone,data.activity_id,"
    "data.staff_id,data.staff_role,data.practitioner_id,data.program,data.activity,"
    "data.started_at,data.minutes,data.interactive,data.face_to_face,data.method,data.on,"
    "data.chronic"
)


def csv_row(**cells: str) -> str:
    names = [c.removeprefix("data.") for c in CSV_HEADER.split(",")]
    assert set(cells) <= set(names), set(cells) - set(names)
    return ",".join(cells.get(name, "") for name in names)


ENVELOPE = {"org_id": ORG, "recorded_at": "2025-03-14T20:02:11Z", "source": "ehr-main"}


def wire(event_id: str, type_: str, patient_id: str | None, data: dict[str, Any]) -> bytes:
    """The JSON the converter must write: compact, keys in wire-contract order."""
    event: dict[str, Any] = {"event_id": event_id, "type": type_, "schema_version": 1}
    event["org_id"] = ORG
    if patient_id is not None:
        event["patient_id"] = patient_id
    event |= {"recorded_at": ENVELOPE["recorded_at"], "source": ENVELOPE["source"], "data": data}
    return orjson.dumps(event)


def test_csv_rows_become_wire_contract_json(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    rows = [
        csv_row(event_id="e1", type="practice.configured", timezone="America/Chicago", **ENVELOPE),
        csv_row(
            event_id="e2",
            type="activity.logged",
            patient_id="P-000123",
            activity_id="a-1",
            staff_id="s-1",
            staff_role="clinical_staff",
            practitioner_id="dr-1",
            program="ccm",
            activity="medication_review",
            started_at="2025-03-14T19:40:00Z",
            minutes=" 25 ",
            interactive="TRUE",
            face_to_face="false",
            **ENVELOPE,
        ),
        csv_row(
            event_id="e3",
            type="consent.recorded",
            patient_id="P-000123",
            program="ccm",
            practitioner_id="dr-1",
            method="verbal",
            on="2025-03-02",
            **ENVELOPE,
        ),
        csv_row(
            event_id="e4",
            type="conditions.recorded",
            patient_id="P-000123",
            chronic="E11.9; I10;J44.9",
            **ENVELOPE,
        ),
    ]
    path = tmp_path / "feed.csv"
    path.write_text("\ufeff" + CSV_HEADER + "\r\n" + "\r\n".join(rows) + "\r\n,,,\r\n\r\n")
    # data in the model's field order, not the columns'
    activity = {
        "activity_id": "a-1", "staff_id": "s-1", "staff_role": "clinical_staff",
        "practitioner_id": "dr-1", "program": "ccm", "activity": "medication_review",
        "started_at": "2025-03-14T19:40:00Z", "minutes": 25, "face_to_face": False,
        "interactive": True,
    }  # fmt: skip
    consent = {"program": "ccm", "practitioner_id": "dr-1", "method": "verbal", "on": "2025-03-02"}
    expected = [
        wire("e1", "practice.configured", None, {"timezone": "America/Chicago"}),
        wire("e2", "activity.logged", "P-000123", activity),
        wire("e3", "consent.recorded", "P-000123", consent),
        wire("e4", "conditions.recorded", "P-000123", {"chronic": ["E11.9", "I10", "J44.9"]}),
    ]

    result = ingest(broker, topics, str(path))

    assert result.exit_code == 0, result.output
    assert "sent 4 line(s)" in result.stdout and "4 valid, 0 rejected" in result.stdout
    ingress = read_ingress(broker, topics, 4)
    records = ingress.records
    assert sorted(r.value for r in records) == sorted(expected)
    for record in records:
        event = parse_event(record.value)  # the worker will accept it
        assert record.key == event_key(ORG, event.patient_id)
        assert record.partition == ingress.partition_of(record.key)


def test_csv_conversion_errors_name_their_line(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    note = csv_row(
        event_id="e2", type="activity.logged", patient_id="P-1", activity_id="a-2",
        staff_id="s-1", staff_role="clinical_staff", practitioner_id="dr-1", program="ccm",
        activity='"call\nwith\ndaughter"', started_at="2025-03-14T19:40:00Z", minutes="12.5",
        **ENVELOPE,
    )  # fmt: skip
    bad = csv_row(
        event_id="e3", type="activity.logged", patient_id="P-1", activity_id="a-3",
        staff_id="s-1", staff_role="clinical_staff", practitioner_id="dr-1", program="ccm",
        activity="x", started_at="2025-03-14T19:40:00Z", minutes="abc", interactive="yes",
        **ENVELOPE,
    )  # fmt: skip
    short = b"e4,activity.logged,practice-17"
    latin1 = csv_row(event_id="e5", type="activity.voided", patient_id="P-1", **ENVELOPE)
    latin1_bytes = latin1.replace("e5", "e5-caf\xe9").encode("latin-1")
    path = tmp_path / "feed.csv"
    # line 1 header, 2-4 the quoted three-line cell, 5 bad, 6 short, 7 not UTF-8
    rows = [CSV_HEADER.encode(), note.encode(), bad.encode(), short, latin1_bytes]
    path.write_bytes(b"\n".join(rows) + b"\n")

    result = ingest(broker, topics, str(path))

    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines()[:3] == [
        f"{path}:5: rejected: data.minutes: not a number; "
        "data.interactive: not a boolean (write true or false)",
        f"{path}:6: rejected: row has 3 cells but the header has 20 columns",
        f"{path}:7: rejected: row is not valid UTF-8",
    ]
    assert "1 valid, 3 rejected" in result.stdout
    records = read_ingress(broker, topics, 4).records
    values = {r.value: r.key for r in records}
    # raw CSV text, byte for byte: the worker dead-letters it as it came
    assert values.pop(short) is None and values.pop(latin1_bytes) is None
    sent = {orjson.loads(v)["event_id"]: orjson.loads(v) for v in values}
    assert sent["e2"]["data"]["activity"] == "call\nwith\ndaughter"
    assert sent["e2"]["data"]["minutes"] == 12.5
    assert sent["e3"]["data"]["minutes"] == "abc"  # kept as text: the schema rejects it
    assert set(values.values()) == {b"practice-17:P-1"}


def test_csv_from_stdin_is_recognised(broker: EmbeddedBroker, topics: Topics) -> None:
    text = (
        "event_id,type,org_id,patient_id,recorded_at,source,data.month\n"
        "m1,month.closed,practice-17,,2025-04-01T00:00:00-04:00,ehr-main,2025-03\n"
    )

    result = ingest(broker, topics, "-", input=text.encode())

    assert result.exit_code == 0, result.output
    (record,) = read_ingress(broker, topics, 1).records
    assert record.key == f"{ORG}:".encode()
    assert parse_event(record.value).type == "month.closed"


# --- delivery failures (a broker of the test's own, killed while the ingest sends) -------


class KillOnIngress(threading.Thread):
    """SIGKILLs ``broker`` once ``records`` records are readable on ``topic`` (acks=all:
    the broker has acknowledged them), i.e. while the ingest is still sending."""

    def __init__(self, broker: EmbeddedBroker, topic: str, records: int) -> None:
        super().__init__(daemon=True)
        self.broker, self.topic, self.records = broker, topic, records
        self.killed = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.broker.bootstrap, group_id=None, enable_auto_commit=False
            )
            try:
                self.wait_for_records(consumer)
            finally:
                consumer.close()
            assert self.broker.process is not None
            self.broker.process.kill()
            self.killed = True
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait_for_records(self, consumer: KafkaConsumer) -> None:
        deadline = time.monotonic() + 30
        while not (numbers := consumer.partitions_for_topic(self.topic)):
            assert time.monotonic() < deadline, f"no topic {self.topic}"
            time.sleep(0.02)
        parts = [TopicPartition(self.topic, p) for p in sorted(numbers)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        seen = 0
        while seen < self.records:
            assert time.monotonic() < deadline, f"only {seen} records on {self.topic}"
            seen += sum(map(len, consumer.poll(timeout_ms=100).values()))


FAILED_INGEST = re.compile(
    r"error: the broker acknowledged (?P<acked>[\d,]+) of the (?P<sent>[\d,]+) line\(s\) sent; "
    r"(?P<failed>[\d,]+) failed \((?:KafkaTimeoutError: Expiring [\d,]+ record\(s\) for "
    r"TopicPartition\(.+?\): \d+ ms has passed since batch creation"
    # a loaded machine may see the socket close before the batches expire
    r"|KafkaConnectionError: socket disconnected)\)"
    r"(?: and (?P<unanswered>[\d,]+) had no answer within 3 s)?"
    # a loaded machine may hand the whole file to the producer before the first expiry
    r"(?:; sending stopped at line (?P<stopped>[\d,]+) of (?P<file>.+), the rest was not sent)?"
    r" \(the ingest is incomplete\)"
)


def test_a_broker_dying_mid_ingest_fails_it_with_the_count_acknowledged(
    topics: Topics, tmp_path: Path
) -> None:
    lines = practice_lines()
    copies = 600  # 64,800 lines (21 MB): seconds of sending, still going when the broker dies
    path = tmp_path / "big.ndjson"
    path.write_bytes((b"\n".join(lines) + b"\n") * copies)
    total = len(lines) * copies

    # a broker of its own (the session's one must survive), killed after 500 acks
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as doomed:
        killer = KillOnIngress(doomed, topics.ingress, records=500)
        killer.start()
        started = time.monotonic()
        result = ingest(doomed, topics, str(path), "--delivery-timeout", "2")
        elapsed = time.monotonic() - started
        killer.join(timeout=30)

    assert killer.error is None, killer.error
    assert killer.killed, "the broker was not killed"
    assert result.exit_code == 1, result.output
    assert result.stdout == ""  # no "sent N line(s)" summary
    assert result.stderr.count("\n") == 1, result.stderr  # one line
    match = FAILED_INGEST.fullmatch(result.stderr.strip())
    assert match, result.stderr
    acked, sent, failed, unanswered, stopped = (
        int((match[name] or "0").replace(",", ""))
        for name in ("acked", "sent", "failed", "unanswered", "stopped")
    )
    assert 0 < acked < sent <= total
    assert failed > 0
    assert acked + failed + unanswered == sent
    if match["stopped"] is None:  # every line was handed over before a batch expired
        assert sent == total
    else:  # the first expired batch stopped the sending
        assert stopped == sent + 1 < total and match["file"] == str(path)
    # the failure is reported within the delivery timeout of the kill, plus the flush
    assert elapsed < 20


def test_an_oversized_line_is_dead_lettered_and_not_sent(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    good = practice_lines(patients=1)[:2]
    huge = b'{"padding": "' + b"x" * (1 << 20) + b'"}'
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join([good[0], huge, good[1]]))

    result = ingest(broker, topics, str(path))

    assert result.exit_code == 3  # rejected here (streams.kafka.limits.EVENT_MAX_BYTES), not sent
    assert f"{path}:2: rejected: too_large: line longer than 1,000,000 bytes" in result.stderr
    assert "sent 2 line(s)" in result.stdout
    assert f"1 too large: dead-lettered to {topics.deadletter}, not sent as" in result.stdout
    assert_in_ingress(read_ingress(broker, topics, 2), [(key_for(x), x) for x in good])
    [letter] = read_deadletter(broker, topics, 1)
    assert_too_large_letter(letter, "events.ndjson", 2, None, huge)  # no org_id: no key
