"""Stateful sessions: each is its opener's alone, what the gateway keeps for one is dropped when it ends
(DELETE, idle timeout, kill), and an ended session's id is refused afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tenantry.app import create_app
from tenantry.gateway.server import Gateway
from tenantry.settings import Settings
from tests.conftest import Admin, TenantHandle, eventually, serve_asgi
from tests.governance.test_governance_gateway import key_for

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSION = "2025-06-18"

# logging/setLevel is deprecated from 2026-07-28 on; handshake-era agents still send it.
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


@pytest.fixture(scope="module")
def stateful(settings: Settings) -> Iterator[tuple[str, Gateway]]:
    app = create_app(settings.model_copy(update={"mcp_stateful": True, "mcp_session_idle_seconds": 2.0}))
    with serve_asgi(app) as (url, _server):
        yield url, app.state.services.gateway


@pytest.fixture
async def http(stateful: tuple[str, Gateway]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stateful[0], timeout=30) as client:
        yield client


async def open_session(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    params = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}
    init = await http.post(
        "/mcp",
        headers={**headers, **ACCEPT},
        json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params},
    )
    assert init.status_code == 200, init.text
    session = {**headers, **ACCEPT, "Mcp-Session-Id": init.headers["mcp-session-id"], "Mcp-Protocol-Version": VERSION}
    done = await http.post("/mcp", headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert done.status_code == 202
    return session


async def rpc(http: httpx.AsyncClient, session: dict[str, str], method: str, params: Any = None) -> httpx.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "method": method}
    if params is not None:
        body["params"] = params
    return await http.post("/mcp", headers=session, json=body)


async def test_what_one_session_sets_is_its_own_and_goes_when_it_ends(
    stateful: tuple[str, Gateway], http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    _, gateway = stateful
    a = await open_session(http, tenant_a.headers)
    b = await open_session(http, tenant_a.headers)  # the same tenant, key and subject
    assert (await rpc(http, a, "logging/setLevel", {"level": "error"})).status_code == 200
    assert gateway.kept_for(a["Mcp-Session-Id"]) == {"live": True, "log_level": "error"}
    assert gateway.kept_for(b["Mcp-Session-Id"]) == {"live": True, "log_level": None}
    assert (await http.delete("/mcp", headers=a)).status_code == 200

    async def ended() -> bool:  # the SDK discards a session as its DELETE is answered, not before
        return gateway.kept_for(a["Mcp-Session-Id"]) == {"live": False, "log_level": None}

    await eventually(ended, what="the session's end")
    assert (await rpc(http, a, "tools/list")).status_code == 404  # an ended session's id is refused
    assert (await rpc(http, b, "tools/list")).status_code == 200


async def test_an_idle_session_ends_and_takes_its_state_with_it(
    stateful: tuple[str, Gateway], http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    _, gateway = stateful
    idle = await open_session(http, tenant_a.headers)
    assert (await rpc(http, idle, "logging/setLevel", {"level": "warning"})).status_code == 200

    async def gone() -> bool:
        return gateway.kept_for(idle["Mcp-Session-Id"]) == {"live": False, "log_level": None}

    await eventually(gone, within=6.0, what="the idle session's end")
    assert (await rpc(http, idle, "tools/list")).status_code == 404


async def test_a_session_is_refused_to_another_key_or_subject_of_the_same_tenant(
    admin: Admin, http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    mine = await open_session(http, tenant_a.headers)
    other = await key_for(admin, tenant_a, "another-agent")
    borrowed = {**mine, "Authorization": other["Authorization"]}
    assert (await rpc(http, borrowed, "tools/list")).status_code == 404
    assert (await rpc(http, mine, "tools/list")).status_code == 200


async def test_a_killed_session_ends_on_its_replica_and_its_calls_are_refused(
    stateful: tuple[str, Gateway], admin: Admin, http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    _, gateway = stateful
    doomed = await open_session(http, tenant_a.headers)
    spared = await open_session(http, tenant_a.headers)
    session_id = doomed["Mcp-Session-Id"]
    made = await admin.http.post(
        "/api/kills", json={"scope": "session", "tenant_id": tenant_a.id, "target": session_id, "reason": "rogue"}
    )
    assert made.status_code == 201, made.text
    try:

        async def ended() -> bool:  # the kill was made through another replica: heard within a second
            return not gateway.kept_for(session_id)["live"]

        await eventually(ended, within=1.0, what="the killed session's end")
        assert (await rpc(http, doomed, "tools/call", {"name": "data_list", "arguments": {}})).status_code == 404
        listed = await rpc(http, spared, "tools/call", {"name": "data_list", "arguments": {}})
        assert listed.status_code == 200
        assert not listed.json()["result"].get("isError")
    finally:
        await admin.http.delete(f"/api/kills/{made.json()['id']}")
