"""The admin console in a real headless browser (Debian's Chromium driven by Playwright): sign in,
create a tenant, mint a key, call a tool through the gateway with it, see the call in the plot,
approve a drifted tool, sign out. The usage page's screenshot, docs/console.png (the README shows
it), is rewritten when TENANTRY_TEST_SCREENSHOT=1.

`scripts/setup.sh --test` installs Chromium with apt when it is missing; without a browser (or without
Playwright) this test is skipped and says why. Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tenantry.client import connect
from tests.conftest import ADMIN_KEY, ROOT, eventually
from tests.upstream_servers import FixtureUpstream, serve_upstream

CHROMIUM = Path(os.environ.get("TENANTRY_TEST_CHROMIUM", "/usr/bin/chromium"))
# The README's screenshot is refreshed only when asked (TENANTRY_TEST_SCREENSHOT=1): rewriting a tracked
# file on every run dirtied every checkout that ran the suite.
SCREENSHOT = ROOT / "docs" / "console.png"
REFRESH_SCREENSHOT = os.environ.get("TENANTRY_TEST_SCREENSHOT") == "1"

if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `scripts/setup.sh --test` installs Debian's (apt-get install chromium)",
        allow_module_level=True,
    )
async_api = pytest.importorskip("playwright.async_api", reason="Playwright is in the `test` extra")


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    async with async_api.async_playwright() as playwright:
        # --no-sandbox: the suite may run as root (a container), where Chromium's sandbox cannot start.
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            yield await context.new_page()
        finally:
            await browser.close()


async def test_an_admin_runs_a_tenant_from_the_console_in_a_real_browser(gateway_url: str, page: Any) -> None:
    upstream = FixtureUpstream()
    name = f"browser-{uuid.uuid4().hex[:8]}"
    with serve_upstream(upstream) as (upstream_url, _server):
        # Signed out, the console sends the browser to sign in.
        await page.goto(f"{gateway_url}/console/tenants")
        assert page.url.endswith("/console/sign-in")
        await page.fill("input[name=credential]", ADMIN_KEY)
        await page.click("button:has-text('Sign in')")
        await page.wait_for_url(re.compile(r".*/console/tenants$"))

        await page.fill("form[action='/console/tenants'] input[name=name]", name)
        await page.click("button:has-text('Create tenant')")
        await page.wait_for_url(re.compile(r".*/console/tenants/[0-9a-f-]{36}\?notice=.*"))
        assert f"Tenant {name} created." in await page.inner_text("[role=status]")
        tenant_id = page.url.split("/console/tenants/")[1].split("?")[0]
        tenant_page = f"{gateway_url}/console/tenants/{tenant_id}"

        await page.fill("form[action$='/keys'] input[name=name]", "agent")
        await page.click("button:has-text('Create key')")
        secret = (await page.inner_text("#key-secret")).strip()
        assert secret
        await page.goto(tenant_page)
        assert secret not in await page.content()  # the secret is shown once

        await page.fill("form[action$='/upstreams'] input[name=name]", "fx")
        await page.fill("form[action$='/upstreams'] input[name=url]", upstream_url)
        await page.fill("form[action$='/upstreams'] input[name=headers]", '{"Authorization": "Bearer alpha"}')
        await page.click("button:has-text('Add upstream')")
        await page.wait_for_selector("section.tool[data-tool='echo'][data-status='approved']")
        upstream_page = page.url.split("?")[0]

        headers = {"Tenant-ID": tenant_id, "Authorization": f"Bearer {secret}"}
        async with connect(f"{gateway_url}/mcp", headers) as client:
            echoed = await client.call_tool("fx__echo", {"text": "from the console test"})
        assert not echoed.is_error

        plot = "svg[data-name='fx__echo'][data-measure='calls']"

        async def plotted() -> str | None:
            await page.goto(f"{tenant_page}/usage")
            found = await page.query_selector(plot)
            return None if found is None else await found.get_attribute("data-total")

        assert await eventually(plotted, what="the call in the plot") == "1"
        assert "1 call" in await page.inner_html(plot)  # the bar's title: "<hour>: 1 call"
        assert await page.inner_text("#total-calls") == "1"
        shot = await page.screenshot(full_page=True)
        assert shot.startswith(b"\x89PNG")
        if REFRESH_SCREENSHOT:
            SCREENSHOT.write_bytes(shot)

        # A rug pull: the upstream changes echo's description; the review shows the diff; approve it.
        upstream.echo_description = "Echo the text back in upper case, and count its words."
        await page.goto(upstream_page)
        changed = "section.tool[data-tool='echo'][data-status='changed']"
        await page.wait_for_selector(changed)
        assert "upper case" in await page.inner_text(f"{changed} ins")
        assert "unchanged" in await page.inner_text(f"{changed} del")
        await page.click(f"{changed} button:has-text('Approve echo')")
        await page.wait_for_selector("section.tool[data-tool='echo'][data-status='approved']")
        assert "Approved the current definition of echo" in await page.inner_text("[role=status]")
        async with connect(f"{gateway_url}/mcp", headers) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "upper case" in (tools["fx__echo"].description or "")

        await page.click("button:has-text('Sign out')")
        await page.wait_for_url(re.compile(r".*/console/sign-in$"))
        await page.goto(tenant_page)
        assert page.url.endswith("/console/sign-in")
