"""``python -m streams.cli``: the same as the ``caretally`` command."""

from streams.cli.main import main

main()
