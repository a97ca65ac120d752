"""Every error /mcp answers is a JSON-RPC error object a client can read, and a stateless gateway says
what it can act on (405, Allow: POST) instead of opening streams nothing will ever use."""

from __future__ import annotations

import httpx

from tests import conftest
from tests.conftest import ADMIN_KEY, TenantHandle, serve

ACCEPT = {"Accept": "application/json, text/event-stream"}


async def test_transport_errors_are_json_rpc_error_objects(http: httpx.AsyncClient, tenant_a: TenantHandle) -> None:
    text = {**tenant_a.headers, **ACCEPT, "Content-Type": "text/plain"}
    json_body = {**tenant_a.headers, **ACCEPT, "Content-Type": "application/json"}
    plain = await http.post("/mcp", content=b"{}", headers=text)
    assert plain.status_code == 400
    assert plain.headers["content-type"] == "application/json"
    assert plain.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "Invalid Content-Type header"},
    }
    batch = await http.post("/mcp", content=b"[1, 2]", headers=json_body)
    assert batch.status_code == 400
    error = batch.json()["error"]
    assert "\n" not in error["message"]
    assert "input_value" not in batch.text
    assert "errors.pydantic.dev" not in batch.text


async def test_params_that_fail_validation_are_named_as_such(http: httpx.AsyncClient, tenant_a: TenantHandle) -> None:
    body = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":5}}'
    headers = {**tenant_a.headers, **ACCEPT, "Content-Type": "application/json"}
    r = await http.post("/mcp", content=body, headers=headers)
    error = r.json()["error"]
    assert (r.json()["id"], error["code"]) == (7, -32602)
    assert error["message"].startswith("Invalid request parameters: ")
    assert "data" not in error


async def test_a_stateless_gateway_answers_get_and_delete_with_405_allow_post(
    http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    for method in ("GET", "DELETE"):
        r = await http.request(method, "/mcp", headers={**tenant_a.headers, **ACCEPT}, timeout=5)
        assert r.status_code == 405, method
        assert r.headers["allow"] == "POST"
        assert r.json()["error"] == "method_not_allowed"


async def test_a_405_names_every_method_the_path_allows(http: httpx.AsyncClient) -> None:
    r = await http.put("/api/tenants", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"


async def test_a_stateful_gateway_keeps_get_and_delete_for_its_sessions(tenant_a: TenantHandle) -> None:
    with serve(conftest.test_settings(mcp_stateful=True, mcp_json_response=False)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            r = await http.delete("/mcp", headers={**tenant_a.headers, **ACCEPT})
    assert r.status_code in (400, 404)  # no such session: a JSON-RPC error, not "method not allowed"
    assert r.json()["jsonrpc"] == "2.0"
