# The two commands of the README: `make demo` and `make test`.
# Each creates ./.venv (from python3.11 or python3) and installs what it needs, at
# the locked versions (requirements/constraints.txt): `make demo` only tenantry and
# the 'demo' extra, `make test` the 'dev' extra (every extra, test and lint tools).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
PIP_INSTALL = $(BIN)/python -m pip install --quiet

.PHONY: demo test test-fast test-lowest core-install lock lint typecheck clean bench bench-smoke bench-wall

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade "pip==25.3"

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP_INSTALL) -e ".[dev]" -c $(CONSTRAINTS)
	touch $(STAMP)

$(DEMO_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP_INSTALL) -e ".[demo]" -c $(CONSTRAINTS)
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/tenantry demo

# The whole suite (unit + integration, SQLite + PostgreSQL), lint, types and the
# layering contracts (.importlinter).
# The PostgreSQL tests start a throwaway server tuned for tests (tests/pgserver.py);
# TENANTRY_TEST_PG_URL points them at an existing one instead.
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# The suite again, with every runtime dependency at its lowest supported version
# (requirements/lowest.txt: pyproject.toml's lower bounds), in a venv of its own.
# No lint or types: those do not depend on the versions. CI runs it after `make test`.
LOWEST_VENV := .venv-lowest
LOWEST_STAMP := $(LOWEST_VENV)/.installed

$(LOWEST_STAMP): pyproject.toml requirements/lowest.txt
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install --quiet --upgrade "pip==25.3"
	$(LOWEST_VENV)/bin/python -m pip install --quiet -e ".[all,test]" -c requirements/lowest.txt
	touch $(LOWEST_STAMP)

# One warning is not an error here: at these versions an asyncio psycopg
# connection is now and then garbage-collected while still open (psycopg's
# ResourceWarning, reported by pytest as unraisable; see tests/conftest.py).
# At the locked versions `make test` keeps it an error, as every other warning.
test-lowest: $(LOWEST_STAMP)
	TENANTRY_LOWEST_VERSIONS=1 $(LOWEST_VENV)/bin/python -m pytest -n 2 $(PYTEST_ARGS)

# `pip install tenantry` with no extras, in a throwaway venv: a SQLite round trip
# and the CLI must work without psycopg, FastAPI or PyJWT (.ci/core_install.sh).
core-install:
	PYTHON=$(PYTHON) .ci/core_install.sh

# Regenerate requirements/constraints.txt in a throwaway venv, keeping its pins
# where they still fit; `make lock UPGRADE=1` moves everything to the newest releases.
LOCK_VENV := $(or $(TMPDIR),/tmp)/tenantry-lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade "pip==25.3"
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[dev]" $(if $(UPGRADE),,-c $(CONSTRAINTS))
	grep '^#' $(CONSTRAINTS) > $(CONSTRAINTS).new
	$(LOCK_VENV)/bin/python -m pip freeze --exclude-editable >> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

# Local loop: skips the slow soak/crash tests. To skip the wall-clock-sensitive
# tests as well: make test-fast FAST_MARKERS="not slow and not timing".
FAST_MARKERS ?= not slow
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

# Benchmarks (docs/performance.md). The peer queues get their own venv, from
# exact pins, so they never mix with tenantry's dependencies.
PEERS_VENV := benchmarks/.venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed
BENCH_ARGS ?=

$(PEERS_STAMP): benchmarks/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade "pip==25.3"
	$(PEERS_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-peers.txt
	touch $(PEERS_STAMP)

# Every system, 3 runs each, one table (and benchmarks/results/*.json).
bench: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python benchmarks/suite.py --peers-python $(PEERS_VENV)/bin/python $(BENCH_ARGS)

# What the PostgreSQL isolation wall costs: the code before it (a temporary git
# worktree of a commit, --before) and this checkout, in turns, one table.
WALL_ARGS ?=
bench-wall: $(STAMP)
	$(BIN)/python benchmarks/isolation_wall.py $(WALL_ARGS)

# The benchmarks' smoke runs (benchmarks/suite.py --smoke: tenantry only, small
# counts, one run; benchmarks/tenant_fairness.py --smoke), each checked by its
# test (tests/integration/test_*bench_smoke.py, which the suite itself leaves
# out). CI runs this after `make test`.
BENCH_SMOKE_TESTS := tests/integration/test_bench_smoke.py tests/integration/test_fairness_bench_smoke.py
bench-smoke: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider -s --bench-smoke $(PYTEST_ARGS) $(BENCH_SMOKE_TESTS)

clean:
	rm -rf $(VENV) $(LOWEST_VENV) $(PEERS_VENV) tenantry-data .pytest_cache .mypy_cache .ruff_cache
