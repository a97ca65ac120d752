"""What every `tenantry` command shares: output, exit codes, a database for one command."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

from tenantry.db.engine import Database
from tenantry.errors import BadRequest
from tenantry.settings import Settings

# Exit codes, the same for every command (`tenantry --help` lists them).
EXIT_TOOL_ERROR = 1  # `call`: the tool answered with an error (`probe`: degraded)
EXIT_USAGE = 2  # the request was wrong: bad arguments, unknown tool or tenant, invalid JSON (`probe`: down)
EXIT_AUTH = 3  # the gateway refused the credential (401) or the tenant (403)
EXIT_UNAVAILABLE = 4  # the gateway or the database did not answer, or failed
EXIT_CODES = (
    "exit codes: 0 ok; 1 the tool answered with an error; 2 usage error (bad arguments, unknown tool or"
    " tenant); 3 credential or tenant refused (401/403); 4 gateway or database unreachable or failing."
    " `probe`: 0 ok, 1 degraded, 2 down."
)


def emit(args: argparse.Namespace, data: dict[str, Any], human: str) -> None:
    print(json.dumps(data, indent=2) if args.json else human)


async def with_db(settings: Settings, work: Callable[[Database], Awaitable[Any]]) -> Any:
    db = Database(settings)
    try:
        return await work(db)
    finally:
        await db.dispose()


def json_object(raw: str, what: str, code: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}", code=code) from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object", code=code)
    return value
