"""What an upstream sends during a call reaches the agent that made it, through the gateway.

A stateful upstream (sessions, SSE answers) reports progress, logs, and asks the agent to
sample and to elicit in the middle of a tool call; the agent talks to a gateway running
stateful sessions with SSE answers, the mode that gives it a back-channel. The default
stateless JSON gateway has none: there the upstream's requests are refused and the call ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tenantry.client import connect
from tenantry.gateway.relay import AgentRelay
from tenantry.settings import Settings
from tests.conftest import Admin, TenantHandle, serve
from tests.federation.test_upstreams import add_upstream
from tests.upstream_servers import FixtureUpstream, serve_upstream

# logging/setLevel is deprecated from 2026-07-28 on; handshake-era agents still send it.
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


@pytest.fixture(scope="module")
def stateful_upstream() -> Iterator[tuple[FixtureUpstream, str]]:
    upstream = FixtureUpstream(stateful=True)
    with serve_upstream(upstream) as (url, _server):
        yield upstream, url


@pytest.fixture(scope="module")
def streaming_gateway(settings: Settings) -> Iterator[str]:
    """The gateway with stateful sessions and SSE answers (same database as the default one)."""
    with serve(settings.model_copy(update={"mcp_stateful": True, "mcp_json_response": False})) as url:
        yield url


class Agent:
    """An MCP client that can sample and elicit, and records what the gateway relays to it."""

    def __init__(self) -> None:
        self.logs: list[tuple[str, Any]] = []
        self.progress: list[tuple[float, float | None, str | None]] = []
        self.sampled: list[types.CreateMessageRequestParams] = []

    async def sampling(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampled.append(params)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="four"), model="agent-model"
        )

    async def elicitation(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append((params.level, params.data))

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total, message))

    @asynccontextmanager
    async def connect(self, url: str, headers: dict[str, str], *, capable: bool = True) -> AsyncIterator[Client]:
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(
                streamable_http_client(url, http_client=http),
                mode="legacy",
                sampling_callback=self.sampling if capable else None,
                elicitation_callback=self.elicitation if capable else None,
                logging_callback=self.logging,
            ) as client,
        ):
            yield client


def text_of(result: types.CallToolResult) -> str:
    first = result.content[0]
    assert isinstance(first, types.TextContent)
    return first.text


async def test_progress_logs_sampling_and_elicitation_reach_the_agent(
    streaming_gateway: str, admin: Admin, tenant_a: TenantHandle, stateful_upstream: Any
) -> None:
    upstream, url = stateful_upstream
    await add_upstream(admin, tenant_a, url, "alpha")
    agent = Agent()
    async with agent.connect(f"{streaming_gateway}/mcp", tenant_a.headers) as client:
        await client.set_logging_level("info")
        result = await client.call_tool("fx__interactive", {}, progress_callback=agent.on_progress)
    assert not result.is_error, result
    assert text_of(result) == "sampled=four elicited=accept:Ada"
    assert upstream.answers[-1] == ("four", "accept", {"name": "Ada"})
    assert agent.sampled[0].messages[0].content.text == "2+2?"  # type: ignore[union-attr]
    # Progress under the agent's own token only (the upstream's stray token is not relayed), in order.
    assert [p for p, _, _ in agent.progress] == [1, 2, 3]
    assert agent.progress[0] == (1, 3, "started")
    # The level the agent set holds for what the upstream logs: debug is filtered out.
    assert agent.logs == [("info", "info from upstream"), ("warning", "warning from upstream")]
    assert result.meta is not None
    assert "tenantry/event_id" in result.meta


async def test_an_agent_without_the_capability_is_not_asked_and_the_call_ends(
    streaming_gateway: str, gateway_url: str, admin: Admin, tenant_a: TenantHandle, stateful_upstream: Any
) -> None:
    upstream, url = stateful_upstream
    await add_upstream(admin, tenant_a, url, "alpha")
    agent = Agent()
    async with agent.connect(f"{streaming_gateway}/mcp", tenant_a.headers, capable=False) as client:
        result = await client.call_tool("fx__interactive", {})
    assert result.is_error
    assert "does not support sampling/createMessage" in text_of(result)
    assert agent.sampled == []
    # The default stateless JSON gateway has no back-channel at all: refused, not hung.
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        async with asyncio.timeout(10):
            stateless = await client.call_tool("fx__interactive", {})
    assert stateless.is_error
    assert "cannot carry sampling/createMessage" in text_of(stateless)
    assert isinstance(upstream.answers[-1], Exception)


async def test_tools_list_changed_refreshes_the_catalog_before_the_ttl(
    streaming_gateway: str, admin: Admin, tenant_a: TenantHandle, settings: Settings
) -> None:
    upstream = FixtureUpstream(stateful=True)
    assert settings.upstream_discovery_ttl_seconds >= 30
    with serve_upstream(upstream) as (url, _server):
        await add_upstream(admin, tenant_a, url, "alpha")
        async with connect(f"{streaming_gateway}/mcp", tenant_a.headers) as client:
            assert "fx__echo" in {t.name for t in (await client.list_tools()).tools}
            await client.call_tool("fx__shift", {})
            # The upstream announced the change on its standalone stream; the gateway re-lists it,
            # finds echo's definition changed since it was pinned, and withholds it (rug-pull defence).
            async with asyncio.timeout(10):
                while "fx__echo" in {t.name for t in (await client.list_tools()).tools}:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)  # polling what an agent sees, the way an agent would
            refused = await client.call_tool("fx__echo", {"text": "hi"})
    assert refused.is_error
    assert refused.structured_content is not None
    assert refused.structured_content["error"] == "tool_definition_changed"


class _Session:
    """Records what the relay hands the SDK's session (the SDK client drops unknown progress tokens
    itself, so the gateway's own filter is checked here, at the session boundary)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    async def send_notification(self, note: Any, related_request_id: Any = None) -> None:
        self.sent.append((note, related_request_id))


async def test_the_relay_passes_only_the_agents_progress_token_and_chosen_levels() -> None:
    session = _Session()
    ctx: Any = SimpleNamespace(params={"_meta": {"progressToken": "mine"}}, session=session, request_id=7)
    relay = AgentRelay(ctx, frozenset({"warning", "error"}))
    assert relay.progress_token == "mine"
    await relay.notify("notifications/progress", {"progressToken": "someone-else", "progress": 1})
    await relay.notify("notifications/progress", {"progressToken": "mine", "progress": 2})
    await relay.notify("notifications/message", {"level": "info", "data": "dropped"})
    await relay.notify("notifications/message", {"level": "error", "data": "kept"})
    await relay.notify("notifications/progress", {"progressToken": "mine", "progress": "not a number"})
    await relay.notify("notifications/resources/updated", {"uri": "x"})
    assert [(type(n).__name__, rid) for n, rid in session.sent] == [
        ("ProgressNotification", 7),
        ("LoggingMessageNotification", 7),
    ]
    assert session.sent[0][0].params.progress == 2
    assert session.sent[1][0].params.data == "kept"
