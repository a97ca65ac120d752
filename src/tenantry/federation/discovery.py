"""Each tenant's upstream offerings: discovered live, cached with a TTL, pinned against rug pulls.

A tenant's view is built from its upstream rows (read under RLS) and each upstream's `tools/list` and,
when it offers them, its prompts, resources and resource templates, concurrently; an upstream that fails
contributes nothing and a failed status, never an exception. Every definition (a tool's name,
description, input schema; what a model reads of a prompt or a resource, see `offerings.py`) is pinned
(sha256) the first time it is seen; a later definition with another digest is withheld from listings,
refused on use with `<kind>_definition_changed`, and logged once in `upstream_tool_drift` until an admin
approves it. A tenant with no upstreams is cached too, so the built-in path makes no round trip within
the TTL.

The TTL bounds staleness; it is not how changes are normally seen. Whoever
changes an upstream (this process's admin API, another replica, the CLI)
makes PostgreSQL announce it, and `federation/changes.py` calls `invalidate`
here within about a second. A view being built while an invalidation
arrives is handed to its caller but not cached, so a build that read the
rows just before a change cannot keep the old rows for a whole TTL.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import mcp_types as types
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import CONTROL, Database
from tenantry.errors import NotFound
from tenantry.federation import registry
from tenantry.federation.failures import UpstreamError, describe_failure
from tenantry.federation.offerings import (
    COST_META,
    PIN_PROMPT,
    PIN_RESOURCE,
    PIN_TEMPLATE,
    PROMPT,
    URI_SEPARATOR,
    Template,
    TenantView,
    UpstreamPrompt,
    UpstreamStatus,
    UpstreamTool,
    pin_kind,
    prompt_name,
    template_pattern,
)
from tenantry.federation.pool import UpstreamPool
from tenantry.federation.registry import SEPARATOR, Upstream, definition_digest
from tenantry.federation.screening import screen
from tenantry.settings import Settings

log = logging.getLogger(__name__)


# Tenants whose views are kept at once (the least recently used go first, and are built again when asked).
_MAX_VIEWS: Final = 100_000


@dataclass(slots=True)
class _Building:
    """A view being built: one build at a time, its callers (waiting too), invalidations seen meanwhile."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    generation: int = 0


def _dump(tool: types.Tool) -> dict[str, Any]:
    dumped: dict[str, Any] = tool.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped


class Discovery:
    def __init__(self, settings: Settings, db: Database, pool: UpstreamPool, *, max_views: int = _MAX_VIEWS) -> None:
        self._ttl = settings.upstream_discovery_ttl_seconds
        self._prompt_cost = settings.prompt_get_cost
        self._db = db
        self.pool = pool
        self._views: OrderedDict[uuid.UUID, TenantView] = OrderedDict()
        self._max_views = max_views
        # Discovery per (tenant, upstream), so one upstream's change re-lists only that upstream.
        self._statuses: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, UpstreamStatus]] = {}
        self._refreshing: dict[uuid.UUID, asyncio.Task[TenantView]] = {}
        # Builds under way (kept only meanwhile): one that saw an invalidation (or `_epoch` move) is not cached.
        self._building: dict[uuid.UUID, _Building] = {}
        self._epoch = 0
        pool.listeners.append(self._announced)

    @property
    def ttl_seconds(self) -> float:
        return self._ttl

    def _generation(self, tenant_id: uuid.UUID) -> tuple[int, int]:
        building = self._building.get(tenant_id)
        return self._epoch, building.generation if building is not None else 0

    def sizes(self) -> dict[str, int]:
        """The tenants whose views are cached, and those being built now."""
        return {"views": len(self._views), "building": len(self._building)}

    def invalidate(self, tenant_id: uuid.UUID, upstream_id: uuid.UUID | None = None) -> None:
        """Forget the tenant's view; with `upstream_id`, also that upstream's discovered tools."""
        if (building := self._building.get(tenant_id)) is not None:
            building.generation += 1
        self._views.pop(tenant_id, None)
        if upstream_id is not None:
            self._statuses.pop((tenant_id, upstream_id), None)

    def _announced(self, tenant_id: uuid.UUID, upstream_id: uuid.UUID, method: str, params: dict[str, Any]) -> None:
        if method.endswith("/list_changed"):
            self.invalidate(tenant_id, upstream_id)

    def invalidate_tenant(self, tenant_id: uuid.UUID) -> None:
        """Forget the tenant's view and every one of its upstreams' discovered tools."""
        self.invalidate(tenant_id)
        for key in [k for k in self._statuses if k[0] == tenant_id]:
            del self._statuses[key]

    def invalidate_all(self) -> None:
        """Forget every tenant's view and discovered tools (after changes may have gone unannounced)."""
        self._epoch += 1
        self._views.clear()
        self._statuses.clear()

    async def view(self, tenant_id: uuid.UUID, *, fresh: bool = False) -> TenantView:
        """The tenant's upstream tools. An expired view with upstreams is served while it refreshes
        in the background, so a slow upstream never holds up a tenant's calls or listings."""
        view = self._views.get(tenant_id)
        if view is not None and not fresh:
            if self.pool.clock() < view.expires_at:
                return view
            if view.statuses:
                self._refresh_soon(tenant_id)
                return view
        return await self._rebuild(tenant_id, fresh=fresh)

    async def _rebuild(self, tenant_id: uuid.UUID, *, fresh: bool) -> TenantView:
        building = self._building.get(tenant_id) or self._building.setdefault(tenant_id, _Building())
        building.users += 1
        try:
            async with building.lock:
                return await self._rebuild_locked(tenant_id, fresh=fresh)
        finally:
            building.users -= 1
            if not building.users:
                del self._building[tenant_id]

    async def _rebuild_locked(self, tenant_id: uuid.UUID, *, fresh: bool) -> TenantView:
        view = self._views.get(tenant_id)
        if view is not None and not fresh and self.pool.clock() < view.expires_at:
            return view
        generation = self._generation(tenant_id)
        try:
            view = await self._build(tenant_id, fresh=fresh, generation=generation)
        except (DBAPIError, OSError) as exc:
            # Without the database the upstream rows are unknown: built-ins only, retried soon.
            log.warning("upstreams of tenant %s unreadable (%s)", tenant_id, type(exc).__name__)
            stale = self._views.get(tenant_id)
            return stale if stale is not None else TenantView(expires_at=self.pool.clock() + 1.0)
        if self._generation(tenant_id) == generation:
            self._views[tenant_id] = view
            self._views.move_to_end(tenant_id)
            while len(self._views) > self._max_views:
                self._views.popitem(last=False)
        return view

    def _refresh_soon(self, tenant_id: uuid.UUID) -> None:
        if tenant_id in self._refreshing:
            return
        task = asyncio.create_task(self._rebuild(tenant_id, fresh=False), name=f"discovery-{tenant_id}")
        self._refreshing[tenant_id] = task
        task.add_done_callback(lambda _: self._refreshing.pop(tenant_id, None))

    async def aclose(self) -> None:
        for task in list(self._refreshing.values()):
            task.cancel()
        await asyncio.gather(*self._refreshing.values(), return_exceptions=True)
        await self.pool.aclose()

    async def status(self, tenant_id: uuid.UUID, upstream_id: uuid.UUID) -> UpstreamStatus:
        view = await self.view(tenant_id, fresh=True)
        found = view.statuses.get(upstream_id)
        if found is None:
            raise NotFound(f"no upstream {upstream_id}", code="upstream_not_found")
        return found

    async def _build(self, tenant_id: uuid.UUID, *, fresh: bool, generation: tuple[int, int]) -> TenantView:
        async with self._db.tenant(tenant_id, plane=CONTROL) as conn:
            rows = await registry.list_upstreams(conn)
        now = self.pool.clock()
        view = TenantView(expires_at=now + self._ttl)
        known = {row.id for row in rows}
        for key in [k for k in self._statuses if k[0] == tenant_id and k[1] not in known]:
            del self._statuses[key]
        if not rows:
            return view

        async def discover(row: Upstream) -> UpstreamStatus:
            if not row.enabled:  # switched off by an admin: not asked, offers nothing, known for its status
                return UpstreamStatus(row, detail="disabled")
            cached = self._statuses.get((tenant_id, row.id))
            if not fresh and cached is not None and now < cached[0] and cached[1].upstream == row:
                return cached[1]
            status = await self._discover(row)
            if self._generation(tenant_id) == generation:
                self._statuses[(tenant_id, row.id)] = (self.pool.clock() + self._ttl, status)
            return status

        statuses = await asyncio.gather(*(discover(row) for row in rows))
        for status in statuses:
            view.statuses[status.upstream.id] = status
            if status.upstream.enabled:
                view.upstreams[status.upstream.name] = status.upstream
                self._fill(view, status)
        return view

    def _fill(self, view: TenantView, status: UpstreamStatus) -> None:
        """Put what `status` offers into `view`, namespaced; withheld entries are known but not listed."""
        upstream = status.upstream
        for key, definition in status.current.items():
            kind, held, flagged = pin_kind(key), key in status.drifted or key in status.flagged, key in status.flagged
            raw = status.raw.get(key, definition)
            if kind == "tool":
                name = f"{upstream.name}{SEPARATOR}{key}"
                cost = int(upstream.costs.get(key, 1))
                meta = {**definition.get("_meta", {}), COST_META: cost}
                tool = UpstreamTool(
                    name, key, upstream, types.Tool.model_validate({**definition, "name": name, "_meta": meta}),
                    cost, self.pool, held, flagged,
                )  # fmt: skip
                view.tools[name] = tool
                if not held:
                    view.definitions.append(tool.definition)
            elif kind == "prompt":
                own = key.removeprefix(PIN_PROMPT)
                name = prompt_name(upstream.name, own)
                cost = int(upstream.costs.get(key, self._prompt_cost))
                prompt = types.Prompt.model_validate({**raw, "name": name})
                view.prompts[name] = UpstreamPrompt(
                    PROMPT + name, own, upstream, prompt, cost, self.pool, held, flagged
                )
                if not held:
                    view.prompt_definitions.append(prompt)
            elif kind == "resource":
                uri = f"{upstream.name}{URI_SEPARATOR}{key.removeprefix(PIN_RESOURCE)}"
                resource = types.Resource.model_validate({**raw, "uri": uri})
                view.resources[uri] = (resource, held, flagged)
                if not held:
                    view.resource_definitions.append(resource)
            else:
                own = key.removeprefix(PIN_TEMPLATE)
                template = types.ResourceTemplate.model_validate(
                    {**raw, "uriTemplate": f"{upstream.name}{URI_SEPARATOR}{own}"}
                )
                view.templates.setdefault(upstream.name, []).append(
                    Template(template, own, template_pattern(own), held, flagged)
                )
                if not held:
                    view.template_definitions.append(template)

    async def _discover(self, upstream: Upstream) -> UpstreamStatus:
        status = UpstreamStatus(upstream)
        try:
            tools = await self.pool.list_tools(upstream)
            offered = await self._offered(upstream)
        except UpstreamError as exc:
            status.detail = f"{exc.code}: {exc.detail}"
            refused = exc.extra.get("credentials_refused")
            if refused is None and exc.__cause__ is not None:
                refused = describe_failure(exc.__cause__)[1]
            status.credentials_accepted = False if refused else None
            return status
        status.reachable = status.credentials_accepted = True
        status.current = {tool.name: _dump(tool) for tool in tools if SEPARATOR not in tool.name}
        for key, raw in offered.items():
            status.raw[key] = raw
            status.current[key] = pinned_form(key, raw)
        siblings = frozenset(key for key in status.current if pin_kind(key) == "tool")
        async with self._db.tenant(upstream.tenant_id, plane=CONTROL) as conn:
            pins = await registry.pins_for(conn, upstream.id)
            for tool_name, definition in status.current.items():
                pin = pins.get(tool_name)
                findings = screen(definition, siblings)
                if findings and not (pin is not None and pin.reviewed and pin.sha256 == definition_digest(definition)):
                    # Screened at every discovery: withheld until an admin approves this very definition.
                    status.flagged[tool_name] = findings
                    log.warning(
                        "%r of upstream %s (tenant %s) looks poisoned (%s); withheld until approved",
                        tool_name,
                        upstream.name,
                        upstream.tenant_id,
                        ", ".join(sorted({f.kind for f in findings})),
                    )
                if pin is None:
                    if tool_name not in status.flagged:  # first sight of a clean definition: pinned as seen
                        await registry.pin_tool(conn, upstream.tenant_id, upstream.id, definition)
                elif pin.sha256 != definition_digest(definition):
                    status.drifted.append(tool_name)
                    if await registry.record_drift(conn, upstream.tenant_id, upstream.id, pin, definition):
                        log.warning(
                            "%r of upstream %s (tenant %s) changed its definition; withheld until approved",
                            tool_name,
                            upstream.name,
                            upstream.tenant_id,
                        )
        return status

    async def _offered(self, upstream: Upstream) -> dict[str, dict[str, Any]]:
        """The upstream's prompts, resources and templates (as it sent them) by pin key, for what its
        handshake says it offers. A kind that fails to list is left out (and logged), not the upstream."""
        capabilities = await self.pool.capabilities(upstream)
        kinds = []
        if isinstance(capabilities.get("prompts"), dict):
            kinds.append(("prompts/list", "prompts", "name", PIN_PROMPT))
        if isinstance(capabilities.get("resources"), dict):
            kinds.append(("resources/list", "resources", "uri", PIN_RESOURCE))
            kinds.append(("resources/templates/list", "resourceTemplates", "uriTemplate", PIN_TEMPLATE))
        offered: dict[str, dict[str, Any]] = {}
        for method, items, key, prefix in kinds:
            try:
                for item in await self._pages(upstream, method, items):
                    if isinstance(item, dict) and isinstance(item.get(key), str) and item[key]:
                        offered[prefix + item[key]] = item
            except UpstreamError as exc:
                log.warning("%s of upstream %s (tenant %s) failed: %s", method, upstream.name, upstream.tenant_id, exc)
        return offered

    async def _pages(self, upstream: Upstream, method: str, items: str) -> list[Any]:
        """Every page of a listing (at most 50 pages and 1,000 items: an upstream cannot keep the gateway
        paging, or fill its memory)."""
        found: list[Any] = []
        cursor: str | None = None
        for _ in range(50):
            result = await self.pool.request(upstream, method, {"cursor": cursor} if cursor else {})
            page = result.get(items)
            found.extend(page if isinstance(page, list) else [])
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor or len(found) >= _MAX_OFFERED:
                break
        return found[:_MAX_OFFERED]

    async def review(self, tenant_id: uuid.UUID, upstream_id: uuid.UUID) -> list[dict[str, Any]]:
        """Each tool: pinned vs current definition and its status (approved, changed, removed)."""
        status = await self.status(tenant_id, upstream_id)
        async with self._db.tenant(tenant_id, plane=CONTROL) as conn:
            pins = await registry.pins_for(conn, upstream_id)
        out = []
        for name in sorted(set(pins) | set(status.current)):
            pin, current = pins.get(name), status.current.get(name)
            if current is None:
                state = "removed" if status.reachable else "unknown"
            elif name in status.flagged:
                state = "flagged"
            elif pin is None or pin.sha256 == definition_digest(current):
                state = "approved"
            else:
                state = "changed"
            findings = screen(current, frozenset(status.current)) if current else []
            out.append(
                {
                    "tool": name,
                    "status": state,
                    "findings": [f.public() for f in findings],
                    "pinned": {"sha256": pin.sha256, "definition": pin.definition} if pin else None,
                    "current": {"sha256": definition_digest(current), "definition": current} if current else None,
                }
            )
        return out

    async def approve(self, tenant_id: uuid.UUID, upstream_id: uuid.UUID, tool: str) -> dict[str, Any]:
        status = await self.status(tenant_id, upstream_id)
        definition = status.current.get(tool)
        if definition is None:
            raise NotFound(f"upstream {status.upstream.name!r} offers no tool {tool[:100]!r} now", code="unknown_tool")
        async with self._db.tenant(tenant_id, plane=CONTROL) as conn:
            pin = await registry.pin_tool(conn, tenant_id, upstream_id, definition, reviewed=True)
        self.invalidate(tenant_id, upstream_id)
        return {"tool": tool, "status": "approved", "sha256": pin.sha256}


_MAX_OFFERED = 1000


def pinned_form(key: str, raw: dict[str, Any]) -> dict[str, Any]:
    """What a model reads of a prompt, resource or template, shaped like a tool definition so that one
    digest and one screener serve every kind: its pin key as the name, its title and description, and
    the rest it reads (a prompt's arguments, a resource's name and media type) as the input schema."""
    if key.startswith(PIN_PROMPT):
        read: dict[str, Any] = {"arguments": raw.get("arguments") or []}
    else:
        read = {k: raw[k] for k in ("name", "mimeType") if isinstance(raw.get(k), str)}
    form = {"name": key, "inputSchema": read}
    form.update({k: raw[k] for k in ("title", "description") if isinstance(raw.get(k), str)})
    return form
