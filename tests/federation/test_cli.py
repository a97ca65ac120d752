"""`tenantry upstream ...`, run as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from tenantry.db.engine import Database
from tenantry.db.models import upstreams
from tenantry.federation import registry
from tenantry.secrets import SecretBox
from tenantry.settings import DEV_SECRET_KEY, Settings
from tests.conftest import Admin, TenantHandle

NEW_KEY = "bmV3LXNlY3JldC1rZXktZm9yLXJvdGF0aW9uLTAwMDA="


def run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TENANTRY_DATABASE_URL": settings.database_url,
        "TENANTRY_REDIS_URL": settings.redis_url,
        "TENANTRY_ENVIRONMENT": "test",
        "TENANTRY_UPSTREAM_ALLOW_LOOPBACK": "true",
    }
    return subprocess.run(
        [sys.executable, "-m", "tenantry.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    "command",
    [["upstream"], ["upstream", "add"], ["upstream", "list"], ["upstream", "remove"], ["upstream", "rotate-secrets"]],
    ids=" ".join,
)
def test_every_upstream_command_has_help(settings: Settings, command: list[str]) -> None:
    result = run(settings, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: tenantry" in result.stdout


async def test_add_list_remove_speak_json_and_never_print_the_secret(
    settings: Settings, admin: Admin, tenant_a: TenantHandle
) -> None:
    add = ["upstream", "add", "--tenant", tenant_a.id, "--name", "cli-up", "--url", "http://127.0.0.1:9/mcp"]
    created = run(settings, *add, "--header", "Authorization: Bearer cli-secret", "--costs", '{"x": 2}', "--json")
    assert created.returncode == 0, created.stderr
    up = json.loads(created.stdout)["upstream"]
    assert up["header_names"] == ["Authorization"]
    assert up["costs"] == {"x": 2}
    listed = run(settings, "upstream", "list", "--tenant", tenant_a.id, "--json")
    assert [u["id"] for u in json.loads(listed.stdout)["upstreams"]] == [up["id"]]
    rotated = run(settings, "upstream", "rotate-secrets", "--json")
    assert json.loads(rotated.stdout)["rotated"] >= 1
    for out in (created.stdout, listed.stdout, rotated.stdout, created.stderr):
        assert "cli-secret" not in out
    removed = run(settings, "upstream", "remove", "--tenant", tenant_a.id, up["id"], "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(run(settings, "upstream", "list", "--tenant", tenant_a.id, "--json").stdout)["upstreams"] == []


@pytest.mark.parametrize(
    "extra",
    [
        ["--name", "Bad_Name", "--url", "http://127.0.0.1:9/mcp"],
        ["--name", "ok", "--url", "http://169.254.169.254/"],
        ["--name", "ok", "--url", "http://127.0.0.1:9/mcp", "--transport", "carrier-pigeon"],
        ["--name", "ok", "--url", "http://127.0.0.1:9/mcp", "--header", "no-colon"],
    ],
)
async def test_bad_upstream_input_exits_2_and_writes_nothing(
    settings: Settings, tenant_a: TenantHandle, extra: list[str]
) -> None:
    result = run(settings, "upstream", "add", "--tenant", tenant_a.id, *extra)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert json.loads(run(settings, "upstream", "list", "--tenant", tenant_a.id, "--json").stdout)["upstreams"] == []


async def test_rotation_re_encrypts_stored_credentials_under_the_newest_key(
    db: Database, tenant_a: TenantHandle
) -> None:
    import uuid

    tid = uuid.UUID(tenant_a.id)
    async with db.tenant(tid) as conn:
        await registry.create_upstream(
            conn,
            SecretBox([DEV_SECRET_KEY]),
            tid,
            name="rot",
            url="http://127.0.0.1:9/",
            transport="sse",
            headers={"X-Key": "v"},
            costs={},
        )
    async with db.tenant(tid) as conn:
        assert await registry.rotate_credentials(conn, SecretBox([NEW_KEY, DEV_SECRET_KEY])) == 1
    async with db.tenant(tid) as conn:
        stored = (await conn.execute(select(upstreams.c.credentials))).scalar_one()
    assert SecretBox([NEW_KEY]).open(stored) == {"X-Key": "v"}
