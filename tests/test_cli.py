"""The `tenantry` command, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tenantry.settings import Settings
from tests.conftest import TenantHandle

COMMANDS = [
    [],
    ["serve"],
    ["dev"],
    ["migrate"],
    ["tenant"],
    ["tenant", "create"],
    ["tenant", "list"],
    ["tenant", "set"],
    ["key"],
    ["key", "create"],
    ["key", "revoke"],
    ["call"],
]


def run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TENANTRY_DATABASE_URL": settings.database_url,
        "TENANTRY_REDIS_URL": settings.redis_url,
        "TENANTRY_ENVIRONMENT": "test",
    }
    return subprocess.run(
        [sys.executable, "-m", "tenantry.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "tenantry")
def test_every_command_has_help(settings: Settings, command: list[str]) -> None:
    result = run(settings, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: tenantry" in result.stdout


def test_tenant_and_key_commands_speak_json(settings: Settings) -> None:
    created = run(settings, "tenant", "create", "--name", "cli-co", "--plan", "starter", "--with-key", "--json")
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    tenant_id = body["tenant"]["id"]
    assert body["tenant"]["plan"] == "starter"
    assert body["key"]["secret"].startswith("tnt_")

    key = json.loads(run(settings, "key", "create", "--tenant", tenant_id, "--name", "ci", "--json").stdout)["key"]
    listed = json.loads(run(settings, "tenant", "list", "--json").stdout)["tenants"]
    assert tenant_id in {t["id"] for t in listed}

    suspended = json.loads(run(settings, "tenant", "set", tenant_id, "--status", "suspended", "--json").stdout)
    assert suspended["tenant"]["status"] == "suspended"
    revoked = json.loads(run(settings, "key", "revoke", "--tenant", tenant_id, key["id"], "--json").stdout)
    assert revoked["key"]["revoked_at"] is not None


@pytest.mark.parametrize(
    "args",
    [
        ["tenant", "create", "--name", "x", "--plan", "gold"],
        ["key", "create", "--tenant", "not-a-uuid"],
        ["tenant", "set", "00000000-0000-0000-0000-000000000000", "--status", "active"],
    ],
)
def test_bad_input_exits_2_with_a_clear_error_and_changes_nothing(settings: Settings, args: list[str]) -> None:
    before = run(settings, "tenant", "list", "--json").stdout
    result = run(settings, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert run(settings, "tenant", "list", "--json").stdout == before


def test_call_lists_and_calls_tools_through_the_gateway(settings: Settings, gateway_url: str) -> None:
    made = json.loads(run(settings, "tenant", "create", "--name", "caller", "--with-key", "--json").stdout)
    tenant_a = TenantHandle(id=made["tenant"]["id"], key=made["key"]["secret"], key_id=made["key"]["id"])
    common = ["--url", f"{gateway_url}/mcp", "--tenant", tenant_a.id, "--key", tenant_a.key]
    listed = run(settings, "call", *common, "--json")
    assert listed.returncode == 0, listed.stderr
    assert "data_put" in {t["name"] for t in json.loads(listed.stdout)["tools"]}

    put = run(settings, "call", *common, "data_put", "--args", '{"key": "cli", "value": [1, 2]}')
    assert put.returncode == 0, put.stderr
    got = run(settings, "call", *common, "data_get", "--args", '{"key": "cli"}', "--json")
    assert json.loads(got.stdout)["structuredContent"]["value"] == [1, 2]

    missing = run(settings, "call", *common, "data_get", "--args", '{"key": "nope"}')
    assert missing.returncode == 1
    assert missing.stdout.startswith("key_not_found:")

    sse = run(
        settings,
        "call",
        "--url",
        f"{gateway_url}/sse",
        "--transport",
        "sse",
        "--tenant",
        tenant_a.id,
        "--key",
        tenant_a.key,
        "health_check",
        "--json",
    )
    assert json.loads(sse.stdout)["structuredContent"]["tenant_id"] == tenant_a.id

    bad = run(settings, "call", *common, "data_get", "--args", "[1]")
    assert bad.returncode == 2
    assert "JSON object" in bad.stderr
