"""What a tool call ends in: the outcome (result, tool error, or an upstream's own result), the error a
refused meter decision becomes, and the outcome after the tenant's output guardrail."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

import mcp_types as types

from tenantry.errors import LimitExceeded, TenantryError, Unavailable
from tenantry.governance.guardrails import OutputGuard, PiiBlocked
from tenantry.metering.meter import Decision
from tenantry.tenancy import Principal

EVENT_ID_META = "tenantry/event_id"


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """A finished call: a structured result, or the tool-level error that ended it."""

    result: dict[str, Any] | None = None
    error: TenantryError | None = None
    event_id: uuid.UUID | None = None  # set when the call was admitted and is in the ledger
    # An upstream's result, passed through as it came (content, structuredContent, isError).
    forwarded: types.CallToolResult | None = None
    # What the call is recorded as when the caller is told something else (a tool the policy hides
    # is refused as unknown, and recorded as `tool_forbidden`).
    recorded_as: str | None = None
    admitted: bool = False  # the tool ran (or began to): not refused before it

    @property
    def status(self) -> str:
        """'ok', or the code of what ended the call (the ledger's `outcome`; only 'ok' is billed)."""
        if self.recorded_as is not None:
            return self.recorded_as
        if self.error is not None:
            return self.error.code
        if self.forwarded is not None and self.forwarded.is_error:
            return "upstream_tool_error"
        return "ok"

    def to_mcp(self) -> types.CallToolResult:
        meta = {EVENT_ID_META: str(self.event_id)} if self.event_id is not None else None
        if self.forwarded is not None:
            if meta is None:
                return self.forwarded
            return self.forwarded.model_copy(update={"meta": {**(self.forwarded.meta or {}), **meta}})
        if self.error is not None:
            body = self.error.body()
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=f"{self.error.code}: {self.error.detail}")],
                structured_content=body,
                is_error=True,
                meta=meta,
            )
        result = self.result or {}
        text = json.dumps(result, ensure_ascii=False, separators=(",", ":"))
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], structured_content=result, meta=meta
        )


def refusal(decision: Decision, principal: Principal, tool: str | None, cost: int) -> TenantryError:
    """The error a refused meter decision becomes (429, or 503 when the meter itself is unreachable)."""
    retry_ms = decision.retry_after_ms
    extra: dict[str, Any] = {"retry_after_ms": retry_ms, "plan": principal.plan, "limit": decision.limit}
    if tool is not None:
        extra["tool"] = tool
    wait = "never, at this plan's limits" if retry_ms < 0 else f"in {retry_ms / 1000:.1f}s"
    limits = principal.limits
    match decision.reason:
        case "quota_exceeded" | "cost_exceeds_limit":
            detail = (
                f"tool {tool!r} costs {cost} unit(s); plan {principal.plan!r} allows {decision.limit}"
                f" per {limits.window_seconds}s and {max(decision.remaining or 0, 0)} remain; retry {wait}"
            )
            return LimitExceeded(detail, code=decision.reason, extra=extra)
        case "read_quota_exceeded":
            detail = (
                f"reading {tool!r} costs {cost} unit(s); plan {principal.plan!r} allows {limits.reads_per_window}"
                f" read units per {limits.window_seconds}s and {max(decision.remaining or 0, 0)} remain; retry {wait}"
            )
            return LimitExceeded(detail, code="read_quota_exceeded", extra=extra)
        case "rate_limited":
            detail = f"plan {principal.plan!r} allows {limits.requests_per_minute} requests per minute; retry {wait}"
            return LimitExceeded(detail, code="rate_limited", extra=extra)
        case "concurrency_limited":
            detail = (
                f"plan {principal.plan!r} allows {limits.max_concurrent} calls in flight; a slot frees when one"
                f" of them ends: retry {wait}"
            )
            return LimitExceeded(detail, code="concurrency_limited", extra=extra)
        case _:
            detail = f"the usage meter is unavailable and plan {principal.plan!r} fails closed; retry {wait}"
            return Unavailable(detail, code="meter_unavailable", extra=extra)


def guarded(guard: OutputGuard, tool: str, outcome: ToolOutcome) -> ToolOutcome:
    """`outcome` with personal data redacted from its result, or ended `pii_blocked`."""
    try:
        if outcome.forwarded is not None:
            return replace(outcome, forwarded=guard.forwarded(tool, outcome.forwarded))
        if outcome.result is not None:
            return replace(outcome, result=guard.result(tool, outcome.result))
    except PiiBlocked as blocked:
        return ToolOutcome(error=blocked, admitted=outcome.admitted)
    return outcome
