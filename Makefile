# The two commands of the README: `make demo` and `make test`.
# Each creates ./.venv (from python3.11 or python3) and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck clean bench bench-smoke

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
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

# The benchmarks' smoke runs (benchmarks/suite.py --smoke: tenantry only, small
# counts, one run; benchmarks/tenant_fairness.py --smoke), each checked by its
# test (tests/integration/test_*bench_smoke.py, which the suite itself leaves
# out). CI runs this after `make test`.
BENCH_SMOKE_TESTS := tests/integration/test_bench_smoke.py tests/integration/test_fairness_bench_smoke.py
bench-smoke: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider -s --bench-smoke $(PYTEST_ARGS) $(BENCH_SMOKE_TESTS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) tenantry-data .pytest_cache .mypy_cache .ruff_cache
