"""The published contract is the one the API keeps: 400 with {error, detail} for bad input, never 422,
and the error statuses each route can answer documented with that body."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import TenantHandle


async def _document(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get("/openapi.json")
    assert r.status_code == 200
    document: dict[str, Any] = r.json()
    return document


async def test_no_operation_documents_a_422_and_every_one_that_takes_input_documents_a_400(
    http: httpx.AsyncClient,
) -> None:
    document = await _document(http)
    assert "422" not in str(
        {p: {m: o["responses"].keys() for m, o in ops.items()} for p, ops in document["paths"].items()}
    )
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            takes_input = operation.get("parameters") or operation.get("requestBody")
            if takes_input:
                assert "400" in operation["responses"], (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    body = document["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"error", "detail"}


async def test_the_tool_bridge_documents_every_status_it_answers(http: httpx.AsyncClient) -> None:
    responses = (await _document(http))["paths"]["/api/tenant/{tenant_id}/tool"]["post"]["responses"]
    assert {"200", "400", "401", "403", "404", "409", "413", "429", "500", "503"} <= set(responses)
    for status, response in responses.items():
        if status != "200":
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status


async def test_the_statuses_a_route_answers_are_among_those_it_documents(
    http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    document = await _document(http)
    bridge = f"/api/tenant/{tenant_a.id}/tool"
    answered = {
        ("/api/tenant/{tenant_id}/tool", "post"): [
            (await http.post(bridge, json={"method": "nope"}, headers=tenant_a.headers)).status_code,
            (await http.post(bridge, json={"method": 5}, headers=tenant_a.headers)).status_code,
            (await http.post(bridge, json={"method": "listTools"})).status_code,
        ],
        ("/api/tenants", "get"): [(await http.get("/api/tenants")).status_code],
        ("/api/tenants/{tenant_id}", "get"): [(await http.get("/api/tenants/not-a-uuid")).status_code],
        ("/metrics", "get"): [(await http.get("/metrics")).status_code],
    }
    for (path, method), statuses in answered.items():
        documented = set(document["paths"][path][method]["responses"])
        assert {str(s) for s in statuses} <= documented, (path, method, statuses, documented)
