"""One tool call, the same for every path: catalog -> validate -> execute.

Both the MCP handler and the REST bridge call `ToolCalls.call`, so a rule
added here (policy, metering, the usage ledger) holds on every path.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import Database
from tenantry.errors import BadRequest, NotFound, TenantryError, Unavailable
from tenantry.gateway.catalog import Catalog
from tenantry.metrics import Metrics
from tenantry.settings import Settings
from tenantry.tenancy import Principal
from tenantry.tools.base import ToolContext

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """A finished call: a structured result, or the tool-level error that ended it."""

    result: dict[str, Any] | None = None
    error: TenantryError | None = None
    # An upstream's result, passed through as it came (content, structuredContent, isError).
    forwarded: types.CallToolResult | None = None

    def to_mcp(self) -> types.CallToolResult:
        if self.forwarded is not None:
            return self.forwarded
        if self.error is not None:
            body = self.error.body()
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=f"{self.error.code}: {self.error.detail}")],
                structured_content=body,
                is_error=True,
            )
        result = self.result or {}
        text = json.dumps(result, ensure_ascii=False, separators=(",", ":"))
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=result)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


class ToolCalls:
    def __init__(self, settings: Settings, db: Database, catalog: Catalog, metrics: Metrics) -> None:
        self._settings = settings
        self._db = db
        self._catalog = catalog
        self._metrics = metrics

    async def list_tools(self, principal: Principal) -> list[types.Tool]:
        return await self._catalog.list_tools(principal)

    async def exists(self, principal: Principal, name: str) -> bool:
        return await self._catalog.lookup(principal, name) is not None

    async def call(self, principal: Principal, name: str, arguments: dict[str, Any] | None) -> ToolOutcome:
        started = time.perf_counter()
        tool = await self._catalog.lookup(principal, name)
        if tool is None:
            outcome = ToolOutcome(error=NotFound(f"no tool named {name[:100]!r}", code="unknown_tool"))
        else:
            try:
                args = tool.arguments.model_validate(arguments or {})
            except ValidationError as exc:
                outcome = ToolOutcome(error=BadRequest(_describe(exc), code="invalid_arguments"))
            else:
                ctx = ToolContext(principal=principal, db=self._db, settings=self._settings)
                try:
                    value = await tool.execute(ctx, args)
                    if isinstance(value, types.CallToolResult):
                        outcome = ToolOutcome(forwarded=value)
                    else:
                        outcome = ToolOutcome(result=value)
                except TenantryError as exc:
                    outcome = ToolOutcome(error=exc)
                except (DBAPIError, OSError):
                    log.exception("tool %s failed for tenant %s", name, principal.tenant_id)
                    outcome = ToolOutcome(error=Unavailable("the data store is unavailable; retry later"))
        status = "ok" if outcome.error is None else outcome.error.code
        self._metrics.observe_tool_call(principal.tenant_id, name if tool else "_unknown", status, started)
        return outcome
