# Two entry points for a fresh machine (see README): `make quickstart` and `make test`.
# Everything is installed into .venv from pinned versions (constraints.txt).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test test-slow bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)
	bash scripts/install_postgres.sh
	bash scripts/install_browser.sh
	bash scripts/install_detection.sh $(VENV)/bin/python

quickstart: setup
	$(VENV)/bin/harness run suites/quickstart.toml

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

test-slow: setup
	$(VENV)/bin/python -m pytest -m slow

bench: setup
	$(VENV)/bin/python benchmarks/cli_startup.py
	$(VENV)/bin/python benchmarks/trial_overhead.py

clean:
	rm -rf runs leaderboard/*.tmp
