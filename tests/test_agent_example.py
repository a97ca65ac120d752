"""examples/agent: a LlamaIndex agent on the gateway. Run with a scripted tool-calling model (no
network), it calls the tools the model picks through the gateway, billed to its own tenant only, and
binds whatever `tools/list` returns, so a tool an upstream adds appears without code changes. Its
real-model path (an OpenAI-compatible endpoint from the environment) runs against a scripted endpoint
on loopback, which sees the tenant's tools and schemas as a real model would."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio
import pytest
from examples.agent import agent

from tenantry.db.engine import Database
from tests.conftest import ROOT, Admin, TenantHandle
from tests.federation.test_upstreams import add_upstream
from tests.gateway.test_resources import recorded, usage
from tests.openai_compatible_server import ScriptedChatEndpoint, serve_chat_endpoint

# LlamaIndex's workflow engine collects its steps with `inspect.getmembers` on a pydantic model, which
# touches every attribute pydantic deprecated: the library's warnings, not ours (the suite makes warnings
# errors), so only pydantic's deprecation category is let through, and only in this module.
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")


def gateway(url: str, tenant: TenantHandle) -> agent.Gateway:
    return agent.Gateway(f"{url}/mcp", tenant.id, tenant.key)


async def test_the_tools_the_model_picks_are_called_through_the_gateway_and_billed_to_its_tenant(
    gateway_url: str, db: Database, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    plan = [
        agent.Step("data_put", {"key": "trip/plan", "value": {"city": "Lisbon", "days": 3}}),
        agent.Step("data_get", {"key": "trip/plan"}),
    ]
    model = agent.scripted_model(plan, answer="Saved and checked your trip plan.")

    run = await agent.run_agent(gateway(gateway_url, tenant_a), "Remember my trip plan.", model)

    assert {"data_put", "data_get", "data_list", "data_delete"} <= set(run.offered)
    assert [(u.name, u.arguments) for u in run.used] == [(s.tool, s.arguments) for s in plan]
    assert not any(u.is_error for u in run.used)
    assert json.loads(run.used[1].output)["value"] == {"city": "Lisbon", "days": 3}
    assert run.answer == "Saved and checked your trip plan."
    events = await recorded(db, tenant_a, 2)
    assert [(tool, outcome) for tool, _units, outcome in events] == [("data_put", "ok"), ("data_get", "ok")]
    assert await usage(db, tenant_b) == []


async def test_a_tool_an_upstream_adds_reaches_the_agent_without_code_changes(
    gateway_url: str, admin: Admin, db: Database, tenant_a: TenantHandle, fixture_upstream: Any
) -> None:
    before = await agent.run_agent(
        gateway(gateway_url, tenant_a), "Nothing to do.", agent.scripted_model([], answer="done")
    )
    assert not any(name.startswith("fx__") for name in before.offered)

    _, url = fixture_upstream
    await add_upstream(admin, tenant_a, url, "alpha")
    model = agent.scripted_model([agent.Step("fx__echo", {"text": "hello from the agent"})], answer="echoed")
    after = await agent.run_agent(gateway(gateway_url, tenant_a), "Echo a greeting.", model)

    assert "fx__echo" in after.offered
    assert [(u.name, u.output, u.is_error) for u in after.used] == [("fx__echo", "hello from the agent", False)]
    assert [(tool, outcome) for tool, _units, outcome in await recorded(db, tenant_a, 1)] == [("fx__echo", "ok")]


async def test_the_readme_command_runs_the_scripted_agent_and_a_wrong_key_is_refused(
    gateway_url: str, db: Database, tenant_a: TenantHandle
) -> None:
    script = str(ROOT / "examples" / "agent" / "agent.py")
    env = {**os.environ, "TENANTRY_URL": f"{gateway_url}/mcp", "TENANTRY_TENANT_ID": tenant_a.id}
    ok = await anyio.run_process(
        [sys.executable, script, "--scripted", "--json", "Plan my week"],
        env={**env, "TENANTRY_API_KEY": tenant_a.key},
        check=False,
    )
    assert ok.returncode == 0, ok.stderr.decode()
    printed = json.loads(ok.stdout)
    assert [u["name"] for u in printed["used"]] == ["data_put", "data_get"]
    assert json.loads(printed["used"][1]["output"])["value"] == {"task": "Plan my week"}
    assert [tool for tool, _units, _outcome in await recorded(db, tenant_a, 2)] == ["data_put", "data_get"]

    refused = await anyio.run_process(
        [sys.executable, script, "--scripted", "Plan my week"],
        env={**env, "TENANTRY_API_KEY": "tk_not-a-key"},
        check=False,
    )
    assert refused.returncode != 0
    assert "401" in refused.stderr.decode()
    assert len(await usage(db, tenant_a)) == 2


async def test_with_an_openai_compatible_endpoint_from_the_environment_the_model_sees_the_tenants_tools(
    gateway_url: str, db: Database, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    plan = [("data_put", {"key": "colour", "value": "teal"}), ("data_get", {"key": "colour"})]
    endpoint = ScriptedChatEndpoint(plan, answer="Your favourite colour, teal, is stored.")
    with serve_chat_endpoint(endpoint) as base_url:
        env = {
            **os.environ,
            "TENANTRY_URL": f"{gateway_url}/mcp",
            "TENANTRY_TENANT_ID": tenant_a.id,
            "TENANTRY_API_KEY": tenant_a.key,
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sk-scripted",
            "AGENT_MODEL": "scripted-model",
        }
        script = str(ROOT / "examples" / "agent" / "agent.py")
        done = await anyio.run_process([sys.executable, script, "--json", "Remember teal"], env=env, check=False)

    assert done.returncode == 0, done.stderr.decode()
    printed = json.loads(done.stdout)
    assert [(u["name"], u["is_error"]) for u in printed["used"]] == [("data_put", False), ("data_get", False)]
    assert printed["answer"] == "Your favourite colour, teal, is stored."
    first = endpoint.requests[0]
    assert first["model"] == "scripted-model"
    assert set(endpoint.keys) == {"Bearer sk-scripted"}
    offered = {t["function"]["name"]: t["function"] for t in first["tools"]}
    assert "key" in offered["data_put"]["parameters"]["properties"]
    assert "private data store" in offered["data_put"]["description"]
    assert any(m["role"] == "user" and "Remember teal" in str(m["content"]) for m in first["messages"])
    assert [tool for tool, _u, _o in await recorded(db, tenant_a, 2)] == ["data_put", "data_get"]
    assert await usage(db, tenant_b) == []
