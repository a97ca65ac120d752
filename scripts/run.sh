#!/usr/bin/env bash
# One command from a fresh clone to a serving gateway: install, start PostgreSQL/Redis if nothing
# answers, migrate, create a demo tenant, print how to call it, and serve. Flags go to `tenantry dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/tenantry dev "$@"
