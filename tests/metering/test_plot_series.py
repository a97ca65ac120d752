"""The console's hourly plot query (`hourly_series`) is a second path over the roll-ups: what it plots of
each item, hour by hour, equals the full report's series, for the most called items, and for no one else."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

from tenantry.db.engine import Database
from tenantry.metering.ledger import insert_events
from tenantry.metering.reports import build_report, hourly_series, hours_of
from tenantry.plans import Limits
from tests.conftest import Admin
from tests.metering.test_reports import START, _events


async def test_the_plot_series_equals_the_full_reports_hourly_series_of_the_most_called_items(
    admin: Admin, db: Database
) -> None:
    rng = random.Random(19)
    a, b = await admin.create_tenant(), await admin.create_tenant()
    events = _events(rng, a.id, 1500) + _events(rng, b.id, 400)
    assert await insert_events(db, events) == 1900
    tid = uuid.UUID(a.id)
    since, until = START, START + timedelta(days=3)
    async with db.tenant(tid) as conn:
        report = await build_report(conn, None, tid, Limits(), since, until, "hour")
    async with db.system() as conn:  # as the console reads it: on the owner's pool, naming the tenant
        plotted = await hourly_series(conn, tid, since, until, most=100)
        top_two = await hourly_series(conn, tid, since, until, most=2)
    hours = hours_of(since, until)
    assert hours == [p["start"] for p in report["series"]]
    expected = {}
    for section in ("tools", "resources", "prompts"):
        for name, item in report[section].items():
            by_start = {p["start"]: p for p in item["series"]}
            expected[f"{section}:{name}"] = {
                measure: [by_start[h][measure] if h in by_start else 0 for h in hours] for measure in ("calls", "units")
            }
    assert plotted == expected
    assert len(expected) == 6  # every item of the events, and none of tenant b's alone
    ranked = sorted(expected, key=lambda key: -sum(expected[key]["calls"]))
    assert set(top_two) == set(ranked[:2])
    assert all(top_two[key] == expected[key] for key in top_two)
