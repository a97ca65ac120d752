#!/usr/bin/env bash
# One command from a fresh clone to a passing suite: install, start PostgreSQL/Redis if nothing answers,
# then lint, type-check and run every test against the real services. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
if ! command -v npm >/dev/null; then
  echo "error: npm (Node.js) is needed for the TypeScript SDK client test" >&2
  exit 1
fi
npm ci --prefix tests/ts_client --no-audit --no-fund --loglevel=error
.venv/bin/python -m tenantry.dev up
.venv/bin/ruff check src tests bench examples
.venv/bin/mypy
.venv/bin/mypy --strict examples/agent/agent.py
.venv/bin/pytest "$@"
