# Every target creates .venv itself: a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/ccserver serve --demo

lint: $(STAMP)
	$(BIN)/ruff check ccserver tests ops
	$(BIN)/ruff format --check ccserver tests ops
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python ops/bench/engine_bench.py
	$(BIN)/python ops/bench/ledger_bench.py
	$(BIN)/python ops/bench/radius_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
