"""What operators see of a request: its id, its headers, one log line, CORS for browsers, and a trace."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import Message, Receive, Scope, Send

from tenantry.api.middleware import RequestObserver
from tenantry.app import create_app
from tenantry.client import connect
from tenantry.observability import JsonFormatter, Tracing, configure_logging
from tenantry.settings import Settings
from tests.conftest import Admin, TenantHandle, serve, serve_asgi
from tests.federation.test_upstreams import add_upstream

# --- request ids -----------------------------------------------------------------------------------


async def test_every_response_carries_a_request_id_and_a_valid_one_from_the_client_is_kept(
    http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    made = await http.get("/health")
    assert len(made.headers["x-request-id"]) == 32
    kept = await http.get("/health", headers={"X-Request-ID": "trace-me.42"})
    assert kept.headers["x-request-id"] == "trace-me.42"
    for bad in (b"has space", b"x" * 129, b"back\\slash", "é".encode()):
        replaced = await http.get("/health", headers={"X-Request-ID": bad})
        assert replaced.headers["x-request-id"].encode() != bad
        assert len(replaced.headers["x-request-id"]) == 32
    mcp = await http.post("/mcp", json={}, headers={**tenant_a.headers, "X-Request-ID": "on-mcp"})
    assert mcp.headers["x-request-id"] == "on-mcp"


async def test_every_json_error_names_its_request_id(http: httpx.AsyncClient, tenant_a: TenantHandle) -> None:
    unauthenticated = await http.get("/api/tenants", headers={"X-Request-ID": "err-1"})
    assert unauthenticated.status_code == 401
    assert unauthenticated.json() == {
        "error": "missing_credentials",
        "detail": unauthenticated.json()["detail"],
        "request_id": "err-1",
    }
    bridge = await http.post(
        f"/api/tenant/{tenant_a.id}/tool",
        json={"method": "data_get", "params": {"key": "nope"}},
        headers=tenant_a.headers,
    )
    assert bridge.status_code == 404
    assert bridge.json()["request_id"] == bridge.headers["x-request-id"]
    assert int(bridge.headers["content-length"]) == len(bridge.content)  # rewritten with the body


# --- security headers ------------------------------------------------------------------------------


async def test_security_headers_on_json_and_html_and_no_hsts_over_plain_http(http: httpx.AsyncClient) -> None:
    api = await http.get("/health")
    assert api.headers["x-content-type-options"] == "nosniff"
    assert api.headers["referrer-policy"] == "no-referrer"
    assert api.headers["x-frame-options"] == "DENY"
    assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert "strict-transport-security" not in api.headers
    html = await http.get("/docs")
    assert html.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in html.headers["content-security-policy"]
    assert "default-src 'none'" in html.headers["content-security-policy"]


async def test_hsts_is_sent_when_the_request_came_over_tls() -> None:
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    observer = RequestObserver(app, tracing=Tracing(), log=logging.getLogger("test"))
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "scheme": "https"}
    await observer(scope, receive, send)
    headers = dict(sent[0]["headers"])
    assert headers[b"strict-transport-security"].startswith(b"max-age=")


# --- CORS ------------------------------------------------------------------------------------------


@pytest.fixture
def cors_gateway(settings: Settings) -> Iterator[str]:
    configured = settings.model_copy(
        update={
            "cors_allowed_origins": ["https://console.example"],
            "mcp_allowed_hosts": ["127.0.0.1:*", "localhost:*"],
            "mcp_allowed_origins": ["https://agent.example"],
        }
    )
    with serve(configured) as url:
        yield url


async def test_cors_answers_preflights_for_allowed_origins_only(cors_gateway: str) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,tenant-id"}
    async with httpx.AsyncClient(base_url=cors_gateway) as http:
        ok = await http.options("/mcp", headers={"Origin": "https://console.example", **preflight})
        other = await http.options("/mcp", headers={"Origin": "https://evil.example", **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://console.example"
    assert "tenant-id" in ok.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in ok.headers  # bearer headers need no credentials mode
    assert "access-control-allow-origin" not in other.headers


async def test_cors_does_not_weaken_the_origin_check_on_mcp(cors_gateway: str, tenant_a: TenantHandle) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "health_check", "arguments": {}}}
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=cors_gateway) as http:
        refused = await http.post(
            "/mcp", json=body, headers={**tenant_a.headers, **accept, "Origin": "https://console.example"}
        )
        allowed = await http.post(
            "/mcp", json=body, headers={**tenant_a.headers, **accept, "Origin": "https://agent.example"}
        )
    assert refused.status_code == 403  # CORS lets the browser read answers; it does not let the origin in
    assert allowed.status_code == 200


async def test_without_cors_settings_no_origin_is_allowed(http: httpx.AsyncClient) -> None:
    r = await http.options(
        "/mcp", headers={"Origin": "https://console.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in r.headers


# --- logs ------------------------------------------------------------------------------------------


async def test_one_access_line_per_request_names_its_caller_and_never_its_secrets(
    http: httpx.AsyncClient, tenant_a: TenantHandle, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"method": "data_put", "params": {"key": "k", "value": "very-private-value"}}
    with caplog.at_level(logging.INFO, logger="tenantry.access"):
        r = await http.post(
            f"/api/tenant/{tenant_a.id}/tool", json=body, headers={**tenant_a.headers, "X-Request-ID": "log-1"}
        )
        refused = await http.post(f"/api/tenant/{tenant_a.id}/tool", json=body, headers={"X-Request-ID": "log-2"})
    assert r.status_code == 200
    assert refused.status_code == 401
    lines = {rec.request_id: rec for rec in caplog.records if rec.name == "tenantry.access"}
    ok = lines["log-1"]
    assert (ok.method, ok.status, ok.tenant, ok.tool, ok.outcome) == ("POST", 200, tenant_a.id, "data_put", "ok")
    assert (ok.subject, ok.key) == ("test", tenant_a.key_id)  # the key's subject defaults to its name
    assert ok.latency_ms > 0
    assert lines["log-2"].status == 401  # a refused request leaves a line too
    formatted = JsonFormatter().format(ok)
    line = json.loads(formatted)
    assert line["request_id"] == "log-1"
    assert line["level"] == "info"
    assert line["status"] == 200
    for record in caplog.records:
        text = JsonFormatter().format(record)
        assert tenant_a.key not in text
        assert "very-private-value" not in text


def test_json_and_text_logs_carry_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    from tenantry.observability import begin_request, end_request

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        for json_lines in (True, False):
            configure_logging(json_lines=json_lines, level="info")
            _record, token = begin_request("rid-7")
            logging.getLogger("tenantry.test").info("hello %s", "there", extra={"tool": "data_get"})
            end_request(token)
            err = capsys.readouterr().err.strip().splitlines()[-1]
            if json_lines:
                assert json.loads(err) | {"time": "t"} == {
                    "time": "t",
                    "level": "info",
                    "logger": "tenantry.test",
                    "message": "hello there",
                    "request_id": "rid-7",
                    "tool": "data_get",
                }
            else:
                assert "[rid-7] hello there tool=data_get" in err
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


# --- traces ----------------------------------------------------------------------------------------


async def test_one_upstream_call_is_one_trace_and_its_context_reaches_the_upstream(
    settings: Settings, admin: Admin, fixture_upstream: Any
) -> None:
    upstream, url = fixture_upstream
    exporter = InMemorySpanExporter()
    with serve_asgi(create_app(settings, span_exporter=exporter)) as (gateway, _server):
        async with httpx.AsyncClient(base_url=gateway, headers=admin.http.headers) as http:
            tenant = await Admin(http).create_tenant()
            await add_upstream(Admin(http), tenant, url, "alpha")
            async with connect(f"{gateway}/mcp", tenant.headers) as client:
                exporter.clear()
                seen = len(upstream.received)
                result = await client.call_tool("fx__echo", {"text": "traced"})
    assert not result.is_error
    finished = exporter.get_finished_spans()
    spans = {span.name: span for span in finished}
    call = spans["tools/call"]
    (request,) = [s for s in finished if s.name == "POST /mcp" and s.context.span_id == call.parent.span_id]
    forwarded = spans["upstream tools/call"]
    assert forwarded.parent.span_id == call.context.span_id
    assert spans["meter.admit"].parent.span_id == call.context.span_id
    assert spans["ledger.record"].parent.span_id == call.context.span_id
    assert call.attributes["tenantry.tenant_id"] == tenant.id
    assert call.attributes["tenantry.tool"] == "fx__echo"
    assert call.attributes["tenantry.outcome"] == "ok"
    assert request.attributes["http.response.status_code"] == 200
    # The upstream request carried the W3C trace context of the forwarding span.
    traceparents = [h["traceparent"] for h in upstream.received[seen:] if "traceparent" in h]
    trace_id = format(call.context.trace_id, "032x")
    assert any(
        tp.split("-")[1] == trace_id and tp.split("-")[2] == format(forwarded.context.span_id, "016x")
        for tp in traceparents
    ), traceparents


async def test_a_built_in_call_traces_its_database_transaction(settings: Settings) -> None:
    exporter = InMemorySpanExporter()
    with serve_asgi(create_app(settings, span_exporter=exporter)) as (gateway, _server):
        async with httpx.AsyncClient(
            base_url=gateway, headers={"Authorization": "Bearer " + settings.admin_api_key}
        ) as http:
            tenant = await Admin(http).create_tenant()
            async with connect(f"{gateway}/mcp", tenant.headers) as client:
                await client.call_tool("health_check", {})  # the first call also reads the tenant's policy
                exporter.clear()
                await client.call_tool("health_check", {})
    finished = exporter.get_finished_spans()
    (call,) = [s for s in finished if s.name == "tools/call"]
    # The canary reads the tenant's data plane and the shared control plane: one transaction each.
    transactions = [s for s in finished if s.name == "db.transaction" and s.parent.span_id == call.context.span_id]
    assert len(transactions) == 2
    for transaction in transactions:
        assert transaction.attributes["tenantry.tenant_id"] == tenant.id
        assert transaction.context.trace_id == call.context.trace_id


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    assert not Tracing.configured("none").enabled
    assert not Tracing.configured("").enabled
    assert Tracing.configured("console").enabled
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        Tracing.configured("zipkin-over-carrier-pigeon")
    off = Tracing()
    with off.span("anything") as span:
        assert span is None
    assert off.trace_headers() == ""
