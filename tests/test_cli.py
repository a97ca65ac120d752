"""The `tenantry` command, run as a user runs it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from tenantry.cli import build_parser
from tenantry.settings import Settings
from tests.conftest import TenantHandle, free_port

COMMANDS = [
    [],
    ["serve"],
    ["dev"],
    ["migrate"],
    ["tenant"],
    ["tenant", "create"],
    ["tenant", "list"],
    ["tenant", "set"],
    ["tenant", "tier"],
    ["tenant", "move"],
    ["tenant", "cleanup"],
    ["key"],
    ["key", "create"],
    ["key", "list"],
    ["key", "revoke"],
    ["key", "set"],
    ["call"],
    ["probe"],
    ["policy"],
    ["policy", "get"],
    ["policy", "set"],
    ["policy", "delete"],
    ["policy", "check"],
    ["kill"],
    ["kill", "create"],
    ["kill", "list"],
    ["kill", "lift"],
    ["report"],
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
    limited = json.loads(
        run(settings, "tenant", "set", tenant_id, "--limits", '{"calls_per_window": 7}', "--json").stdout
    )
    assert limited["tenant"]["limits"] == {"calls_per_window": 7}
    revoked = json.loads(run(settings, "key", "revoke", "--tenant", tenant_id, key["id"], "--json").stdout)
    assert revoked["key"]["revoked_at"] is not None


@pytest.mark.parametrize(
    "args",
    [
        ["tenant", "create", "--name", "x", "--plan", "gold"],
        ["key", "create", "--tenant", "not-a-uuid"],
        ["tenant", "set", "00000000-0000-0000-0000-000000000000", "--status", "active"],
        ["tenant", "set", "00000000-0000-0000-0000-000000000000", "--limits", "{not json"],
        ["tenant", "set", "00000000-0000-0000-0000-000000000000", "--limits", '{"calls_per_window": -5}'],
        ["report", "--tenant", "00000000-0000-0000-0000-000000000000"],
        ["report", "--tenant", "not-a-uuid"],
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


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _leaf_parsers(child, (*path, name))
    return found or [path]


def _parser_at(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def test_every_option_of_every_command_says_what_it_is_for_and_every_command_speaks_json() -> None:
    leaves = _leaf_parsers(build_parser())
    assert ("key", "list") in leaves
    assert ("probe",) in leaves
    for path in leaves:
        parser = _parser_at(path)
        options = {o for a in parser._actions for o in a.option_strings}
        assert "--json" in options, path
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"tenantry {' '.join(path)}: {action.option_strings or action.dest} has no help"


@pytest.fixture
def caller(settings: Settings) -> TenantHandle:
    made = json.loads(run(settings, "tenant", "create", "--name", "errs", "--with-key", "--json").stdout)
    return TenantHandle(id=made["tenant"]["id"], key=made["key"]["secret"], key_id=made["key"]["id"])


@pytest.mark.parametrize(
    ("case", "exit_code", "first_words"),
    [
        ("wrong key", 3, "error: 401 invalid_credentials: unknown credential"),
        ("other tenant", 3, "error: 403 tenant_mismatch: "),
        ("unknown tool", 2, "error: -32602 unknown tool: no_such_tool"),
        ("no gateway", 4, "error: the gateway did not answer: "),
    ],
)
def test_call_failures_are_one_line_with_an_exit_code_per_kind(
    settings: Settings, gateway_url: str, caller: TenantHandle, case: str, exit_code: int, first_words: str
) -> None:
    url, key, tenant, tool = f"{gateway_url}/mcp", caller.key, caller.id, "health_check"
    if case == "wrong key":
        key = "tnt_" + "x" * 43
    elif case == "other tenant":
        tenant = str(uuid.uuid4())
    elif case == "unknown tool":
        tool = "no_such_tool"
    else:
        url = f"http://127.0.0.1:{free_port()}/mcp"
    result = run(settings, "call", "--url", url, "--tenant", tenant, "--key", key, tool)
    assert result.returncode == exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(first_words), lines[0]
    as_json = run(settings, "call", "--url", url, "--tenant", tenant, "--key", key, tool, "--json")
    assert as_json.returncode == exit_code
    assert json.loads(as_json.stderr)["error"] in ("auth", "usage", "unavailable")


def test_probe_reports_timed_steps_and_exits_by_health(
    settings: Settings, gateway_url: str, caller: TenantHandle
) -> None:
    ok = run(settings, "probe", f"{gateway_url}/mcp", "--key", caller.key, "--tool", "health_check", "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["status"] == "ok"
    assert [s["step"] for s in report["steps"]] == ["initialize", "tools/list", "tools/call"]
    assert all(s["ok"] and s["ms"] >= 0 for s in report["steps"])
    degraded = run(
        settings,
        "probe",
        f"{gateway_url}/mcp",
        "--key",
        caller.key,
        "--tool",
        "data_get",
        "--args",
        '{"key": "absent"}',
    )
    assert degraded.returncode == 1, degraded.stdout + degraded.stderr
    assert degraded.stdout.strip().endswith("status: degraded")
    refused = run(settings, "probe", f"{gateway_url}/mcp", "--key", "tnt_" + "y" * 43, "--json")
    assert refused.returncode == 2
    assert json.loads(refused.stdout)["steps"][0]["detail"].startswith("401 invalid_credentials")
    down = run(settings, "probe", f"http://127.0.0.1:{free_port()}/mcp", "--key", caller.key)
    assert down.returncode == 2
    assert down.stdout.strip().endswith("status: down")


def test_key_list_shows_prefixes_and_revocations_never_secrets(settings: Settings, caller: TenantHandle) -> None:
    second = json.loads(run(settings, "key", "create", "--tenant", caller.id, "--name", "second", "--json").stdout)[
        "key"
    ]
    run(settings, "key", "revoke", "--tenant", caller.id, second["id"])
    listed = run(settings, "key", "list", "--tenant", caller.id, "--json")
    assert listed.returncode == 0, listed.stderr
    keys = {k["id"]: k for k in json.loads(listed.stdout)["keys"]}
    assert keys[caller.key_id]["revoked_at"] is None
    assert keys[second["id"]]["revoked_at"] is not None
    assert caller.key not in listed.stdout
    assert second["secret"] not in listed.stdout
    assert caller.key[:10] == keys[caller.key_id]["prefix"]
    human = run(settings, "key", "list", "--tenant", caller.id).stdout
    assert "revoked" in human
    assert "active" in human
    assert run(settings, "key", "list", "--tenant", str(uuid.uuid4())).returncode == 2


def test_each_dev_run_reuses_the_demo_key_it_kept_and_never_piles_up_keys(settings: Settings) -> None:
    from tenantry.cli import _demo_tenant

    async def keys_of(tenant_id: uuid.UUID) -> list[Any]:
        from tenantry.auth.api_keys import list_keys
        from tenantry.db.engine import Database

        db = Database(settings)
        try:
            async with db.system() as conn:
                return [k for k in await list_keys(conn, tenant_id) if k.revoked_at is None and k.name == "dev"]
        finally:
            await db.dispose()

    tenant, key_id, secret, reused = asyncio.run(_demo_tenant(settings, None))
    assert not reused
    again = asyncio.run(_demo_tenant(settings, (tenant.id, key_id, secret)))
    assert again == (tenant, key_id, secret, True)
    lost = asyncio.run(_demo_tenant(settings, None))  # the file was deleted: a new key, the old one revoked
    assert not lost[3]
    assert lost[1] != key_id
    assert [k.id for k in asyncio.run(keys_of(tenant.id))] == [lost[1]]
    stale = asyncio.run(_demo_tenant(settings, (tenant.id, key_id, secret)))  # a revoked key is not reused
    assert not stale[3]
