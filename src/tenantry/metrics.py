"""Prometheus metrics, on a registry owned by the app (never the global one)."""

from __future__ import annotations

import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tool_calls = Counter(
            "tenantry_tool_calls_total",
            "Tool calls by tenant, tool and outcome (ok or an error code).",
            ["tenant", "tool", "outcome"],
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
        self.ledger_failures = Counter(
            "tenantry_ledger_failures_total",
            "Completed calls whose usage event neither Redis nor PostgreSQL took (their result was withheld).",
            registry=self.registry,
        )

        self.fast_path_calls = Counter(
            "tenantry_mcp_fast_path_calls_total",
            "tools/call requests answered by the stateless JSON fast path rather than the SDK's transport.",
            registry=self.registry,
        )

    def observe_tool_call(self, tenant_id: uuid.UUID, tool: str, outcome: str, started: float) -> None:
        self.tool_calls.labels(str(tenant_id), tool, outcome).inc()
        self.tool_latency.labels(tool).observe(time.perf_counter() - started)

    def render(self) -> bytes:
        return generate_latest(self.registry)
