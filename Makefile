# Every target builds its own virtual environment from pyproject.toml; nothing
# relies on what happens to be installed on the machine.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/caretally demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --timeout=600

# Everything that needs no broker: unit and property tests (see tests/conftest.py).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --timeout=600 -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/replay.py --events 1000000 --out benchmarks/results/replay.json
	$(BIN)/python benchmarks/pipeline.py --out benchmarks/results/pipeline.json
	$(BIN)/python benchmarks/archive_replay.py --out benchmarks/results/archive_replay.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
