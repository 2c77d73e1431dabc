"""Security #9 item 13, ``caretally ingest``'s side without a broker: a CSV whose first
row is data, not a header, is refused without echoing any of its cells (they may be PHI).
The broker-side cases are in tests/integration/test_security_ingest.py."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from streams.cli.main import cli
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics

PARTS = 3
PHI = "P-7Q3X9Z"  # a distinctive patient-id-like value that must never be echoed


def ingest(broker: EmbeddedBroker | None, topics: Topics, *args: str) -> Result:
    where = ["--bootstrap", broker.bootstrap] if broker else ["--bootstrap", "127.0.0.1:1"]
    argv = ["ingest", "--input", *args, *where, "--topic-prefix", topics.prefix]
    argv += ["--partitions", str(PARTS)]
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def test_csv_header_problems_do_not_echo_a_row_of_data(tmp_path: Path, topics: Topics) -> None:
    path = tmp_path / "no-header.csv"
    path.write_text(f"e1,activity.logged,practice-17,{PHI},{PHI},{PHI}\n")

    result = ingest(None, topics, str(path))  # the header is read before any broker

    assert result.exit_code == 2, result.output
    assert "column 4: unknown column" in result.stderr
    assert "column 4 repeats" not in result.stderr and "column 5 repeats column 4" in result.stderr
    assert "is the first row a header?" in result.stderr
    assert PHI not in result.output
