"""Security hardening (#9) of ``caretally ingest``: bounded memory on hostile input (item
11), one event size limit (item 1, ingest's side), no cell values in CSV problems (item 13),
and too-large lines dead-lettered as the gate and HTTP do it (item 13's follow-up): an
excerpt, the SHA-256 and size of the whole line, where it came from, its key if readable.

The memory tests run the real CLI as a child process under an address-space cap (so the
unfixed code fails with ``MemoryError`` instead of eating the machine) and read the
child's own peak RSS: its ``VmHWM`` as it exits (``os.wait4``'s ``ru_maxrss`` would also
count the pages it shared with this test process between fork and exec, so a test
process grown big by earlier tests would fail it).
"""

from __future__ import annotations

import gzip
import itertools
import os
import resource
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from streams.cli.main import cli
from streams.demo.synthetic import generate_practice_log
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.limits import DEADLETTER_EXCERPT_BYTES, EVENT_MAX_BYTES
from streams.kafka.records import event_key, header
from streams.kafka.topics import Topics
from support.ingest import (
    assert_in_ingress,
    assert_too_large_letter,
    hex_digest,
    read_deadletter,
    read_ingress,
)

REPO = Path(__file__).resolve().parents[2]
PARTS = 3
MiB = 1 << 20
AS_CAP = 3 << 30  # the child's address space: the unfixed ingest needs more for a 2 GiB line
RSS_BOUND = 400 * MiB  # generous: the fixed ingest peaks near 100 MiB
PHI = "P-7Q3X9Z"  # a distinctive patient-id-like value that must never be echoed


def good_lines(n: int = 2) -> list[bytes]:
    events = generate_practice_log(seed=5, patients=1, months=("2025-03",))
    return [orjson.dumps(e) for e in itertools.islice(events, n)]


def key_for(line: bytes) -> bytes:
    event = orjson.loads(line)
    return event_key(event["org_id"], event.get("patient_id"))


def ingest(broker: EmbeddedBroker | None, topics: Topics, *args: str) -> Result:
    where = ["--bootstrap", broker.bootstrap] if broker else ["--bootstrap", "127.0.0.1:1"]
    argv = ["ingest", "--input", *args, *where, "--topic-prefix", topics.prefix]
    argv += ["--partitions", str(PARTS)]
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


@dataclass
class Run:
    code: int
    out: str
    peak_rss: int  # bytes


def run_capped(args: list[str], tmp_path: Path, timeout: float = 300) -> Run:
    """``caretally ARGS`` in a child process limited to ``AS_CAP`` bytes of address space;
    its exit code, output and peak resident memory."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (AS_CAP, AS_CAP))

    out_path, hwm_path = tmp_path / "child.out", tmp_path / "child.hwm"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", HWM_PROBE, *args],
            cwd=REPO,  # this checkout's code, not the editable install's
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=cap,
            env={**os.environ, "HWM_FILE": str(hwm_path)},
        )
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            proc.wait()
        finally:
            killer.cancel()
    kib = int(hwm_path.read_text().split()[1])  # "VmHWM:  123456 kB"
    return Run(proc.returncode, out_path.read_text(errors="replace"), kib * 1024)


HWM_PROBE = """
import atexit, os, runpy, sys

def report():
    with open("/proc/self/status") as status, open(os.environ["HWM_FILE"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")))

atexit.register(report)
sys.argv = ["caretally", *sys.argv[1:]]
runpy.run_module("streams.cli", run_name="__main__", alter_sys=True)
"""
"""``caretally ARGS`` that writes its own peak RSS (``VmHWM``, its memory since exec, not
its parent's) to ``$HWM_FILE`` as it exits."""


def write_gzip_bomb(path: Path, head: bytes, filler: int, tail: bytes) -> None:
    """``head``, ``filler`` bytes of spaces, ``tail``, as a multi-member gzip file; the
    spaces are compressed once as a 64 MiB member and repeated, never written out."""
    block = gzip.compress(b" " * (64 * MiB), compresslevel=9, mtime=0)
    with open(path, "wb") as out:
        out.write(gzip.compress(head, mtime=0))
        for _ in range(filler // (64 * MiB)):
            out.write(block)
        out.write(gzip.compress(tail, mtime=0))


def assert_bomb_letter(
    broker: EmbeddedBroker, topics: Topics, name: str, line: int, head: bytes, tail: bytes
) -> None:
    """The one dead letter of a bomb line ``head`` + 2 GiB or 1 GiB of spaces + ``tail``:
    its digest and size are of all of it, though it was never held."""
    [letter] = read_deadletter(broker, topics, 1)
    size = int(header(letter.headers, "size") or 0)
    spaces = size - len(head) - len(tail)
    assert spaces in (1 << 30, 2 << 30), size
    blocks = [b" " * (64 * MiB)] * (spaces // (64 * MiB))
    assert header(letter.headers, "digest") == hex_digest(head, *blocks, tail)
    excerpt = (head + b" " * DEADLETTER_EXCERPT_BYTES)[:DEADLETTER_EXCERPT_BYTES]
    assert letter.value == excerpt and letter.key is None  # no org_id in the excerpt
    assert header(letter.headers, "reason") == b"too_large"
    assert header(letter.headers, "source_topic") == f"ingest:{name}".encode()
    assert header(letter.headers, "source_offset") == str(line).encode()


# --- item 11: bounded reads --------------------------------------------------------------


def test_a_gzip_bomb_line_is_refused_with_bounded_memory(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    first, last = good_lines()
    path = tmp_path / "bomb.ndjson.gz"
    # line 2 is one JSON string of 2 GiB of spaces, from a ~2 MB file
    write_gzip_bomb(path, first + b'\n{"event_id":"x","note":"', 2 << 30, b'"}\n' + last + b"\n")
    assert path.stat().st_size < 4 * MiB

    run = run_capped(
        [
            "ingest",
            "--input",
            str(path),
            "--bootstrap",
            broker.bootstrap,
            "--topic-prefix",
            topics.prefix,
        ],
        tmp_path,
    )

    assert "Traceback" not in run.out and "MemoryError" not in run.out, run.out[-2000:]
    assert run.code == 3, run.out
    assert f"{path}:2: rejected: too_large: line longer than 1,000,000 bytes" in run.out
    assert "sent 2 line(s)" in run.out and "1 too large: dead-lettered to" in run.out
    assert run.peak_rss < RSS_BOUND, f"peak RSS {run.peak_rss / MiB:.0f} MiB"
    assert_in_ingress(read_ingress(broker, topics, 2), [(key_for(x), x) for x in (first, last)])
    assert_bomb_letter(broker, topics, path.name, 2, b'{"event_id":"x","note":"', b'"}')


def test_a_csv_gzip_bomb_row_is_refused_with_bounded_memory(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    header = b"event_id,type,org_id,patient_id,recorded_at,source,data.month\n"
    row = b"c1,month.closed,practice-17,,2025-04-01T00:00:00Z,ehr,2025-03\n"
    path = tmp_path / "bomb.csv.gz"
    write_gzip_bomb(path, header + b'c0,"', 1 << 30, b'",x,,2025,s\n' + row)

    run = run_capped(
        [
            "ingest",
            "--input",
            str(path),
            "--bootstrap",
            broker.bootstrap,
            "--topic-prefix",
            topics.prefix,
        ],
        tmp_path,
    )

    assert "Traceback" not in run.out and "MemoryError" not in run.out, run.out[-2000:]
    assert run.code == 3, run.out
    assert f"{path}:2: rejected: too_large: row longer than 1,000,000 bytes" in run.out
    assert "sent 1 line(s)" in run.out and "1 too large: dead-lettered to" in run.out
    assert run.peak_rss < RSS_BOUND, f"peak RSS {run.peak_rss / MiB:.0f} MiB"
    assert [r.value for r in read_ingress(broker, topics, 1).records] == [
        b'{"event_id":"c1","type":"month.closed","schema_version":1,"org_id":"practice-17",'
        b'"recorded_at":"2025-04-01T00:00:00Z","source":"ehr","data":{"month":"2025-03"}}'
    ]
    assert_bomb_letter(broker, topics, path.name, 2, b'c0,"', b'",x,,2025,s')


def test_gzip_input_past_max_decompressed_stops_with_a_clear_error(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    lines = good_lines(50)
    path = tmp_path / "events.ndjson.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines * 200) + b"\n"))  # ~4 MB decompressed

    result = ingest(broker, topics, str(path), "--max-decompressed", "2MB")

    assert result.exit_code == 1, result.output
    assert "decompresses to more than 2,000,000 bytes (--max-decompressed)" in result.stderr
    assert "(the ingest is incomplete)" in result.stderr
    ok = ingest(broker, topics, str(path), "--max-decompressed", "0.01GB")
    assert ok.exit_code == 0, ok.output


# --- item 1: one event size limit --------------------------------------------------------


def padded(line: bytes, size: int) -> bytes:
    """A valid event of exactly ``size`` bytes: whitespace before its closing brace."""
    return line[:-1] + b" " * (size - len(line)) + b"}"


def test_a_line_over_the_event_limit_is_dead_lettered_not_sent(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    configured, first, at_limit, last = good_lines(4)
    at_limit = padded(at_limit, EVENT_MAX_BYTES)
    over = padded(good_lines(5)[4], EVENT_MAX_BYTES + 1)
    practice_wide = padded(configured, 2 * EVENT_MAX_BYTES)  # no patient_id: keyed org_id:
    decoy = b'{"data": {"org_id": "practice-99", "patient_id": "P-1", "pad": "'
    decoy += b"x" * EVENT_MAX_BYTES + b'"}}'  # ids inside data: no key
    content = [first, b"  " + over + b" \t\r", at_limit, practice_wide, decoy, last]
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(content) + b"\n")

    result = ingest(broker, topics, str(path))

    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines() == [
        f"{path}:{n}: rejected: too_large: line longer than {EVENT_MAX_BYTES:,} bytes"
        for n in (2, 4, 5)
    ]
    assert (
        f"3 valid, 3 rejected (3 too large: dead-lettered to {topics.deadletter}, "
        "not sent as events)"
    ) in result.stdout
    sent = [first, at_limit, last]
    assert_in_ingress(read_ingress(broker, topics, 3), [(key_for(x), x) for x in sent])
    letters = read_deadletter(broker, topics, 3)
    assert len(letters) == 3, letters
    name = "events.ndjson"
    assert_too_large_letter(letters[0], name, 2, key_for(over), over)  # whitespace not counted
    assert_too_large_letter(letters[1], name, 4, key_for(practice_wide), practice_wide)
    assert_too_large_letter(letters[2], name, 5, None, decoy)
    assert key_for(practice_wide).endswith(b":")


def test_a_too_large_line_from_stdin_is_dead_lettered_from_ingest_dash(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    over = padded(good_lines(3)[2], EVENT_MAX_BYTES + 5)

    result = CliRunner().invoke(
        cli,
        [
            "ingest",
            "--input",
            "-",
            "--bootstrap",
            broker.bootstrap,
            "--topic-prefix",
            topics.prefix,
        ],
        input=over,  # and no final newline
        catch_exceptions=False,
    )

    assert result.exit_code == 3, result.output
    assert "<stdin>:1: rejected: too_large" in result.stderr
    [letter] = read_deadletter(broker, topics, 1)
    assert_too_large_letter(letter, "-", 1, key_for(over), over)


def test_a_csv_row_over_the_event_limit_is_dead_lettered_not_sent(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    header_row = "event_id,type,org_id,patient_id,recorded_at,source,data.month,data.activity\n"
    row = "c{},month.closed,practice-17,,2025-04-01T00:00:00Z,ehr,2025-03,\n"
    huge = 'c2,month.closed,practice-17,"' + "x" * (2 * MiB) + '",2025-04-01T00:00:00Z,ehr,,'
    long_month = 'c4,month.closed,practice-17,,2025-04-01T00:00:00Z,ehr,"' + "y" * MiB + '",'
    # under the limit as CSV, over it as JSON (each control character becomes \u0001);
    # two cells, as csv.reader refuses a cell over 128 KiB
    controls = "\x01" * 100_000
    escaped = f"c5,month.closed,practice-17,,2025-04-01T00:00:00Z,ehr,{controls},{controls}"
    path = tmp_path / "feed.csv"
    path.write_text(
        header_row + row.format(1) + huge + "\r\n" + long_month + "\n" + escaped + "\n"
        + row.format(3)
    )  # fmt: skip

    result = ingest(broker, topics, str(path))

    assert result.exit_code == 3, result.output
    assert f"{path}:3: rejected: too_large: row longer than 1,000,000 bytes" in result.stderr
    assert f"{path}:4: rejected: too_large: row longer than 1,000,000 bytes" in result.stderr
    assert f"{path}:5: rejected: too_large: event longer than 1,000,000 bytes" in result.stderr
    assert "2 valid, 3 rejected (3 too large: dead-lettered to" in result.stdout
    ids = [orjson.loads(r.value)["event_id"] for r in read_ingress(broker, topics, 2).records]
    assert sorted(ids) == ["c1", "c3"]
    letters = read_deadletter(broker, topics, 3)
    assert len(letters) == 3, letters
    practice = event_key("practice-17", None)
    assert_too_large_letter(letters[0], "feed.csv", 3, None, huge.encode())  # patient cut
    assert_too_large_letter(letters[1], "feed.csv", 4, practice, long_month.encode())
    event = {
        "event_id": "c5",
        "type": "month.closed",
        "schema_version": 1,
        "org_id": "practice-17",
        "recorded_at": "2025-04-01T00:00:00Z",
        "source": "ehr",
        "data": {"month": controls, "activity": controls},
    }
    assert_too_large_letter(letters[2], "feed.csv", 5, practice, orjson.dumps(event))


# --- item 13: no cell values in problems ---------------------------------------------------


def test_csv_problems_do_not_echo_cell_values(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    header = (
        "event_id,type,schema_version,org_id,patient_id,recorded_at,source,data.activity_id,"
        "data.staff_id,data.staff_role,data.practitioner_id,data.program,data.activity,"
        "data.started_at,data.minutes,data.interactive\n"
    )
    cells = {
        "minutes": f"e1,activity.logged,,o,{PHI},2025-03-01T00:00:00Z,s,a,s,clinical_staff,"
        f"dr,ccm,x,2025-03-01T00:00:00Z,{PHI},true",
        "boolean": f"e2,activity.logged,,o,{PHI},2025-03-01T00:00:00Z,s,a,s,clinical_staff,"
        f"dr,ccm,x,2025-03-01T00:00:00Z,5,{PHI}",
        "version": f"e3,activity.logged,{PHI},o,{PHI},2025-03-01T00:00:00Z,s,a,s,"
        "clinical_staff,dr,ccm,x,2025-03-01T00:00:00Z,5,true",
        "schema": f"e4,activity.logged,,o,{PHI},{PHI},s,a,s,clinical_staff,dr,{PHI},x,{PHI},,",
    }
    path = tmp_path / "feed.csv"
    path.write_text(header + "\n".join(cells.values()) + "\n")

    result = ingest(broker, topics, str(path))

    assert result.exit_code == 3, result.output
    err = result.stderr
    assert f"{path}:2: rejected: data.minutes: not a number" in err
    assert f"{path}:3: rejected: data.interactive: not a boolean" in err
    assert f"{path}:4: rejected: schema_version: not an integer" in err
    assert f"{path}:5: rejected: " in err
    assert PHI not in result.output


@pytest.mark.parametrize(
    "change",
    [
        {"data": {"minutes": PHI}},
        {"data": {"started_at": PHI}},
        {"data": {"program": PHI}},
        {"recorded_at": PHI},
        {"type": PHI},
        {"schema_version": PHI},
    ],
)
def test_ndjson_rejection_reasons_do_not_echo_values(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, change: dict[str, object]
) -> None:
    event = next(
        e
        for e in generate_practice_log(seed=5, patients=1, months=("2025-03",))
        if e["type"] == "activity.logged"
    )
    data = {**event["data"], **change.pop("data", {})}  # type: ignore[dict-item]
    path = tmp_path / "events.ndjson"
    path.write_bytes(orjson.dumps({**event, **change, "data": data}) + b"\n")

    result = ingest(broker, topics, str(path))

    assert result.exit_code == 3, result.output
    assert f"{path}:1: rejected: " in result.stderr
    assert PHI not in result.output
