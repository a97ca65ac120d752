"""The output guardrail: the detectors against their labelled sample, redaction that keeps JSON's shape,
block mode, and the tenant's policy applied on every path (MCP, fast path, SSE, REST bridge, upstream)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import mcp_types as types
import pytest
from sqlalchemy import text

from tenantry.client import connect
from tenantry.db.engine import Database
from tenantry.governance.guardrails import OutputGuard, PiiBlocked
from tenantry.governance.pii import find, redact
from tests.conftest import OPS, Admin, TenantHandle, eventually
from tests.gateway.test_fastpath import call, post
from tests.governance.pii_corpus import SAMPLES
from tests.governance.test_governance_gateway import bridge, set_policy

PERSONAL = "Write to jane.doe@example.com or call +44 20 7946 0958; card 4111 1111 1111 1111."
REDACTED = "Write to [EMAIL] or call [PHONE]; card [CARD]."


def test_the_detectors_find_what_the_labelled_sample_holds_and_nothing_else() -> None:
    wrong = {}
    for sample, expected in SAMPLES:
        got = sorted((s.kind, sample[s.start : s.end]) for s in find(sample))
        if got != sorted(expected):
            wrong[sample[:50]] = got
    assert wrong == {}


def test_redaction_keeps_the_shape_of_json_and_says_what_it_found() -> None:
    found: list[str] = []
    guard = OutputGuard("redact", None, found.extend)
    result = guard.result("t", {"a": [PERSONAL, 5, None], "b": {"ip": "10.0.0.7", "n": 1.5}, "ok": True})
    assert result == {"a": [REDACTED, 5, None], "b": {"ip": "[IP]", "n": 1.5}, "ok": True}
    assert sorted(found) == ["card", "email", "ip", "phone"]
    assert redact(PERSONAL, frozenset({"email"})) == (PERSONAL.replace("jane.doe@example.com", "[EMAIL]"), ["email"])


def test_block_mode_refuses_and_says_only_the_kinds() -> None:
    guard = OutputGuard("block", None, lambda found: None)
    with pytest.raises(PiiBlocked) as blocked:
        guard.forwarded("crm__get", types.CallToolResult(content=[types.TextContent(type="text", text=PERSONAL)]))
    assert blocked.value.code == "pii_blocked"
    assert blocked.value.extra == {"kinds": ["card", "email", "phone"]}
    assert "jane" not in blocked.value.detail
    assert guard.result("t", {"clean": "nothing here"}) == {"clean": "nothing here"}


def test_an_upstream_result_is_redacted_in_text_embedded_resources_and_structured_content() -> None:
    guard = OutputGuard("redact", None, lambda found: None)
    resource = types.TextResourceContents(uri="file:///r.txt", text=PERSONAL)
    result = types.CallToolResult(
        content=[
            types.TextContent(type="text", text=PERSONAL),
            types.EmbeddedResource(type="resource", resource=resource),
            types.ImageContent(type="image", data="aGk=", mime_type="image/png"),
        ],
        structured_content={"who": "jane.doe@example.com"},
    )
    clean = guard.forwarded("fx__rich", result)
    assert clean.content[0].text == REDACTED  # type: ignore[union-attr]
    assert clean.content[1].resource.text == REDACTED  # type: ignore[union-attr]
    assert clean.content[2] == result.content[2]
    assert clean.structured_content == {"who": "[EMAIL]"}


class Recorder:
    progress_token = 1

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        self.sent.append((method, params))

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        return {}


async def test_what_is_relayed_during_a_call_is_redacted_or_in_block_mode_not_relayed() -> None:
    for mode, expected in (("redact", [("notifications/message", {"data": REDACTED})]), ("block", [])):
        agent = Recorder()
        relay = OutputGuard(mode, None, lambda found: None).relay(agent)
        assert relay is not None
        await relay.notify("notifications/message", {"data": PERSONAL})
        assert agent.sent == expected
        await relay.notify("notifications/progress", {"progress": 1, "message": "half way"})
        assert agent.sent[-1] == ("notifications/progress", {"progress": 1, "message": "half way"})


async def test_the_tenants_guardrail_holds_on_every_path_and_a_blocked_call_is_not_billed(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient, db: Database
) -> None:
    guardrails = {"pii": "redact", "tools": {"data_list": "block"}}
    await set_policy(admin, tenant_a, {"default": "allow", "guardrails": guardrails})
    assert (
        await bridge(http, tenant_a, tenant_a.headers, "data_put", {"key": "contact", "value": PERSONAL})
    ).status_code == 200
    # The REST bridge, the fast path, the SDK's path and legacy SSE all redact.
    rest = await bridge(http, tenant_a, tenant_a.headers, "data_get", {"key": "contact"})
    assert rest.json()["structuredContent"]["value"] == REDACTED
    _, fast = await post(gateway_url, tenant_a.headers, call("data_get", {"key": "contact"}))
    assert fast["result"]["structuredContent"]["value"] == REDACTED
    assert "jane" not in fast["result"]["content"][0]["text"]
    for url, transport in ((f"{gateway_url}/mcp", "http"), (f"{gateway_url}/sse", "sse")):
        async with connect(url, tenant_a.headers, transport=transport) as client:
            got = await client.call_tool("data_get", {"key": "contact"})
            assert (got.structured_content or {})["value"] == REDACTED
    # Block mode for one tool: the result is dropped, the call ends pii_blocked and is not billed.
    named = {"key": "jane.doe@example.com", "value": 1}
    assert (await bridge(http, tenant_a, tenant_a.headers, "data_put", named)).status_code == 200
    blocked = await bridge(http, tenant_a, tenant_a.headers, "data_list", {})
    assert (blocked.status_code, blocked.json()["error"], blocked.json()["kinds"]) == (403, "pii_blocked", ["email"])

    async def outcomes() -> list[str]:
        async with db.system() as conn:
            rows = await conn.execute(
                text("SELECT tool, outcome FROM usage_events WHERE tenant_id = :t"), {"t": uuid.UUID(tenant_a.id)}
            )
            return sorted(f"{r.tool}:{r.outcome}" for r in rows)

    await eventually(lambda: _holds(outcomes, "data_list:pii_blocked"), what="the blocked call in the ledger")
    usage = (await admin.http.get(f"/api/tenants/{tenant_a.id}/usage")).json()
    assert usage["tools"]["data_list"]["billable_units"] == 0
    metrics = (await http.get("/metrics", headers=OPS)).text
    assert 'tenantry_pii_detections_total{kind="email"}' in metrics
    assert "jane" not in metrics


async def _holds(rows: Any, wanted: str) -> bool:
    return wanted in await rows()
