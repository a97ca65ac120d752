"""The upstream session pool on its own: one session per (tenant, upstream), reused, bounded, aged out."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from tenantry.federation.pool import UpstreamPool
from tenantry.federation.registry import Upstream
from tenantry.secrets import SecretBox
from tenantry.settings import DEV_SECRET_KEY, Settings

BOX = SecretBox([DEV_SECRET_KEY])


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def row(url: str, token: str = "alpha", tenant_id: uuid.UUID | None = None) -> Upstream:
    now = datetime.now(UTC)
    return Upstream(
        tenant_id=tenant_id or uuid.uuid4(),
        id=uuid.uuid4(),
        name="fx",
        url=url,
        transport="streamable_http",
        credentials=BOX.seal({"Authorization": f"Bearer {token}"}),
        header_names=["Authorization"],
        costs={},
        created_at=now,
        updated_at=now,
    )


def pool(settings: Settings, clock: FakeClock, **overrides: Any) -> UpstreamPool:
    return UpstreamPool(settings.model_copy(update=overrides), BOX, clock=clock)


async def test_calls_reuse_one_session_without_a_handshake_per_call(settings: Settings, fixture_upstream: Any) -> None:
    upstream, url = fixture_upstream
    p = pool(settings, FakeClock())
    up = row(url)
    try:
        await p.call_tool(up, "echo", {"text": "warm"})
        before = len(upstream.received)
        for i in range(5):
            result = await p.call_tool(up, "echo", {"text": str(i)})
            assert result.content[0].text == str(i)  # type: ignore[union-attr]
        assert len(upstream.received) - before == 5  # one POST per call, nothing else
        assert p.open_sessions() == 1
    finally:
        await p.aclose()


async def test_the_pool_is_bounded_and_ages_out_idle_sessions(settings: Settings, fixture_upstream: Any) -> None:
    _, url = fixture_upstream
    clock = FakeClock()
    p = pool(settings, clock, upstream_pool_max_sessions=2, upstream_idle_ttl_seconds=60)
    try:
        rows = [row(url) for _ in range(3)]
        for up in rows:
            await p.list_tools(up)
        assert p.open_sessions() == 2
        clock.now += 61
        await p.list_tools(rows[0])
        assert p.open_sessions() == 1
    finally:
        await p.aclose()


async def test_same_upstream_for_two_tenants_means_two_sessions_with_their_own_credential(
    settings: Settings, fixture_upstream: Any
) -> None:
    _, url = fixture_upstream
    p = pool(settings, FakeClock())
    try:
        alpha = {t.name for t in await p.list_tools(row(url, "alpha"))}
        beta = {t.name for t in await p.list_tools(row(url, "beta"))}
        assert p.open_sessions() == 2
    finally:
        await p.aclose()
    assert "rich" in alpha
    assert beta == {"echo"}


async def test_a_legacy_sse_upstream_is_pooled_and_forwarded_too(settings: Settings, fixture_upstream: Any) -> None:
    upstream, url = fixture_upstream
    p = pool(settings, FakeClock())
    sse = replace(row(url.removesuffix("/mcp") + "/sse"), transport="sse")
    upstream.received.clear()
    try:
        names = {t.name for t in await p.list_tools(sse)}
        result = await p.call_tool(sse, "echo", {"text": "over sse"})
    finally:
        await p.aclose()
    assert "echo" in names
    assert result.content[0].text == "over sse"  # type: ignore[union-attr]
    assert upstream.received
    assert all(h.get("authorization") == "Bearer alpha" for h in upstream.received)


async def test_idle_sessions_are_reaped_by_later_traffic_to_another_upstream(
    settings: Settings, fixture_upstream: Any
) -> None:
    _, url = fixture_upstream
    clock = FakeClock()
    p = pool(settings, clock, upstream_idle_ttl_seconds=120)
    busy, idle = row(url), row(url)
    try:
        await p.call_tool(idle, "echo", {"text": "once"})
        await p.call_tool(busy, "echo", {"text": "a"})
        assert p.open_sessions() == 2
        clock.now += 121
        await p.call_tool(busy, "echo", {"text": "b"})
        assert p.open_sessions() == 1
    finally:
        await p.aclose()
