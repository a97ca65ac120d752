"""Prometheus metrics, on a registry owned by the app (never the global one)."""

from __future__ import annotations

import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

OTHER_TENANTS = "_other"


class Metrics:
    def __init__(self, *, tenant_labels: int = 0) -> None:
        """`tenant_labels`: how many tenants get a label value of their own on the tool-call counter
        (the first seen; the rest are `_other`); 0: no tenant label. A label per tenant of 10,000 is a
        series explosion in Prometheus: per-tenant detail belongs to the usage API."""
        self.registry = CollectorRegistry()
        self._tenant_labels = tenant_labels
        self._labelled: set[uuid.UUID] = set()
        self.tool_calls = Counter(
            "tenantry_tool_calls_total",
            "Tool calls by tool and outcome (ok or an error code); by tenant too when TENANTRY_METRICS_TENANT_LABELS"
            " is set. Upstream tools count as _upstream, unknown ones as _unknown.",
            ["tenant", "tool", "outcome"] if tenant_labels else ["tool", "outcome"],
            registry=self.registry,
        )
        self.tool_latency = Histogram(
            "tenantry_tool_call_seconds",
            "Time spent in the tool call pipeline.",
            ["tool"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "tenantry_auth_failures_total",
            "Refused credentials by reason.",
            ["reason"],
            registry=self.registry,
        )

        self.meter_unavailable = Counter(
            "tenantry_meter_unavailable_total",
            "Tool calls decided without Redis, by plan and the plan's policy (fail_open admits, fail_closed refuses).",
            ["plan", "policy"],
            registry=self.registry,
        )
        self.audit_failures = Counter(
            "tenantry_audit_failures_total",
            "Audit records neither Redis nor PostgreSQL took (the request was answered regardless).",
            registry=self.registry,
        )
        self.ledger_failures = Counter(
            "tenantry_ledger_failures_total",
            "Completed calls whose usage event neither Redis nor PostgreSQL took (their result was withheld).",
            registry=self.registry,
        )

        self.governance_refusals = Counter(
            "tenantry_governance_refusals_total",
            "Calls refused by a tenant's policy or a kill, by code (tool_forbidden, argument_forbidden,"
            " argument_invalid, killed). None is billed.",
            ["code"],
            registry=self.registry,
        )

        self.pii_detections = Counter(
            "tenantry_pii_detections_total",
            "Personal data found in tool output by the guardrail, by kind (never the data itself); by tenant too"
            " when TENANTRY_METRICS_TENANT_LABELS is set.",
            ["tenant", "kind"] if tenant_labels else ["kind"],
            registry=self.registry,
        )

        self.fast_path_calls = Counter(
            "tenantry_mcp_fast_path_calls_total",
            "tools/call requests answered by the stateless JSON fast path rather than the SDK's transport.",
            registry=self.registry,
        )

    def observe_tool_call(self, tenant_id: uuid.UUID, tool: str, outcome: str, started: float) -> None:
        """`tool` must come from a bounded set (a built-in's name, `_upstream`, `_unknown`)."""
        if self._tenant_labels:
            self.tool_calls.labels(self._tenant(tenant_id), tool, outcome).inc()
        else:
            self.tool_calls.labels(tool, outcome).inc()
        self.tool_latency.labels(tool).observe(time.perf_counter() - started)

    def observe_pii(self, tenant_id: uuid.UUID, kinds: list[str]) -> None:
        for kind in kinds:
            if self._tenant_labels:
                self.pii_detections.labels(self._tenant(tenant_id), kind).inc()
            else:
                self.pii_detections.labels(kind).inc()

    def _tenant(self, tenant_id: uuid.UUID) -> str:
        if tenant_id in self._labelled:
            return str(tenant_id)
        if len(self._labelled) < self._tenant_labels:
            self._labelled.add(tenant_id)
            return str(tenant_id)
        return OTHER_TENANTS

    def render(self) -> bytes:
        return generate_latest(self.registry)
