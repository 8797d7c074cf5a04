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
# The engine's modules compiled with mypyc (ccserver/compiled.py), rebuilt when a source of theirs
# changes. Without a C compiler the build skips them and ccserver runs them from source.
COMPILED := $(VENV)/.compiled

.PHONY: run test bench lint venv clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools
	CCSERVER_PURE_PYTHON=1 $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(COMPILED): $(STAMP) ccserver/compiled.py $(wildcard ccserver/actors/*.py ccserver/rating/*.py ccserver/radius/*.py)
	$(BIN)/python setup.py --quiet build_ext --inplace
	$(BIN)/python -c 'import ccserver; print("ccserver engine:", ccserver.compiled.STATE)'
	touch $(COMPILED)

venv: $(COMPILED)

run: $(COMPILED)
	$(BIN)/ccserver serve --demo

lint: $(COMPILED)
	$(BIN)/ruff check ccserver tests ops setup.py
	$(BIN)/ruff format --check ccserver tests ops setup.py
	$(BIN)/mypy

# The whole suite, then the tests of the compiled modules again on their sources: how they run
# where no C compiler built them.
test: lint
	$(BIN)/python -m pytest -q
	CCSERVER_PURE_PYTHON=1 $(BIN)/python -m pytest -q tests/test_engine.py \
		tests/test_engine_fast_paths.py tests/test_engine_properties.py tests/test_prefix_index.py \
		tests/test_rating.py tests/test_rate_space.py tests/test_radius_codec.py tests/test_compiled.py

bench: $(COMPILED)
	$(BIN)/python ops/bench/engine_bench.py
	$(BIN)/python ops/bench/ledger_bench.py
	$(BIN)/python ops/bench/radius_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
	find ccserver -name '*.so' -delete
