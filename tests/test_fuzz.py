"""Property-based runs against the served gateway, bounded so they fit in CI:

- the REST API, operation by operation from its own OpenAPI document: random path and query
  parameters and JSON bodies (the documented fields with hostile values, and unknown ones);
- `/mcp`: malformed JSON, wrong types, huge and deep values, surrogates, NUL, batches, any method.

Whatever comes, no 5xx, no hang, an error body a client can read, and nothing written or billed by what
was refused: afterwards a normal call works and the meter's count equals the ledger's.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tenantry.db.engine import Database
from tests.conftest import ADMIN_KEY, OPS_KEY, TenantHandle, eventually

FUZZ_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)

# Strings a careless or hostile client sends: control characters, NUL, lone surrogates, bidi, long ones.
hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "\u202e", "\x7f", "../../etc", "%00", "' OR 1=1 --", "🦜"]),
    st.text(min_size=300, max_size=2_000),
)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# In a URL: what an HTTP client can send at all (a lone surrogate cannot be encoded there).
url_text = hostile_text.filter(_encodable)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def fuzzed(client: httpx.Client) -> TenantHandle:
    """A tenant of its own whose limits never refuse, so every refusal here is the input's."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    made = client.post("/api/tenants", json={"name": "fuzzed", "plan": "pro"}, headers=admin).json()
    limits = {"calls_per_window": 10**6, "requests_per_minute": None, "max_concurrent": None}
    assert client.patch(f"/api/tenants/{made['id']}", json={"limits": limits}, headers=admin).status_code == 200
    key = client.post(f"/api/tenants/{made['id']}/keys", json={"name": "fuzz"}, headers=admin).json()
    return TenantHandle(id=made["id"], key=key["secret"], key_id=key["id"])


def _operations(client: httpx.Client) -> list[tuple[str, str, dict[str, Any]]]:
    document = client.get("/openapi.json").json()
    return [
        (method.upper(), path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        # What the fuzz must not do to the shared test database: offboard or revoke for real. Random ids
        # are used for every path parameter, so these would only ever 404, and are run as such below.
        if not path.startswith("/webhooks/")
    ]


def _assert_readable(response: httpx.Response, documented: set[str], where: str) -> None:
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict), where
        assert "error" in body, where
        assert response.status_code == 405 or str(response.status_code) in documented, (
            f"{where}: {response.status_code} is not documented ({sorted(documented)})"
        )


@FUZZ_SETTINGS
@given(data=st.data())
def test_the_rest_api_answers_any_input_without_a_5xx(client: httpx.Client, fuzzed: TenantHandle, data: Any) -> None:
    operations = _operations(client)
    method, path, operation = data.draw(st.sampled_from(operations), label="operation")
    names = re.findall(r"{(\w+)}", path)
    values = {name: data.draw(st.one_of(st.uuids().map(str), st.just(fuzzed.id), url_text)) for name in names}
    if method == "DELETE" and "tenant_id" in values:
        values["tenant_id"] = str(uuid.uuid4())  # never offboard a real tenant of the shared database
    url = path.format(**{k: quote(v, safe="") or "x" for k, v in values.items()})
    query = {
        p["name"]: data.draw(st.one_of(st.integers(-(2**64), 2**64).map(str), url_text))
        for p in operation.get("parameters", [])
        if p["in"] == "query" and data.draw(st.booleans())
    }
    headers = {"Authorization": f"Bearer {data.draw(st.sampled_from([ADMIN_KEY, OPS_KEY, fuzzed.key]))}"}
    kwargs: dict[str, Any] = {"params": query, "headers": headers}
    if "requestBody" in operation:
        fields = ["name", "plan", "status", "limits", "method", "params", "url", "headers", "costs", "key", "transport"]
        body = data.draw(st.dictionaries(st.sampled_from(fields) | hostile_text, json_values, max_size=4))
        kwargs["content"] = json.dumps(body).encode()
        kwargs["headers"]["Content-Type"] = "application/json"
    response = client.request(method, url, **kwargs)
    _assert_readable(response, set(operation["responses"]), f"{method} {url}")


MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
rpc_methods = st.sampled_from(["tools/call", "tools/list", "initialize", "ping", "resources/list", "x/y", ""])
rpc_params = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"name": st.sampled_from(["data_put", "data_get", "data_list", "health_check", "nope"]) | hostile_text},
        optional={"arguments": json_values},
    ),
)
messages = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "1.0", 2]), "method": rpc_methods},
    optional={"id": st.one_of(st.integers(), st.text(max_size=10), st.none(), json_values), "params": rpc_params},
)


_CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"data_put","arguments":'


def _deep(depth: int) -> bytes:
    return _CALL + b'{"key":"d","value":' + b"[" * depth + b"]" * depth + b"}}}"


bodies = st.one_of(
    messages.map(lambda m: json.dumps(m).encode()),
    st.lists(messages, max_size=3).map(lambda m: json.dumps(m).encode()),  # batches
    st.binary(max_size=200),  # not JSON at all
    st.integers(1, 3_000).map(_deep),  # nesting, to the parser's limits and past them
    st.sampled_from(
        [
            _CALL + b'{"key":"k","value":NaN}}}',
            _CALL + b'{"key":"\\ud800","value":1}}}',
            _CALL + b'{"key":"k","value":"\\u0000"}}}',
            _CALL + b'{"key":"k","value":1e400}}}',
            _CALL + b'{"key":"big","value":"' + b"x" * 200_000 + b'"}}}',
        ]
    ),
)


@FUZZ_SETTINGS
@given(body=bodies, protocol=st.sampled_from([None, "2025-11-25", "2026-07-28", "1999-01-01"]))
def test_mcp_answers_any_message_without_a_5xx_or_a_hang(
    client: httpx.Client, fuzzed: TenantHandle, body: bytes, protocol: str | None
) -> None:
    headers = {**fuzzed.headers, **MCP_HEADERS}
    if protocol is not None:
        headers["MCP-Protocol-Version"] = protocol
    response = client.post("/mcp", content=body, headers=headers, timeout=10)  # a hang is a ReadTimeout
    assert response.status_code < 500, f"{response.status_code} {response.text[:300]} for {body[:200]!r}"
    if response.content:
        answer = json.loads(response.content)
        assert isinstance(answer, dict | list)


async def test_after_the_fuzz_a_normal_call_works_and_the_meter_agrees_with_the_ledger(
    gateway_url: str, fuzzed: TenantHandle, db: Database
) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        # The fuzz may have renamed or suspended its tenant (through the admin API, as it may): undo that.
        await http.patch(
            f"/api/tenants/{fuzzed.id}", json={"status": "active"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        ok = await http.post(f"/api/tenant/{fuzzed.id}/tool", json={"method": "health_check"}, headers=fuzzed.headers)
        assert ok.status_code == 200, ok.text
        usage = await http.get(f"/api/tenants/{fuzzed.id}/usage", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    used = usage.json()["quota"]["used"]

    async def recorded() -> int:
        async with db.system() as conn:
            return int(
                (
                    await conn.execute(
                        text("SELECT coalesce(sum(units), 0) FROM usage_events WHERE tenant_id = :t AND metered"),
                        {"t": uuid.UUID(fuzzed.id)},
                    )
                ).scalar_one()
            )

    async def agrees() -> bool:
        return await recorded() == used

    await eventually(agrees, within=15, what="the ledger matching the meter")
