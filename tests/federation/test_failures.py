"""A hanging or dead upstream costs only its own tools: timeouts, the breaker, fast failure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tenantry.app import create_app
from tenantry.client import connect
from tenantry.federation.failures import Breaker
from tenantry.federation.ssrf import check_url
from tenantry.secrets import SecretBox
from tenantry.settings import Settings
from tests.conftest import ADMIN_KEY, OPS, Admin, TenantHandle, serve_asgi
from tests.upstream_servers import FixtureUpstream, serve_upstream


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fragile_gateway(settings: Settings, clock: FakeClock) -> Iterator[str]:
    """A gateway with short upstream timeouts, a two-failure breaker and a clock the test moves."""
    fragile = settings.model_copy(
        update={
            "upstream_call_timeout_seconds": 0.5,
            "upstream_connect_timeout_seconds": 0.5,
            "upstream_breaker_failures": 2,
            "upstream_breaker_cooldown_seconds": 30.0,
        }
    )
    app = create_app(fragile)
    app.state.services.discovery.pool.clock = clock
    with serve_asgi(app) as (url, _server):
        yield url


async def add(admin: Admin, tenant: TenantHandle, name: str, url: str) -> dict[str, Any]:
    body = {"name": name, "url": url, "headers": {"Authorization": "Bearer alpha"}}
    r = await admin.http.post(f"/api/tenants/{tenant.id}/upstreams", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def error_code(result: Any) -> str:
    assert result.is_error
    code: str = result.structured_content["error"]
    return code


async def test_a_hanging_upstream_times_out_and_trips_its_breaker_only(
    fragile_gateway: str, tenant_a: TenantHandle, tenant_b: TenantHandle, clock: FakeClock
) -> None:
    slow, healthy = FixtureUpstream(), FixtureUpstream()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=fragile_gateway, headers=headers, timeout=30) as http:
        admin = Admin(http)
        with serve_upstream(slow) as (slow_url, _), serve_upstream(healthy) as (healthy_url, _):
            await add(admin, tenant_a, "slow", slow_url)
            await add(admin, tenant_a, "good", healthy_url)
            await add(admin, tenant_b, "slow", slow_url)
            async with connect(f"{fragile_gateway}/mcp", tenant_a.headers) as client:
                assert error_code(await client.call_tool("slow__hang", {})) == "upstream_timeout"
                assert error_code(await client.call_tool("slow__hang", {})) == "upstream_timeout"
                calls_before = slow.calls
                opened = await client.call_tool("slow__echo", {"text": "x"})
                assert error_code(opened) == "upstream_unavailable"
                assert opened.structured_content["breaker"] == "open"  # type: ignore[index]
                assert slow.calls == calls_before  # failed fast: the upstream was not asked
                assert not (await client.call_tool("good__echo", {"text": "fine"})).is_error
                assert not (await client.call_tool("data_list", {})).is_error
            async with connect(f"{fragile_gateway}/mcp", tenant_b.headers) as client:
                assert not (await client.call_tool("slow__echo", {"text": "b"})).is_error
            clock.now += 31  # half-open: one trial call goes through and closes the breaker
            async with connect(f"{fragile_gateway}/mcp", tenant_a.headers) as client:
                assert not (await client.call_tool("slow__echo", {"text": "back"})).is_error


async def test_a_dead_upstream_loses_its_tools_not_the_catalog(fragile_gateway: str, tenant_a: TenantHandle) -> None:
    doomed, healthy = FixtureUpstream(), FixtureUpstream()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=fragile_gateway, headers=headers, timeout=30) as http:
        admin = Admin(http)
        with serve_upstream(healthy) as (healthy_url, _):
            with serve_upstream(doomed) as (doomed_url, _):
                dead = await add(admin, tenant_a, "doomed", doomed_url)
                await add(admin, tenant_a, "good", healthy_url)
                async with connect(f"{fragile_gateway}/mcp", tenant_a.headers) as client:
                    assert not (await client.call_tool("doomed__echo", {"text": "x"})).is_error
            async with connect(f"{fragile_gateway}/mcp", tenant_a.headers) as client:
                failed = await client.call_tool("doomed__echo", {"text": "x"})
                assert error_code(failed) in {"upstream_error", "upstream_unavailable", "upstream_timeout"}
                refreshed = await http.post(f"/api/tenants/{tenant_a.id}/upstreams/{dead['id']}/refresh")
                assert refreshed.json()["reachable"] is False
                names = {t.name for t in (await client.list_tools()).tools}
                assert "good__echo" in names
                assert "data_put" in names
                assert not any(n.startswith("doomed__") for n in names)
            health = await http.get("/health", params={"tenant": tenant_a.id}, headers=OPS)
            assert health.status_code == 503
            assert health.json()["checks"]["upstream:doomed"]["status"] == "fail"
            assert health.json()["checks"]["upstream:good"]["status"] == "ok"


async def test_refused_credentials_show_in_health(
    admin: Admin, http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    upstream = FixtureUpstream()
    with serve_upstream(upstream) as (url, _):
        body = {"name": "locked", "url": url, "headers": {"Authorization": "Bearer wrong"}}
        assert (await admin.http.post(f"/api/tenants/{tenant_a.id}/upstreams", json=body)).status_code == 201
        check = (await http.get("/health", params={"tenant": tenant_a.id}, headers=OPS)).json()["checks"][
            "upstream:locked"
        ]
    assert check["reachable"] is False
    assert check["credentials_accepted"] is False, check["detail"]


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() -> None:
    clock = FakeClock()
    breaker = Breaker(3, 10.0, clock)
    for _ in range(2):
        breaker.failure()
    assert breaker.allow()
    breaker.success()
    for _ in range(3):
        breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now += 10
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow()  # one trial at a time
    breaker.failure()
    assert breaker.state == "open"
    clock.now += 10
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"


def test_secret_rotation_re_encrypts_under_the_newest_key() -> None:
    old_key, new_key = "ZGV2LXNlY3JldC1rZXktY2hhbmdlLW1lLTAxMjM0NTY=", "bmV3LXNlY3JldC1rZXktZm9yLXJvdGF0aW9uLTAwMDA="
    sealed = SecretBox([old_key]).seal({"Authorization": "Bearer x"})
    both = SecretBox([new_key, old_key])
    rotated = both.rotate(sealed)
    assert SecretBox([new_key]).open(rotated) == {"Authorization": "Bearer x"}
    with pytest.raises(ValueError, match="does not decrypt"):
        SecretBox([new_key]).open(sealed)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:1/mcp", False),
        ("http://localhost:1/mcp", False),
        ("http://192.168.1.10/mcp", False),
        ("http://169.254.169.254/", False),
        ("http://[::ffff:169.254.169.254]/", False),
        ("http://metadata.google.internal/", False),
        ("http://8.8.8.8/mcp", True),
    ],
)
async def test_ssrf_policy_refuses_internal_addresses_by_default(url: str, allowed: bool) -> None:
    from tenantry.errors import BadRequest

    if allowed:
        await check_url(url, allow_private=False, allow_loopback=False)
    else:
        with pytest.raises(BadRequest):
            await check_url(url, allow_private=False, allow_loopback=False)


async def test_private_setting_never_opens_link_local() -> None:
    from tenantry.errors import BadRequest

    await check_url("http://10.1.2.3/", allow_private=True, allow_loopback=True)
    with pytest.raises(BadRequest):
        await check_url("http://169.254.1.1/", allow_private=True, allow_loopback=True)


async def test_a_tool_that_errors_does_not_trip_the_breaker(fragile_gateway: str, tenant_a: TenantHandle) -> None:
    upstream = FixtureUpstream()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=fragile_gateway, headers=headers, timeout=30) as http:
        with serve_upstream(upstream) as (url, _):
            await add(Admin(http), tenant_a, "flaky", url)
            async with connect(f"{fragile_gateway}/mcp", tenant_a.headers) as client:
                for _ in range(3):
                    assert error_code(await client.call_tool("flaky__crash", {})) == "upstream_error"
                assert not (await client.call_tool("flaky__echo", {"text": "still fine"})).is_error
