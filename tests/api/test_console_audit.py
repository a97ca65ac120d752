"""The console's audit trail: pages of 100 past the first with "older" and "newer" links that keep the
filters, the filtered trail exported as the REST API exports it, and the hash chain verified from a button
(a record tampered with by the owner shows as broken); bad input is an error page."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from html import unescape

import httpx
from redis.asyncio import Redis
from sqlalchemy import text

from tenantry.db.engine import Database
from tenantry.settings import Settings
from tests.api.test_console import sign_in
from tests.audit.test_chain import append, record
from tests.conftest import Admin, eventually

_SEQ = re.compile(r"<tr><td>[^<]*</td><td>(\d+)</td>")
_LINK = re.compile(r'<a href="([^"]+)" rel="(prev|next)">')


def seqs(page: httpx.Response) -> list[int]:
    assert page.status_code == 200, page.text
    return [int(found) for found in _SEQ.findall(page.text)]


def links(page: httpx.Response) -> dict[str, str]:
    """The page's "newer" (prev) and "older" (next) links."""
    return {rel: unescape(href) for href, rel in _LINK.findall(page.text)}


SUBJECT = "pager"


async def a_trail(db: Database, count: int) -> uuid.UUID:
    """A trail of `count` records of subject `SUBJECT` (every third refused), a microsecond apart. The
    console's own page views are recorded in the same trail (subject `console:admin:key`), after them."""
    tenant = uuid.uuid4()
    start = datetime.now(UTC) - timedelta(hours=1)
    made = [record(tenant, n, at=start) for n in range(1, count + 1)]
    for kept in made:
        kept.subject = SUBJECT
    await append(db, tenant, made)
    return tenant


async def test_the_trail_pages_older_and_newer_past_100_records_keeping_the_filters(
    gateway_url: str, db: Database
) -> None:
    tenant = await a_trail(db, 250)
    base = f"/console/tenants/{tenant}/audit"
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        await sign_in(http)
        first = await http.get(base, params={"subject": SUBJECT})
        assert seqs(first) == list(range(250, 150, -1))
        assert set(links(first)) == {"next"}  # nothing newer than the latest
        second = await http.get(links(first)["next"])
        assert seqs(second) == list(range(150, 50, -1))
        third = await http.get(links(second)["next"])
        assert seqs(third) == list(range(50, 0, -1))
        assert set(links(third)) == {"prev"}  # the oldest page
        back = await http.get(links(third)["prev"])
        assert seqs(back) == seqs(second)
        latest = await http.get(links(back)["prev"])
        assert seqs(latest) == seqs(first)

        # Filters ride along in every link: refused records only (every third), 83 of them across pages of 100.
        refused = await http.get(base, params={"decision": "refused", "since": "2000-01-01T00:00"})
        assert "subject=pager" in links(first)["next"]
        assert seqs(refused) == list(range(249, 0, -3))
        assert links(refused) == {}
        filtered = await http.get(base, params={"decision": "admitted", "subject": SUBJECT})
        older = links(filtered)["next"]
        assert "decision=admitted" in older
        assert "subject=pager" in older
        assert all(seq % 3 for seq in seqs(await http.get(older)))
        assert len(seqs(await http.get(older))) == 67  # 167 admitted: 100 then 67
        exports = re.findall(r'href="([^"]*/export[^"]*)"', first.text)
        assert len(exports) == 2
        refused_exports = re.findall(r'href="([^"]*/export[^"]*)"', refused.text)
        assert all("decision=refused" in unescape(href) for href in refused_exports)


async def test_the_export_is_the_rest_export_of_the_same_filter(gateway_url: str, admin: Admin, db: Database) -> None:
    tenant = await a_trail(db, 30)
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        await sign_in(http)
        for kind in ("csv", "jsonl"):
            params = {"format": kind, "decision": "refused", "subject": "", "since": "", "tool": ""}
            console = await http.get(f"/console/tenants/{tenant}/audit/export", params=params)
            rest = await admin.http.get(
                f"/api/tenants/{tenant}/audit/export", params={"format": kind, "decision": "refused"}
            )
            assert console.status_code == 200, console.text
            assert console.content == rest.content
            assert console.headers["content-disposition"] == f'attachment; filename="audit-{tenant}.{kind}"'
            assert console.headers["cache-control"] == "no-store"
        lines = console.text.splitlines()
        assert len(lines) == 10  # seq 3, 6, ..., 30
        assert '"seq":3,' in lines[0]  # oldest first
    async with httpx.AsyncClient(base_url=gateway_url) as anonymous:
        r = await anonymous.get(f"/console/tenants/{tenant}/audit/export")
    assert (r.status_code, r.headers["location"]) == (303, "/console/sign-in")


async def verdict(http: httpx.AsyncClient, page: str) -> str:
    """The verdict's page once the walk is done (it reloads itself while the walk runs)."""

    async def done() -> str | None:
        r = await http.get(page)
        assert r.status_code == 200, r.text
        return None if "refresh" in r.headers else r.text

    return await eventually(done, what="the chain's verdict")


async def test_verifying_the_chain_shows_intact_then_the_first_broken_link_after_tampering(
    gateway_url: str, db: Database
) -> None:
    tenant = await a_trail(db, 12)
    verify = f"/console/tenants/{tenant}/audit/verify"
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        csrf = await sign_in(http)
        assert f'action="{verify}"' in (await http.get(f"/console/tenants/{tenant}/audit")).text
        assert "No verification in the last hour" in (await http.get(verify)).text
        started = await http.post(verify, data={"csrf": csrf})
        assert (started.status_code, started.headers["location"]) == (303, verify)
        intact = await verdict(http, verify)
        assert "Intact" in intact
        checked = re.search(r"(\d+) record\(s\) checked", intact)
        assert checked is not None
        assert int(checked.group(1)) >= 12  # and the console's own reads of the trail since
        # The owner (the application role cannot) turns refused record 6 into an admitted one.
        async with db.system() as conn:
            await conn.execute(
                text("UPDATE audit_records SET decision = 'admitted' WHERE tenant_id = :t AND seq = 6"), {"t": tenant}
            )
        assert (await http.post(verify, data={"csrf": csrf})).status_code == 303

        async def broken_shown() -> str | None:
            shown = await verdict(http, verify)
            return shown if "Broken" in shown else None

        broken = await eventually(broken_shown, what="the broken verdict")
        assert "at seq 6" in broken
        assert "the record was edited" in broken
        assert "5 record(s) before it are intact" in broken
        forged = await http.post(verify, data={})
        assert forged.status_code == 403
        unknown = await http.post(f"/console/tenants/{uuid.uuid4()}/audit/verify", data={"csrf": csrf})
        assert unknown.status_code == 404
        assert unknown.headers["content-type"].startswith("text/html")


async def test_a_walk_under_way_is_shown_running_and_a_second_click_starts_no_other(
    gateway_url: str, db: Database, settings: Settings
) -> None:
    tenant = await a_trail(db, 3)
    verify = f"/console/tenants/{tenant}/audit/verify"
    running = f"{settings.redis_key_prefix}:console:verify:{tenant}:running"
    redis = Redis.from_url(settings.redis_url)
    try:
        await redis.set(running, "2026-12-03T09:00:00+00:00", ex=60)  # as a walk on another replica leaves it
        async with httpx.AsyncClient(base_url=gateway_url) as http:
            csrf = await sign_in(http)
            assert (await http.post(verify, data={"csrf": csrf})).status_code == 303
            shown = await http.get(verify)
            assert shown.headers["refresh"] == "2"
            assert "Verifying the chain (since 2026-12-03T09:00:00+00:00 UTC)" in shown.text
            assert await redis.get(f"{settings.redis_key_prefix}:console:verify:{tenant}:verdict") is None
            await redis.delete(running)  # that walk ended without a verdict (its process died)
            assert "No verification in the last hour" in (await http.get(verify)).text
    finally:
        await redis.aclose()


async def test_bad_paging_and_filter_input_is_an_error_page(gateway_url: str, admin: Admin, db: Database) -> None:
    tenant = await a_trail(db, 3)
    base = f"/console/tenants/{tenant}/audit"
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        await sign_in(http)
        cases = [
            ({"older": "not-a-cursor"}, "cursor is not one this API gave"),
            ({"older": "MTc.Mw", "newer": "MTc.Mw"}, "older or newer records, not both"),
            ({"since": "yesterday"}, "since is not an ISO 8601 time"),
            ({"since": "2026-01-02", "until": "2026-01-01"}, "since must be before until"),
            ({"decision": "maybe"}, "decision in the query"),
            ({"subject": "a\x01b"}, "subject in the query: must be printable text"),
        ]
        for params, said in cases:
            for path in (base, f"{base}/export") if "older" not in params else (base,):
                r = await http.get(path, params=params)
                assert r.status_code == 400, (params, path, r.text)
                assert r.headers["content-type"].startswith("text/html"), (params, path)
                assert said in unescape(r.text), (params, path, r.text)
        ok = await http.get(f"{base}/export", params={"format": "xml"})
        assert ok.status_code == 400
    rest = await admin.http.get(f"/api/tenants/{tenant}/audit", params={"decision": "maybe"})
    assert (rest.status_code, rest.json()["error"]) == (400, "invalid_request")
