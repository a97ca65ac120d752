"""Resource subscriptions and list changes, relayed from upstreams to the agents of their own tenant.

The gateway runs stateful sessions (the standalone stream carries the notifications) over one stateful
upstream that two tenants share, each with its own credential and so its own upstream session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.subscriptions import ResourceUpdated

from tests.conftest import Admin, TenantHandle, eventually
from tests.federation.test_upstreams import add_upstream
from tests.gateway.test_relay import stateful_upstream, streaming_gateway

__all__ = ["stateful_upstream", "streaming_gateway"]  # fixtures shared with the relay tests

# resources/subscribe is replaced by subscriptions/listen from 2026-07-28 on; handshake-era agents send it.
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


class Listener:
    """An agent that keeps every notification the gateway sends it."""

    def __init__(self) -> None:
        self.heard: list[Any] = []

    async def handle(self, message: Any) -> None:
        if isinstance(message, types.ServerNotification | types.ResourceUpdatedNotification) or hasattr(
            message, "method"
        ):
            self.heard.append(message)

    def updates(self) -> list[str]:
        return [str(m.params.uri) for m in self.heard if isinstance(m, types.ResourceUpdatedNotification)]

    def prompt_changes(self) -> int:
        return sum(isinstance(m, types.PromptListChangedNotification) for m in self.heard)

    @asynccontextmanager
    async def connect(self, url: str, headers: dict[str, str]) -> AsyncIterator[Client]:
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(url, http_client=http), mode="legacy", message_handler=self.handle) as client,
        ):
            yield client


async def test_an_update_reaches_the_subscribed_agent_of_that_tenant_only_under_its_gateway_uri(
    streaming_gateway: str, admin: Admin, tenant_a: TenantHandle, tenant_b: TenantHandle, stateful_upstream: Any
) -> None:
    upstream, url = stateful_upstream
    await add_upstream(admin, tenant_a, url, "alpha")
    await add_upstream(admin, tenant_b, url, "beta")
    a, b = Listener(), Listener()
    async with (
        a.connect(f"{streaming_gateway}/mcp", tenant_a.headers) as agent_a,
        b.connect(f"{streaming_gateway}/mcp", tenant_b.headers) as agent_b,
    ):
        assert "fx+memo://one" in {str(r.uri) for r in (await agent_b.list_resources()).resources}
        await agent_a.subscribe_resource("fx+memo://one")
        await agent_a.subscribe_resource("tenantry://data/k")  # a built-in: nothing to subscribe upstream
        assert ("subscribe", "memo://one") in upstream.offered.subscribe_requests
        assert await upstream.offered.run(upstream.offered.touch("memo://one")) >= 1

        async def heard() -> list[str]:
            return a.updates()

        assert await eventually(heard, what="the update at agent A") == ["fx+memo://one"]
        await agent_b.call_tool("data_put", {"key": "k", "value": 1})  # B's own key k: not A's resource
        await agent_a.call_tool("data_put", {"key": "k", "value": 2})

        async def both() -> bool:
            return a.updates() == ["fx+memo://one", "tenantry://data/k"]

        assert await eventually(both, what="the data-store update at agent A")
        await agent_b.list_prompts()  # a round trip on B's session, after the update went out
        assert b.updates() == []  # B never subscribed: B hears nothing of A's

        await agent_a.unsubscribe_resource("fx+memo://one")
        assert upstream.offered.subscribe_requests[-1] == ("unsubscribe", "memo://one")  # the last one left
        with_secret = await agent_b.list_resources()
        assert "fx+memo://secret" not in {str(r.uri) for r in with_secret.resources}


async def test_a_changed_prompt_list_reaches_the_agent_and_the_changed_prompt_is_withheld(
    streaming_gateway: str, admin: Admin, tenant_a: TenantHandle, stateful_upstream: Any
) -> None:
    upstream, url = stateful_upstream
    await add_upstream(admin, tenant_a, url, "alpha")
    agent = Listener()
    async with agent.connect(f"{streaming_gateway}/mcp", tenant_a.headers) as client:
        assert "fx__greet" in {p.name for p in (await client.list_prompts()).prompts}
        try:
            await upstream.offered.run(upstream.offered.reprompt("Greet someone warmly."))

            async def changed() -> int:
                return agent.prompt_changes()

            await eventually(changed, what="prompts/list_changed at the agent")

            async def withheld() -> bool:
                return "fx__greet" not in {p.name for p in (await client.list_prompts()).prompts}

            assert await eventually(withheld, what="the changed prompt withheld")
        finally:
            upstream.offered.greet_description = "Greet someone by name."


async def test_a_listen_stream_on_the_2026_protocol_hears_its_tenants_updates(
    streaming_gateway: str, admin: Admin, tenant_a: TenantHandle, stateful_upstream: Any
) -> None:
    upstream, url = stateful_upstream
    await add_upstream(admin, tenant_a, url, "alpha")
    async with (
        httpx2.AsyncClient(headers=tenant_a.headers, timeout=30) as http,
        Client(streamable_http_client(f"{streaming_gateway}/mcp", http_client=http)) as client,
    ):
        async with client.listen(resource_subscriptions=["fx+memo://secret", "fx+nope://x"]) as subscription:
            assert ("subscribe", "memo://secret") in upstream.offered.subscribe_requests  # only what it may read
            assert ("subscribe", "nope://x") not in upstream.offered.subscribe_requests
            await upstream.offered.run(upstream.offered.touch("memo://secret"))
            async with asyncio.timeout(10):
                event = await anext(aiter(subscription))
        assert isinstance(event, ResourceUpdated)
        assert event.uri == "fx+memo://secret"

    async def released() -> bool:  # the stream ended: the gateway lets go of the upstream subscription
        return upstream.offered.subscribe_requests[-1] == ("unsubscribe", "memo://secret")

    assert await eventually(released, within=10, what="the upstream unsubscribe")
