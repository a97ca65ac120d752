"""`tenantry policy` and `tenantry kill` against the real database, and a running gateway obeying them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tenantry.settings import Settings
from tests.conftest import Admin, TenantHandle, eventually
from tests.governance.test_governance_gateway import READ_ONLY, bridge
from tests.test_cli import run


async def test_an_admin_governs_from_the_command_line(
    settings: Settings, admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    made = run(
        settings,
        "key",
        "create",
        "--tenant",
        tenant_a.id,
        "--name",
        "bot",
        "--subject",
        "bot-1",
        "--role",
        "reader",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    assert (key["subject"], key["roles"]) == ("bot-1", ["reader"])
    reader = {"Tenant-ID": tenant_a.id, "Authorization": f"Bearer {key['secret']}"}
    assert run(settings, "key", "create", "--tenant", tenant_a.id, "--role", "no spaces").returncode == 2

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rules": [{"effect": "permit", "tools": ["x"]}]}))
    refused = run(settings, "policy", "set", "--tenant", tenant_a.id, "--file", str(bad))
    assert refused.returncode == 2
    assert "rules.0.effect" in refused.stderr
    assert run(settings, "policy", "get", "--tenant", tenant_a.id).returncode == 2  # still none

    good = tmp_path / "policy.json"
    good.write_text(json.dumps(READ_ONLY))
    stored = run(settings, "policy", "set", "--tenant", tenant_a.id, "--file", str(good), "--json")
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["version"] == 1

    async def hidden() -> bool:  # the gateway hears of a change made elsewhere
        return (await bridge(http, tenant_a, reader, "data_put", {"key": "notes/a", "value": 1})).status_code == 404

    await eventually(hidden, within=2.0, what="the CLI's policy at the gateway")
    check = ["policy", "check", "--tenant", tenant_a.id, "--subject", "bot-1", "--role", "reader"]
    allowed = run(settings, *check, "--tool", "data_get", "--args", '{"key": "k"}', "--json")
    assert (allowed.returncode, json.loads(allowed.stdout)["rule"]) == (0, "rules[0]")
    denied = run(settings, *check, "--tool", "data_put")
    assert denied.returncode == 1
    assert "refused (tool_forbidden)" in denied.stdout

    killed = run(
        settings, "kill", "create", "--scope", "subject", "--tenant", tenant_a.id, "--target", "bot-1", "--json"
    )
    assert killed.returncode == 0, killed.stderr
    kill_id = json.loads(killed.stdout)["id"]

    async def stopped() -> bool:
        r = await bridge(http, tenant_a, reader, "data_list", {})
        return r.status_code == 403 and r.json()["error"] == "killed"

    await eventually(stopped, within=2.0, what="the CLI's kill at the gateway")
    listed = run(settings, "kill", "list", "--tenant", tenant_a.id)
    assert kill_id in listed.stdout
    assert (
        run(settings, "kill", "create", "--scope", "key", "--tenant", tenant_a.id, "--target", "nope").returncode == 2
    )
    assert run(settings, "kill", "lift", kill_id).returncode == 0
    assert run(settings, "kill", "lift", kill_id).returncode == 2  # already lifted

    async def running() -> bool:
        return (await bridge(http, tenant_a, reader, "data_list", {})).status_code == 200

    await eventually(running, within=2.0, what="the lift at the gateway")
    assert run(settings, "policy", "delete", "--tenant", tenant_a.id).returncode == 0
