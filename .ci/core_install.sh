#!/usr/bin/env bash
# `pip install tenantry` with no extras, at the locked versions, in a throwaway venv:
# the embedded SQLite default (library, queue, CLI) must work without psycopg,
# FastAPI, PyJWT or anything else an extra brings. A regular (non-editable) install
# of the built package, so a module or template missing from it shows here too.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="$(mktemp -d)/core-venv"
trap 'rm -rf "$(dirname "$VENV")"' EXIT

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade "pip==25.3"
"$VENV/bin/python" -m pip install --quiet . -c requirements/constraints.txt

# From the venv's own directory, so `import tenantry` finds the installed package,
# not ./src.
cd "$(dirname "$VENV")"
"$VENV/bin/python" "$OLDPWD/.ci/core_smoke.py"
"$VENV/bin/tenantry" --help >/dev/null
echo "core install: tenantry --help ok"

# A command that needs an extra says which one, on one line, without a traceback.
if "$VENV/bin/tenantry" serve >out.txt 2>err.txt; then
  echo "tenantry serve ran without the 'serve' extra" >&2
  exit 1
fi
if ! grep -q "^error: .*'serve' extra" err.txt || grep -q Traceback err.txt; then
  echo "tenantry serve without the 'serve' extra did not fail with one error line:" >&2
  cat err.txt >&2
  exit 1
fi
echo "core install: tenantry serve asks for the 'serve' extra"
