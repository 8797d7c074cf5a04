# Every target creates .venv itself: a fresh clone needs only Python 3.11+.
# The interpreter of .venv: PYTHON if given, else the distribution's /usr/bin/python3 when it is
# 3.11 or newer and can make a venv, else python3 from PATH. Debian builds its interpreter with PGO
# and LTO and links it statically; a source build with --enable-shared (pyenv's) runs the engine
# bench 12-17% slower on this machine.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(or $(shell /usr/bin/python3 -c 'import sys, ensurepip, venv; \
	sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && echo /usr/bin/python3),python3)
endif
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
