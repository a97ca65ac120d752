"""One tool call, the same for every path: catalog -> validate -> meter -> execute -> ledger.

Both the MCP handler and the REST bridge call `ToolCalls.call`, so a rule
added here holds on every path. A resource read and a prompt get are run
here too, as calls named `resource:<uri>` and `prompt:<name>` (`method` says
which), so policy, kill switches, metering, guardrails and audit hold for
them alike. The order matters:

- an unknown tool or invalid arguments is refused before the meter, so bad
  input consumes no quota and leaves no usage event;
- the meter's one round trip decides and counts (quota, request rate,
  in-flight cap); a refused call is not executed and leaves no usage event;
- an admitted call gets its event id at admission; when it completes, its
  usage event is made durable (Redis stream, pipelined with the release of
  its in-flight slot) *before* the result goes back, so every result a client
  ever saw is in the ledger. The event id travels back in the result's
  `_meta` (`tenantry/event_id`), so a client or an auditor can match the two;
- every call, admitted or refused, leaves one audit record (`audit/`): an
  admitted call's travels in its usage event's stream entry, a refused one's
  is written on its own, both before the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import mcp_types as types
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from tenantry.audit.trail import AuditTrail
from tenantry.db.engine import Database
from tenantry.errors import BadRequest, InternalError, TenantryError, Unavailable
from tenantry.federation.registry import SEPARATOR
from tenantry.gateway.arguments import describe, refuse_unrepresentable, unknown
from tenantry.gateway.catalog import RESOURCE_READ, TOOL_CALL, Catalog, CatalogEntry
from tenantry.gateway.outcomes import ToolOutcome, guarded, refusal
from tenantry.governance.gate import GOVERNANCE_CODES, Gate
from tenantry.governance.guardrails import OutputGuard, redacted
from tenantry.governance.policy import Policy
from tenantry.ids import time_ordered_id
from tenantry.metering.ledger import Ledger, LedgerUnavailable, UsageEvent
from tenantry.metering.meter import Decision, Meter, QuotaKind, wall_clock_ms
from tenantry.metrics import Metrics
from tenantry.observability import Tracing, current_request, note
from tenantry.plans import PlanBook
from tenantry.settings import Settings
from tenantry.tenancy import Principal, in_scope
from tenantry.tools.base import Relay, ToolContext

log = logging.getLogger(__name__)
T = TypeVar("T")

# Refusals decided before the meter was asked: these requests count against the rate separately.
# What a subject probing for tools gets: an unknown tool counts like a hidden one (they look the same).
_PROBES = frozenset({"tool_forbidden", "unknown_tool", "resource_not_found", "prompt_not_found", "argument_forbidden"})
_BEFORE_THE_METER = frozenset(
    {
        "unknown_tool", "resource_not_found", "prompt_not_found", "invalid_arguments", "value_too_large",
        "argument_forbidden", "argument_invalid",
    }
)  # fmt: skip


class ToolCalls:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        catalog: Catalog,
        metrics: Metrics,
        *,
        meter: Meter,
        ledger: Ledger,
        plans: PlanBook,
        gate: Gate | None = None,
        tracing: Tracing | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self._settings = settings
        self._tracing = tracing or Tracing()
        self._db = db
        self._catalog = catalog
        self._metrics = metrics
        self._meter = meter
        self._ledger = ledger
        self._plans = plans
        self._gate = gate
        self._audit = audit if audit is not None and audit.enabled else None
        self._metering = settings.metering_enabled
        self._call_timeout_ms = int(settings.call_timeout_seconds * 1000)
        # Told of every call that ended ok, with its validated arguments (resource subscriptions
        # hear of data-store writes so).
        self.observers: list[Callable[[Principal, str, Any], None]] = []

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    async def list_tools(self, principal: Principal) -> list[types.Tool]:
        """The tools `principal` may call: the catalog, less what its credential's own tool scope and the
        tenant's policy hide from it."""
        tools = await self._catalog.list_tools(principal)
        return await self.visible(principal, tools, lambda tool: tool.name)

    async def visible(self, principal: Principal, items: list[T], name: Callable[[T], str]) -> list[T]:
        """`items` less what `principal`'s credential scope and the tenant's policy hide from it, each
        item known by its pipeline name (`name(item)`: a tool's name, `resource:<uri>`, `prompt:<name>`)."""
        if principal.tools is not None:
            items = [item for item in items if in_scope(principal, name(item))]
        policy = await self._gate.policy(principal) if self._gate is not None else None
        if policy is None:
            return items
        return [item for item in items if policy.may_call(principal, name(item))]

    def refused_at_once(self, principal: Principal, name: str) -> TenantryError | None:
        """A call refused from memory alone, whatever its arguments: its tenant is over its request rate
        (and nothing killed stops it, which the pipeline would say first). The fast path asks this before
        it parses the rest of a request, so a flood costs the gateway little."""
        if not self._metering:
            return None
        held = self._meter.over_rate(principal.tenant_id, principal.limits)
        if held is None or (self._gate is not None and self._gate.stopped(principal, name) is not None):
            return None
        return refusal(held, principal, name[:100], 0)

    def observe_refusal(self, principal: Principal, name: str, error: TenantryError, started: float) -> None:
        """Count a call refused before the pipeline ran (the fast path's early refusal), as the pipeline would."""
        self._metrics.observe_tool_call(principal.tenant_id, self._catalog.label(name), error.code, started)
        note(tool=name[:100], outcome=error.code)

    async def _count_request(self, principal: Principal) -> TenantryError | None:
        """Count a request the meter's admission never saw (refused before it: an unknown tool, bad
        arguments) against the tenant's request rate; the refusal when it is over the rate."""
        if not self._metering or principal.limits.requests_per_minute is None:
            return None
        decision = await self._meter.check_rate(principal.tenant_id, principal.limits)
        self._observe_decision(principal, decision)
        # A meter outage does not refuse a request that was refused anyway; only the rate does.
        return refusal(decision, principal, None, 0) if decision.reason == "rate_limited" else None

    async def call(
        self,
        principal: Principal,
        name: str,
        arguments: dict[str, Any] | None,
        relay: Relay | None = None,
        *,
        method: str = TOOL_CALL,
    ) -> ToolOutcome:
        try:
            return await self._call(principal, name, arguments, relay, method)
        except asyncio.CancelledError:
            # The client went away (its request was cancelled) before the call ended: the call's record
            # says so, as the call's own (the outermost middleware leaves tool calls to this pipeline).
            request = current_request()
            if self._audit is not None and (request is None or not request.audited):
                document = self._audit.call(
                    principal, name[:200], "cancelled", admitted=True, started=time.perf_counter(),
                    event_id=None, arguments=arguments, method=method,
                )  # fmt: skip
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._audit.write_document(principal.tenant_id, document, request))
            raise

    async def _call(
        self, principal: Principal, name: str, arguments: dict[str, Any] | None, relay: Relay | None, method: str
    ) -> ToolOutcome:
        started = time.perf_counter()
        asked = arguments
        record = current_request()
        attributes = {"tenantry.tenant_id": principal.tenant_id, "tenantry.tool": name[:100]}
        parent = record.trace if record is not None else None
        with self._tracing.span(method, parent=parent, **attributes) as span:
            gate = self._gate
            stopped = gate.stopped(principal, name) if gate is not None else None
            if stopped is None:
                stopped = self.refused_at_once(principal, name)
            tool = await self._catalog.find(principal, method, name) if stopped is None else None
            policy = await gate.policy(principal) if gate is not None and stopped is None else None
            hidden = tool is not None and (
                not in_scope(principal, name) or (policy is not None and not policy.may_call(principal, name))
            )
            if stopped is not None:
                outcome = ToolOutcome(error=stopped)
                label = self._catalog.label(name)
            elif tool is None or hidden:
                # A tool the policy hides is refused exactly as an unknown one: no existence oracle.
                outcome = ToolOutcome(error=unknown(method, name), recorded_as="tool_forbidden" if hidden else None)
                label = "_unknown"
            else:
                upstream = SEPARATOR in name
                label = self._catalog.label(name)  # metric labels stay a bounded set
                try:
                    # Everything the caller got wrong is refused here, before the meter: it costs nothing.
                    refuse_unrepresentable(arguments or {}, nul_allowed=upstream)
                    if gate is not None and policy is not None:
                        arguments = dict(await gate.shape(principal, policy, name, arguments or {}))
                    args = tool.arguments.model_validate(arguments or {})
                    tool.precheck(args)
                except ValidationError as exc:
                    outcome = ToolOutcome(error=BadRequest(describe(exc), code="invalid_arguments"))
                except TenantryError as exc:
                    outcome = ToolOutcome(error=exc)
                else:
                    outcome = await self._metered(principal, tool, args, started, relay, policy, asked, method)
                    if self.observers and outcome.status == "ok":
                        for observe in self.observers:
                            observe(principal, name, args)
            if outcome.event_id is None and outcome.error is not None and outcome.error.code in _BEFORE_THE_METER:
                # Refused before the meter: still a request, and it counts against the rate.
                over = await self._count_request(principal)
                if over is not None:
                    outcome = ToolOutcome(error=over)
            if gate is not None and outcome.status in _PROBES:
                escalated = await gate.denied(principal, policy, name)  # a subject probing: a trigger may act
                if escalated is not None:
                    outcome = ToolOutcome(error=escalated)
            status = outcome.status
            if self._audit is not None and outcome.event_id is None:  # no usage event carried its record
                document = self._audit_document(principal, name, asked, outcome, started, policy, method)
                await self._audit.write_document(principal.tenant_id, document)
            if status in GOVERNANCE_CODES:
                self._metrics.governance_refusals.labels(status).inc()
            if span is not None:
                span.set_attribute("tenantry.outcome", status)
        self._metrics.observe_tool_call(principal.tenant_id, label, status, started)
        note(tool=name[:100], outcome=status)
        return outcome

    async def _metered(
        self,
        principal: Principal,
        tool: CatalogEntry,
        args: Any,
        started: float,
        relay: Relay | None,
        policy: Policy | None,
        asked: dict[str, Any] | None,
        method: str,
    ) -> ToolOutcome:
        # A withheld upstream tool (its definition drifted) is refused by its own execute(): not metered.
        if not self._metering or getattr(tool, "withheld", False):
            return await self._run(principal, tool, args, relay, policy)
        tenant_id, limits = principal.tenant_id, principal.limits
        event_id = time_ordered_id()
        call_id = event_id.hex
        cost = self._plans.cost(tool.name, default=tool.cost)
        quota: QuotaKind = "reads" if method == RESOURCE_READ else "calls"  # reads have a window of their own
        with self._tracing.span("meter.admit"):
            decision = await self._meter.admit(
                tenant_id, call_id, cost, limits, call_timeout_ms=self._call_timeout_ms, quota=quota
            )
        self._observe_decision(principal, decision)
        if not decision.admitted:
            return ToolOutcome(error=refusal(decision, principal, tool.name, cost))
        outcome = await self._run(principal, tool, args, relay, policy)
        event = UsageEvent(
            event_id,
            tenant_id,
            tool.name,
            cost,
            outcome.status,
            (time.perf_counter() - started) * 1000,
            wall_clock_ms(),
            not decision.bypassed,
        )
        # Every admission is in the in-flight set (capped or not: it is how an abandoned one is undone).
        holds_slot = not decision.bypassed and not limits.unmetered
        audit = None
        if self._audit is not None:  # the call's audit record rides in its usage event's entry
            ended = replace(outcome, event_id=event_id)
            audit = self._audit_document(principal, tool.name, asked, ended, started, policy, method)
        try:
            release = (self._meter.inflight_key(tenant_id), call_id) if holds_slot else None
            with self._tracing.span("ledger.record"):
                await self._ledger.record(event, release=release, audit=audit)
        except LedgerUnavailable:
            log.error("usage event %s of tenant %s could not be recorded; result withheld", event_id, tenant_id)
            self._metrics.ledger_failures.inc()
            if holds_slot:
                await self._meter.release(tenant_id, call_id)
            error = Unavailable("the usage ledger is unavailable; retry later", code="ledger_unavailable")
            return ToolOutcome(error=error, admitted=True)
        if audit is not None:
            request = current_request()
            if request is not None:
                request.audited = True
        return replace(outcome, event_id=event_id)

    def _audit_document(
        self,
        principal: Principal,
        name: str,
        asked: dict[str, Any] | None,
        outcome: ToolOutcome,
        started: float,
        policy: Policy | None,
        method: str,
    ) -> str:
        """The call's audit record: who, which tool, a digest of the arguments asked for (and, when the
        tenant opted in, the arguments with personal data redacted), what was decided and how it ended."""
        assert self._audit is not None
        keeps = policy is not None and policy.audits_arguments and asked is not None
        return self._audit.call(
            principal,
            name[:200],
            outcome.status,
            admitted=outcome.admitted,
            started=started,
            event_id=outcome.event_id,
            arguments=asked,
            kept=redacted(asked) if keeps else None,
            method=method,
        )

    async def _run(
        self, principal: Principal, tool: CatalogEntry, args: Any, relay: Relay | None, policy: Policy | None
    ) -> ToolOutcome:
        """Execute the tool; a kill made meanwhile cancels it (an upstream request is aborted) and the call
        ends `killed`, with no result and so unbilled. The tenant's output guardrail sees what it returns
        and what it relays on the way."""
        if self._gate is None:
            return replace(await self._execute(principal, tool, args, relay), admitted=True)
        guard = self._guard(principal, policy, tool.name)
        if guard is not None:
            relay = guard.relay(relay)
        with self._gate.running(principal, tool.name) as running:
            try:
                outcome = await self._execute(principal, tool, args, relay)
            except asyncio.CancelledError:
                if running.killed_by is None:
                    raise
        if running.killed_by is None:
            # A withheld upstream tool (drifted, flagged) refuses in its own execute(): not admitted.
            outcome = replace(outcome, admitted=not getattr(tool, "withheld", False))
            return outcome if guard is None else guarded(guard, tool.name, outcome)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
        log.warning("call of %s by tenant %s killed in flight", tool.name, principal.tenant_id)
        return ToolOutcome(error=running.killed_by.refusal(), admitted=True)

    def _guard(self, principal: Principal, policy: Policy | None, tool: str) -> OutputGuard | None:
        if policy is None:
            return None
        mode, kinds = policy.output_guard(tool)
        if mode == "off":
            return None
        return OutputGuard(mode, kinds, lambda found: self._metrics.observe_pii(principal.tenant_id, found))

    def context(self, principal: Principal, relay: Relay | None = None) -> ToolContext:
        """What a built-in runs with, for `principal` (and reads of the data store outside a call)."""
        return ToolContext(principal=principal, db=self._db, settings=self._settings, meter=self._meter, relay=relay)

    async def _execute(self, principal: Principal, tool: CatalogEntry, args: Any, relay: Relay | None) -> ToolOutcome:
        ctx = self.context(principal, relay)
        try:
            value = await tool.execute(ctx, args)
        except TenantryError as exc:
            return ToolOutcome(error=exc)
        except DBAPIError as exc:
            # Never str(exc): SQLAlchemy puts the statement's parameters, the tenant's data, in it.
            state = getattr(exc.orig, "sqlstate", None) or ""
            if state.startswith("22"):  # a data exception: a value the database cannot take is the caller's
                return ToolOutcome(error=BadRequest("a value cannot be stored as given", code="invalid_arguments"))
            log.error(
                "tool %s failed for tenant %s: %s (SQLSTATE %s)",
                tool.name,
                principal.tenant_id,
                type(exc.orig).__name__,
                state or "none",
            )
            return ToolOutcome(error=Unavailable("the data store is unavailable; retry later"))
        except OSError as exc:
            log.error("tool %s failed for tenant %s: %s", tool.name, principal.tenant_id, type(exc).__name__)
            return ToolOutcome(error=Unavailable("the data store is unavailable; retry later"))
        except Exception as exc:  # a bug in a tool: its slot is freed and its outcome recorded like any other
            log.error("tool %s raised %s for tenant %s", tool.name, type(exc).__name__, principal.tenant_id)
            return ToolOutcome(error=InternalError(f"tool {tool.name!r} failed; this is a gateway bug, not billed"))
        if isinstance(value, types.CallToolResult):
            return ToolOutcome(forwarded=value)
        return ToolOutcome(result=value)

    def _observe_decision(self, principal: Principal, decision: Decision) -> None:
        if decision.bypassed:
            self._metrics.meter_unavailable.labels(principal.plan, "fail_open").inc()
        elif decision.reason == "meter_unavailable":
            self._metrics.meter_unavailable.labels(principal.plan, "fail_closed").inc()
