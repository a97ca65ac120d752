"""`python -m tenantry.dev [up|down]`: make PostgreSQL and Redis answer for the configured URLs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import asyncpg

from tenantry.dev.postgres import ensure_database, ensure_postgres, stop_postgres
from tenantry.dev.process import DEFAULT_STATE_DIR, DevServiceError, parse_postgres_url, parse_redis_url
from tenantry.dev.redis import ensure_redis, stop_redis
from tenantry.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tenantry.dev [up|down] [--state-dir DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m tenantry.dev",
        description="Make PostgreSQL (TENANTRY_DATABASE_URL) and Redis (TENANTRY_REDIS_URL) answer, "
        "starting local servers when nothing does; `down` stops the ones it started.",
    )
    parser.add_argument("action", nargs="?", choices=("up", "down"), default="up")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="default: %(default)s")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    settings = Settings()
    database_url, redis_url = settings.owner_database_url, settings.redis_url
    pg, rd = parse_postgres_url(database_url), parse_redis_url(redis_url)
    try:
        if args.action == "down":
            print(f"postgres {pg.address}: {'stopped' if stop_postgres(database_url, args.state_dir) else 'not ours'}")
            print(f"redis {rd.address}: {'stopped' if stop_redis(redis_url, args.state_dir) else 'not ours'}")
            return 0
        print(f"postgres {pg.address}: {ensure_postgres(database_url, args.state_dir)}")
        if pg.path:
            print(f"database {pg.path}: {'created' if ensure_database(database_url) else 'exists'}")
        print(f"redis {rd.address}: {ensure_redis(redis_url, args.state_dir)}")
    except (DevServiceError, OSError, asyncpg.PostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
