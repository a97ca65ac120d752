"""Tenant reports: what a tenant's calls, errors, refusals and latency add up to, from roll-ups that always
equal a raw recount (replays included), refused when asked badly, and never showing another tenant's data."""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from tenantry.audit.records import AuditRecord
from tenantry.client import connect
from tenantry.db.engine import Database
from tenantry.metering.drain import LedgerDrainer
from tenantry.metering.ledger import Ledger, UsageEvent, insert_documents, insert_events
from tenantry.metering.reports import LATENCY_BOUNDS_MS, build_report, report_range
from tenantry.plans import Limits
from tenantry.settings import Settings
from tests import conftest
from tests.conftest import Admin, TenantHandle
from tests.metering.test_gateway_metering import ADMIN_HEADERS, limited_tenant
from tests.test_cli import run

START = datetime(2026, 11, 20, tzinfo=UTC)
TOOLS = [
    "data_get",
    "data_put",
    "fx__search",
    "resource:tenantry://data/a",
    "resource:fx+test://static-text",
    "prompt:fx__greet",
]
OUTCOMES = ["ok"] * 6 + ["key_not_found", "upstream_unavailable", "cancelled"]


async def report_of(http: httpx.AsyncClient, tenant: TenantHandle, **params: str) -> dict[str, Any]:
    r = await http.get(f"/api/tenants/{tenant.id}/report", headers=ADMIN_HEADERS, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_report_after_real_calls_shows_calls_errors_refusals_latency_and_quota(
    gateway_url: str, admin: Admin, http: httpx.AsyncClient, settings: Settings
) -> None:
    tenant = await limited_tenant(admin, calls_per_window=6)
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        puts = [await client.call_tool("data_put", {"key": f"k{i}", "value": i}) for i in range(3)]
        await client.read_resource("tenantry://data/k1")  # a read: metered as `resource:<uri>`, on its own quota
        missing = await client.call_tool("data_get", {"key": "absent"})
        gets = 0
        while not (got := await client.call_tool("data_get", {"key": "k0"})).is_error:
            gets += 1
            assert gets < 10
    assert not any(p.is_error for p in puts)
    assert missing.structured_content["error"] == "key_not_found"
    assert got.structured_content["error"] == "quota_exceeded"

    async def drained() -> dict[str, Any] | None:
        report = await report_of(http, tenant)
        done = report["totals"]["calls"] == 5 + gets and report["totals"]["refusals"]
        return report if done else None

    report = await conftest.eventually(drained, within=10, what="the calls in the report")
    put, get = report["tools"]["data_put"], report["tools"]["data_get"]
    assert (put["calls"], put["units"], put["ok"], put["errors"], put["refusals"]) == (3, 3, 3, {}, {})
    assert get["calls"] == 1 + gets
    assert get["errors"] == {"key_not_found": 1}
    assert get["refusals"] == {"quota_exceeded": 1}
    for item in (put, get):
        latency = item["latency_ms"]
        assert latency["count"] == item["calls"]
        assert 0 <= latency["min"] <= latency["avg"] <= latency["max"]
        assert latency["min"] <= latency["p95"] <= latency["max"]
        assert latency["p95"] in (*LATENCY_BOUNDS_MS, latency["max"])
    assert report["totals"]["errors"] == {"key_not_found": 1}
    read = report["resources"]["tenantry://data/k1"]
    assert (read["calls"], read["ok"], read["errors"], read["latency_ms"]["count"]) == (1, 1, {}, 1)
    assert report["prompts"] == {}
    calls_quota = report["quotas"]["calls_per_window"]
    assert calls_quota["limit"] == 6
    assert 0 < calls_quota["used"] <= 6  # a sliding window: less only if it rolled over meanwhile
    assert report["quotas"]["storage_keys"]["used"] == 3  # every kind, as the usage API shows them
    # The series plots the same calls, one point per UTC day.
    assert sum(p["calls"] for p in report["series"]) == report["totals"]["calls"]
    assert sum(p["refusals"] for p in report["series"]) == 1
    assert all(p["start"].endswith("T00:00:00+00:00") for p in report["series"])
    hourly = await report_of(http, tenant, bucket="hour")
    assert len(hourly["series"]) in (7 * 24, 7 * 24 + 1)  # the range is widened to whole hours
    assert hourly["tools"] == {
        name: {**item, "series": hourly["tools"][name]["series"]} for name, item in report["tools"].items()
    }
    assert sum(p["calls"] for p in hourly["tools"]["data_put"]["series"]) == 3

    # The tenant sees the same through its own tool (under RLS), once its plan lets it call again.
    r = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": {"calls_per_window": 100}})
    assert r.status_code == 200, r.text
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        own = await client.call_tool("usage_summary", {"report": True})
        bad = await client.call_tool("usage_summary", {"report": True, "bucket": "week"})
    assert not own.is_error, own.content
    assert own.structured_content["tools"] == report["tools"]
    assert own.structured_content["quotas"]["calls_per_window"]["limit"] == 100
    assert own.structured_content["quotas"]["max_tools"]["used"] is not None  # the gateway counts its tools
    assert bad.is_error
    assert bad.structured_content["error"] == "invalid_arguments"

    # And the operator through the CLI.
    cli = await asyncio.to_thread(run, settings, "report", "--tenant", tenant.id, "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["tools"]["data_put"] == put
    human = await asyncio.to_thread(run, settings, "report", "--tenant", tenant.id, "--bucket", "hour")
    assert human.returncode == 0, human.stderr
    assert "data_put" in human.stdout


async def test_bad_report_requests_are_refused_with_a_clear_error(
    admin: Admin, http: httpx.AsyncClient, settings: Settings
) -> None:
    tenant = await admin.create_tenant()
    path = f"/api/tenants/{tenant.id}/report"
    cases = [
        ({"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"}, 400, "invalid_range"),
        ({"since": "2026-11-01T00:00:00Z", "until": "2026-11-01T00:00:00Z"}, 400, "invalid_range"),
        ({"since": "2024-01-01T00:00:00Z", "until": "2025-06-01T00:00:00Z"}, 400, "invalid_range"),
        ({"since": "2026-09-01T00:00:00Z", "until": "2026-11-01T00:00:00Z", "bucket": "hour"}, 400, "invalid_range"),
        ({"bucket": "week"}, 400, "invalid_request"),
        ({"since": "yesterday"}, 400, "invalid_request"),
    ]
    for params, status, code in cases:
        r = await http.get(path, headers=ADMIN_HEADERS, params=params)
        assert (r.status_code, r.json()["error"]) == (status, code), (params, r.text)
        assert r.json()["detail"]
    unknown = await http.get(f"/api/tenants/{uuid.uuid4()}/report", headers=ADMIN_HEADERS)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "tenant_not_found")
    malformed = await http.get("/api/tenants/not-a-tenant/report", headers=ADMIN_HEADERS)
    assert malformed.status_code in (400, 404)
    assert (await http.get(path)).status_code == 401
    cli = await asyncio.to_thread(
        run, settings, "report", "--tenant", tenant.id, "--since", "2026-11-02", "--until", "2026-11-01", "--json"
    )
    assert cli.returncode == 2
    assert json.loads(cli.stderr)["error"] == "invalid_range"


async def test_another_tenants_report_never_includes_this_tenants_calls(
    gateway_url: str, tenant_a: TenantHandle, tenant_b: TenantHandle, http: httpx.AsyncClient, db: Database
) -> None:
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        for i in range(3):
            assert not (await client.call_tool("data_put", {"key": f"a{i}", "value": i})).is_error

    async def a_drained() -> bool:
        return bool((await report_of(http, tenant_a))["totals"]["calls"] == 3)

    await conftest.eventually(a_drained, within=10, what="tenant A's calls")
    assert (await report_of(http, tenant_b))["totals"]["calls"] == 0
    async with connect(f"{gateway_url}/mcp", tenant_b.headers) as client:
        own = await client.call_tool("usage_summary", {"report": True})
    assert own.structured_content["tools"] == {}
    # Under B's binding, even a report asked for A's id finds nothing: RLS, not the WHERE clause, decides.
    a, b = uuid.UUID(tenant_a.id), uuid.UUID(tenant_b.id)
    since, until = report_range(None, None)
    async with db.tenant(b) as conn:
        stolen = await build_report(conn, None, a, Limits(), since, until)
        # B's own usage_summary call may be drained by now: only other tenants' rows must be invisible.
        visible = (
            await conn.execute(text("SELECT count(*) FROM usage_rollups WHERE tenant_id <> :b"), {"b": b})
        ).scalar_one()
    assert stolen["totals"]["calls"] == 0
    assert stolen["tools"] == {}
    assert visible == 0


def _events(rng: random.Random, tenant: str, n: int) -> list[UsageEvent]:
    span_ms = int(timedelta(days=3).total_seconds() * 1000)
    start_ms = int(START.timestamp() * 1000)
    events = []
    for _ in range(n):
        # Multiples of 1/8 ms add up exactly in any order, so sums compare exactly.
        latency = rng.choice([0.0, 0.5, 1.0, 2.5, 60000.0, rng.randrange(0, 80_000 * 8) / 8])
        events.append(
            UsageEvent(
                uuid.uuid4(),
                uuid.UUID(tenant),
                rng.choice(TOOLS),
                rng.randrange(0, 4),
                rng.choice(OUTCOMES),
                latency,
                start_ms + rng.randrange(span_ms),
            )
        )
    return events


def _refusals(rng: random.Random, tenant: str, n: int) -> list[str]:
    shapes = [
        ("tools/call", "data_get", "quota_exceeded"),
        ("tools/call", "fx__search", "forbidden"),
        ("resources/read", "fx+test://static-text", "read_quota_exceeded"),
        ("prompts/get", "prompt:fx__greet", "rate_limited"),
        ("tools/list", None, "rate_limited"),
    ]
    start_us = int(START.timestamp() * 1_000_000)
    docs = []
    for _ in range(n):
        method, tool, reason = rng.choice(shapes)
        at_us = start_us + rng.randrange(3 * 86_400 * 1_000_000)
        record = AuditRecord(
            uuid.UUID(tenant), "direct", method, "refused", reason, reason=reason, tool=tool, at_us=at_us
        )
        docs.append(record.document())
    return docs


def _p95(latencies: list[float]) -> float:
    """The documented rule, from the raw values: the upper bound of the bucket of the 95th, capped at the max."""
    ordered = sorted(latencies)
    value = ordered[math.ceil(0.95 * len(ordered)) - 1]
    slot = bisect.bisect_right(LATENCY_BOUNDS_MS, value)
    return min(float(LATENCY_BOUNDS_MS[slot]), ordered[-1]) if slot < len(LATENCY_BOUNDS_MS) else ordered[-1]


def assert_matches_events(report: dict[str, Any], events: list[UsageEvent]) -> None:
    """Each item of `report` says what its events say, counted here in Python, independently of the SQL."""
    by_item: dict[tuple[str, str], list[UsageEvent]] = {}
    for e in events:
        kind, _, name = e.tool.partition(":") if e.tool.startswith(("resource:", "prompt:")) else ("tool", "", e.tool)
        by_item.setdefault((kind, name), []).append(e)
    assert report["totals"]["calls"] == len(events)
    assert report["totals"]["units"] == sum(e.units for e in events)
    assert sum(p["calls"] for p in report["series"]) == len(events)
    for (kind, name), mine in by_item.items():
        item = report[f"{kind}s"][name]
        latencies = [e.latency_ms for e in mine]
        errors = Counter(e.outcome for e in mine if e.outcome != "ok")
        assert (item["calls"], item["units"], item["errors"]) == (len(mine), sum(e.units for e in mine), errors)
        assert item["latency_ms"]["min"] == min(latencies)
        assert item["latency_ms"]["max"] == max(latencies)
        assert item["latency_ms"]["avg"] == round(sum(latencies) / len(latencies), 3)
        assert item["latency_ms"]["p95"] == _p95(latencies)
        assert sum(p["calls"] for p in item["series"]) == len(mine)
        assert sum(p["errors"] for p in item["series"]) == errors.total()


async def test_roll_ups_equal_a_raw_recount_after_many_events_and_replays(
    admin: Admin, db: Database, redis: Redis, stream: str
) -> None:
    rng = random.Random(16)
    a, b = await admin.create_tenant(), await admin.create_tenant()
    events = _events(rng, a.id, 2000) + _events(rng, b.id, 300)
    rng.shuffle(events)
    # A drain stored the first 600 and crashed before acknowledging them: they are drained again.
    assert await insert_events(db, events[:600]) == 600
    ledger = Ledger(redis, db, stream=stream)
    for e in events:
        await ledger.record(e)
    drainer = LedgerDrainer(redis, db, stream=stream, batch_size=250)
    # Two replicas racing over overlapping replays while the drain runs: each event still counts once.
    replays = [insert_events(db, events[i : i + 700]) for i in range(0, 2300, 350)]
    await asyncio.gather(drainer.flush(), *replays)
    refusals = _refusals(rng, a.id, 400)
    assert await insert_documents(db, {}, {uuid.UUID(a.id): refusals}) == 0
    await insert_documents(db, {}, {uuid.UUID(a.id): refusals[:150]})  # a replayed audit entry
    async with db.system() as conn:
        stored = (
            await conn.execute(
                text("SELECT count(*) FROM usage_events WHERE tenant_id IN (:a, :b)"),
                {"a": uuid.UUID(a.id), "b": uuid.UUID(b.id)},
            )
        ).scalar_one()
    assert stored == 2300

    since, until = START, START + timedelta(days=3)
    for tenant in (a, b):
        for bucket in ("hour", "day"):
            async with db.tenant(uuid.UUID(tenant.id)) as conn:
                rolled = await build_report(conn, None, uuid.UUID(tenant.id), Limits(), since, until, bucket)
                raw = await build_report(conn, None, uuid.UUID(tenant.id), Limits(), since, until, bucket, recount=True)
            assert rolled == raw
            assert_matches_events(rolled, [e for e in events if str(e.tenant_id) == tenant.id])
    async with db.tenant(uuid.UUID(a.id)) as conn:
        a_report = await build_report(conn, None, uuid.UUID(a.id), Limits(), since, until)
    assert sum(a_report["totals"]["refusals"].values()) == 400
    assert set(a_report["resources"]) == {"tenantry://data/a", "fx+test://static-text"}
    assert a_report["resources"]["fx+test://static-text"]["refusals"].keys() == {"read_quota_exceeded"}
    assert a_report["prompts"]["fx__greet"]["refusals"].keys() == {"rate_limited"}
    assert a_report["requests"]["tools/list"]["calls"] == 0
    assert a_report["tools"]["fx__search"]["refusals"].keys() == {"forbidden"}


async def test_the_latency_histogram_bounds_are_those_the_roll_ups_were_counted_with(db: Database) -> None:
    async with db.system() as conn:
        bounds = (await conn.execute(text("SELECT tenantry_latency_bounds()"))).scalar_one()
    assert tuple(bounds) == tuple(float(b) for b in LATENCY_BOUNDS_MS)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1, 2, 3], [10, 20, 30]),
        ([1, 2], [10, 20, 30, 40]),  # a roll-up row counted with fewer buckets than the batch
        ([5, 0, 7], []),
        (None, [1, 2]),
        ([3, None, 4], [None, 6, None]),
        (None, None),
        ([], []),
        (list(range(17)), [2**40] * 17),
    ],
)
async def test_adding_latency_histograms_sums_them_bucket_by_bucket(
    db: Database, a: list[int | None] | None, b: list[int | None] | None
) -> None:
    """Migration 0020 rewrote the roll-ups' histogram sum (PL/pgSQL keeps its plan): it must answer exactly
    what 0012's set-based SQL answered for every input, which is evaluated here next to it."""
    async with db.system() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT tenantry_histogram_add(CAST(:a AS bigint[]), CAST(:b AS bigint[])) AS now,"
                    " (SELECT array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY n)"
                    "  FROM unnest(CAST(:a AS bigint[]), CAST(:b AS bigint[])) WITH ORDINALITY AS h(x, y, n)) AS before"
                ),
                {"a": a, "b": b},
            )
        ).one()
    assert row.now == row.before
    if a and b:
        assert row.now[0] == (a[0] or 0) + (b[0] or 0)
