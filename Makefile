# Every target builds its own virtual environment from pyproject.toml; nothing
# relies on what happens to be installed on the machine.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean browser

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/caretally demo

# The browser tests drive Debian's chromium through Debian's chromedriver (the same version;
# tests/support/browser.py); Selenium downloads nothing. Installed here when missing.
BROWSER_PKGS := chromium chromium-driver

browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	command -v apt-get >/dev/null 2>&1 || { echo "the browser tests need chromium and chromedriver on PATH (Debian: apt-get install $(BROWSER_PKGS))"; exit 1; }; \
	sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get"; \
	echo "installing $(BROWSER_PKGS) for the browser tests"; \
	$$apt install -y --no-install-recommends $(BROWSER_PKGS) \
	  || { $$apt update && $$apt install -y --no-install-recommends $(BROWSER_PKGS); } \
	  || { echo "could not install $(BROWSER_PKGS) with apt-get$${sudo:+ (through sudo)}: install them or put chromium and chromedriver on PATH"; exit 1; }; \
	command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
	  || { echo "$(BROWSER_PKGS) installed but chromium or chromedriver is not on PATH"; exit 1; }

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=15 --timeout=600

# Everything that needs no broker: unit and property tests (see tests/conftest.py).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --timeout=600 -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/replay.py --events 1000000 --out benchmarks/results/replay.json
	$(BIN)/python benchmarks/pipeline.py --out benchmarks/results/pipeline.json
	$(BIN)/python benchmarks/archive_replay.py --out benchmarks/results/archive_replay.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
