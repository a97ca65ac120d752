"""`tenantry billing report --once | reconcile | unpark`, run as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tenantry.db.engine import Database
from tenantry.settings import Settings
from tests.billing.conftest import make_tenant, new_customer, record
from tests.billing.fake_stripe import FakeStripe


def run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TENANTRY_DATABASE_URL": settings.database_url,
        "TENANTRY_REDIS_URL": settings.redis_url,
        "TENANTRY_ENVIRONMENT": "test",
        "TENANTRY_STRIPE_API_KEY": settings.stripe_api_key,
        "TENANTRY_STRIPE_API_BASE": settings.stripe_api_base,
        "TENANTRY_STRIPE_MAX_NETWORK_RETRIES": "0",
    }
    return subprocess.run(
        [sys.executable, "-m", "tenantry.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    "command", [["billing"], ["billing", "report"], ["billing", "reconcile"], ["billing", "unpark"]]
)
def test_every_billing_command_has_help(billing_settings: Settings, command: list[str]) -> None:
    result = run(billing_settings, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: tenantry billing" in result.stdout


async def test_report_once_then_reconcile_shows_no_difference(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe
) -> None:
    customer = new_customer()
    stripe_fake.customers.add(customer)
    tenant = await make_tenant(db, customer=customer)
    units = await record(db, tenant, 6, 2)

    before = json.loads(run(billing_settings, "billing", "reconcile", "--tenant", str(tenant), "--json").stdout)
    reported = run(billing_settings, "billing", "report", "--once", "--tenant", str(tenant), "--json")
    after = run(billing_settings, "billing", "reconcile", "--tenant", str(tenant), "--json")
    human = run(billing_settings, "billing", "reconcile", "--tenant", str(tenant))

    assert [(p["ledger_units"], p["difference"]) for p in before["periods"]] == [(units, units)]
    assert reported.returncode == 0, reported.stderr
    assert json.loads(reported.stdout)["units_sent"] == units
    assert stripe_fake.billed(customer) == units
    assert json.loads(after.stdout)["differences"] == 0
    assert "0 period(s) with a difference" in human.stdout


async def test_report_once_exits_nonzero_when_a_row_is_parked_and_unpark_retries_it(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe
) -> None:
    customer = new_customer()  # unknown to Stripe at first
    tenant = await make_tenant(db, customer=customer)
    units = await record(db, tenant, 3)
    parked = run(billing_settings, "billing", "report", "--once", "--tenant", str(tenant), "--json")
    stripe_fake.customers.add(customer)
    unparked = run(billing_settings, "billing", "unpark", str(tenant), "--json")
    retried = run(billing_settings, "billing", "report", "--once", "--tenant", str(tenant), "--json")
    assert (parked.returncode, json.loads(parked.stdout)["parked"]) == (1, 1)
    assert json.loads(unparked.stdout) == {"unparked": 1}
    assert retried.returncode == 0
    assert stripe_fake.billed(customer) == units


def test_report_refuses_without_a_stripe_key(settings: Settings) -> None:
    result = run(settings, "billing", "report", "--once")
    assert result.returncode == 2
    assert "billing_disabled" in result.stderr
