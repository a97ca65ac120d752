"""Every test of this package goes through PgBouncer in transaction pooling mode.

`settings` is overridden here: the gateway, the `db` fixture and everything built from `settings` reach
PostgreSQL through a PgBouncer started for this package (`server.py`: a free port, a temporary
directory, stopped after the package's last test), with `db_transaction_pooler` on and the change
listener's (and migrations') direct URL on PostgreSQL itself. The modules here import test functions
from where they live, so the same bodies run through the pooler without being copied.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from tenantry.settings import Settings
from tests.conftest import serve
from tests.pgbouncer.server import PgBouncerMissing, run_pgbouncer, through


@pytest.fixture(scope="package")
def settings(settings: Settings) -> Iterator[Settings]:
    """The test settings, with every pooled connection through a PgBouncer in transaction pooling mode."""
    owner = make_url(settings.database_url).username or "postgres"
    try:
        with run_pgbouncer(settings.database_url, [owner, settings.db_app_role]) as bouncer:
            yield through(settings, bouncer)
    except PgBouncerMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="package")
def gateway_url(settings: Settings) -> Iterator[str]:
    with serve(settings) as url:
        yield url
