"""One command line: an option means the same in every command that has it, Kafka options
are on the commands that talk to Kafka and only there, and every `caretally ...` line of
the README and of each command's --help parses with options that exist (old spellings
are hidden aliases, never shown)."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from streams.cli import options
from streams.cli.main import cli

README = Path(__file__).resolve().parents[2] / "README.md"

KAFKA_OPTIONS = frozenset({"--bootstrap", "--topic-prefix", "--kafka-config"})
KAFKA_COMMANDS = frozenset(
    {
        "archive",
        "close",
        "demo",
        "ingest",
        "restore",
        "serve",
        "webhooks deliver",
        "webhooks replay",
        "worker",
    }
)
"""Commands that talk to a Kafka cluster named by the user: every Kafka option, each once."""
KAFKA_ADJACENT = {
    "broker": frozenset({"--topic-prefix"}),  # it *is* the broker; the prefix of topics it creates
}
"""Commands with some Kafka options (these and no others); every other command has none."""

SHARED = {
    "--as-of": options.as_of_option,
    "--input-format": options.input_format_option,
    "--log-format": options.log_format_option(),
    "--no-progress": options.no_progress_option,
    "--org": options.org_option,
    "--output": options.output_option,
    "--rules": options.rules_option,
    "--web-host": options.web_host_option,
    "--web-port": options.web_port_option(6066),
}
"""Options defined once: wherever they appear, the same help, metavar, type and callback."""
OWN_MEANING = {
    ("rules import-rvu", "--output"): "DIR",
}
"""The few places a shared option means something else, on purpose (and says so in its help,
with this metavar): ``rules import-rvu`` writes a set of books, so its ``--output`` is a
directory (docs/adding-a-rule-year.md)."""

MORE_CHOICES = {
    ("ingest", "--input-format"): ("fhir",),
}
"""Shared options with more choices where a command reads more (and says so in its help):
``ingest`` maps FHIR R4 to events (docs/fhir.md); the commands that only read events do not."""

OPTIONAL_HERE = {("ingest", "--org")}
"""Shared options a command takes only sometimes (its help says when): ``ingest`` needs
``--org`` for FHIR input alone."""


def commands() -> Iterator[tuple[str, click.Command]]:
    """(`name` or `group sub`, command) of every command, subcommands of groups included."""
    for name, command in sorted(cli.commands.items()):
        if isinstance(command, click.Group):
            for sub, inner in sorted(command.commands.items()):
                yield f"{name} {sub}", inner
        else:
            yield name, command


def visible(command: click.Command) -> dict[str, click.Option]:
    """The options --help shows, by their long name."""
    return {
        name: param
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden
        for name in param.opts
        if name.startswith("--")
    }


def reference(name: str) -> click.Option:
    """The option as ``streams.cli.options`` defines it."""
    command = click.command(SHARED[name](lambda **_: None))
    return visible(command)[name]


def signature(option: click.Option) -> tuple[object, ...]:
    return (
        option.help,
        option.metavar,
        option.type.to_info_dict(),
        option.callback,
        option.is_flag,
    )


ALL = list(commands())


@pytest.mark.parametrize(("name", "command"), ALL, ids=[n for n, _ in ALL])
def test_shared_options_are_defined_once(name: str, command: click.Command) -> None:
    for option_name, option in visible(command).items():
        if (name, option_name) in OWN_MEANING:
            assert option.metavar == OWN_MEANING[name, option_name], (name, option_name)
            assert option.help and "not a file" in option.help, (name, option_name)
        elif (name, option_name) in MORE_CHOICES:
            ref, more = reference(option_name), MORE_CHOICES[name, option_name]
            assert isinstance(option.type, click.Choice) and isinstance(ref.type, click.Choice)
            assert tuple(option.type.choices) == (*ref.type.choices, *more), name
            assert option.help and ref.help and option.help.startswith(ref.help), name
            assert all(choice in option.help for choice in more), name
        elif (name, option_name) in OPTIONAL_HERE:
            ref = reference(option_name)
            assert option.help and ref.help and option.help.startswith(ref.help + " "), name
            assert signature(option)[1:] == signature(ref)[1:], name
            assert not option.required, name
        elif option_name in SHARED:
            assert signature(option) == signature(reference(option_name)), (name, option_name)
        if option_name == "--input":
            assert option.help is not None and option.help.startswith(options.INPUT_HELP)
            assert option.metavar == "PATH"
        if option_name == "--format":  # the output format, and nothing else
            assert option.help is not None and option.help.startswith(options.OUTPUT_FORMAT_HELP)
            assert isinstance(option.type, click.Choice)
        if option_name == "--partitions":
            assert option.help is not None and option.help.startswith(options.PARTITIONS_HELP)
            assert option.metavar == "N"
            assert option.type.to_info_dict() == click.IntRange(1).to_info_dict()
        if option_name == "--month":
            assert (option.help, option.metavar, option.callback) == (
                "A calendar month, in the practice's time zone.",
                "YYYY-MM",
                options.parse_month,
            )
        if option_name == "--loglevel":
            assert option.metavar == "LEVEL" and option.help is not None
            assert option.help.startswith("Least severe log records")
            assert isinstance(option.type, click.Choice)
            assert tuple(option.type.choices) == options.LOGLEVELS


@pytest.mark.parametrize(("name", "command"), ALL, ids=[n for n, _ in ALL])
def test_kafka_options_only_where_kafka_is_spoken(name: str, command: click.Command) -> None:
    names = [n for p in command.params if isinstance(p, click.Option) for n in p.opts]
    have = KAFKA_OPTIONS & set(names)
    assert all(names.count(n) == 1 for n in have), name
    if name in KAFKA_COMMANDS:
        assert have == KAFKA_OPTIONS, name
    else:
        assert have == KAFKA_ADJACENT.get(name, frozenset()), name


def test_the_kafka_command_list_names_real_commands() -> None:
    names = {n for n, _ in ALL}
    assert KAFKA_COMMANDS | set(KAFKA_ADJACENT) <= names
    assert {n for n, _ in OWN_MEANING} <= names


def test_old_spellings_are_hidden() -> None:
    for name, command in ALL:
        shown = command.get_help(click.Context(command, info_name=name))
        for param in command.params:
            if param.name and param.name.startswith("deprecated_"):
                assert isinstance(param, click.Argument) or getattr(param, "hidden", False)
                for spelling in getattr(param, "opts", []):
                    assert f"{spelling} " not in shown, (name, spelling)


# -- every `caretally ...` line of the README and of the --help texts ------------------------

SEPARATORS = {"|", "||", "&", "&&", ";", ")", "(", ">", "<", ">>", "$("}


def code_blocks(markdown: str) -> str:
    """The lines of a Markdown text's fenced code blocks."""
    keep, inside = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            keep.append(line)
    return "\n".join(keep)


def invocations(text: str) -> Iterator[list[str]]:
    """The arguments after each `caretally` of a text's command lines (prose, which
    quotes commands in backticks, is skipped): lines joined at a trailing ``\\`` and
    while a quote is open; each ends at a shell separator or a comment."""
    pending = ""
    for line in text.splitlines():
        if "`" in line:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.commenters = "#"
            lexer.wordchars += "$=:,.-/@*'[]{}"
            tokens = list(lexer)
        except ValueError:  # a quote open across lines
            pending = line + " "
            continue
        pending = ""
        for i, token in enumerate(tokens):
            if token.rsplit("/", 1)[-1] == "caretally" and not line.lstrip().startswith("#"):
                args = []
                for arg in tokens[i + 1 :]:
                    if arg in SEPARATORS or set(arg) <= set("|&;()<>"):
                        break
                    args.append(arg)
                if args:
                    yield args


def check(args: list[str]) -> None:
    """Parse ``args`` as the command line would (no callbacks); refuse unknown or
    hidden (old) spellings."""
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        found = command.get_command(click.Context(command), rest[0])
        assert found is not None, f"no command {rest[0]!r} in: caretally {' '.join(args)}"
        command, rest = found, rest[1:]
    if isinstance(command, click.Group):
        return  # `caretally --help` and the like
    names = set(visible(command)) | {"--help"}
    for token in rest:
        if token.startswith("--"):
            assert token.split("=")[0] in names, f"no {token} in: caretally {' '.join(args)}"
    ctx = command.make_context("caretally", rest, resilient_parsing=True)
    old = [name for name, value in ctx.params.items() if name.startswith("deprecated_") and value]
    assert not old, f"an old spelling in: caretally {' '.join(args)}"


def test_invocations_are_found() -> None:
    """The parser above sees what it must (else the two tests below could not fail)."""
    text = 'x\nKEY=$(caretally keys create --org p)\n  caretally sql "SELECT 1\n  FROM t" \\\n'
    text += "   --format csv  # note\n.venv/bin/caretally replay --input a && caretally demo"
    assert list(invocations(text)) == [
        ["keys", "create", "--org", "p"],
        ["sql", "SELECT 1 FROM t", "--format", "csv"],
        ["replay", "--input", "a"],
        ["demo"],
    ]
    with pytest.raises(AssertionError):
        check(["restore", "--archive", "data/archive"])  # an old spelling
    with pytest.raises(AssertionError):
        check(["replay", "--nonsense"])


def test_readme_uses_only_options_that_exist() -> None:
    found = list(invocations(code_blocks(README.read_text(encoding="utf-8"))))
    assert len(found) >= 15
    for args in found:
        check(args)


@pytest.mark.parametrize(("name", "command"), ALL, ids=[n for n, _ in ALL])
def test_help_examples_use_only_options_that_exist(name: str, command: click.Command) -> None:
    for args in invocations(command.help or ""):
        check(args)


def test_readme_says_which_commands_take_bootstrap() -> None:
    text = README.read_text(encoding="utf-8")
    assert "Every command takes `--bootstrap" not in text


CLICK_TYPE_NAMES = {"INTEGER", "FLOAT", "TEXT", "PATH", "FILENAME", "DIRECTORY", "BOOLEAN"}


@pytest.mark.parametrize("name,command", ALL, ids=[n for n, _ in ALL])
def test_option_values_are_named_for_what_they_mean(name: str, command: click.Command) -> None:
    """``--flush-seconds SECONDS``, ``--partitions N``, ``--state-dir DIR``: a value is named
    by the command, never by click's type names (``FLOAT RANGE``, ``PATH``), so one kind of
    value reads the same everywhere."""
    ctx = click.Context(command, info_name=name)
    generic = {}
    for opt in visible(command).values():
        if opt.is_flag or isinstance(opt.type, click.Choice):
            continue
        if opt.metavar is not None:
            continue  # named by the command
        shown = opt.make_metavar(ctx)
        if shown.replace(" RANGE", "") in CLICK_TYPE_NAMES:
            generic[opt.opts[0]] = shown
    assert generic == {}
