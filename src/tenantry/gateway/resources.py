"""The MCP face of what is not a tool: resources, resource templates, prompts, completion, subscriptions.

Each handler answers for the tenant of its own message (`context.principal_of`). Listings show what
the caller's credential scope and the tenant's policy let it use, each item known to them by its
pipeline name (`resource:<uri>`, `prompt:<name>`); reads and prompt gets run through the one call
pipeline (`ToolCalls.call` with `method=`), so they are authorised, metered, guarded and audited
like tool calls. Completion and subscriptions are served only for what the caller could read or get.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from tenantry.errors import TenantryError
from tenantry.federation.offerings import PROMPT, RESOURCE, UpstreamResource, split_uri
from tenantry.federation.pool import UpstreamPool
from tenantry.federation.registry import Upstream
from tenantry.gateway.calls import ToolCalls
from tenantry.gateway.catalog import PROMPT_GET, RESOURCE_READ, Catalog
from tenantry.gateway.context import jsonrpc_error, principal_of
from tenantry.gateway.outcomes import EVENT_ID_META, ToolOutcome
from tenantry.gateway.relay import session_key
from tenantry.gateway.subscriptions import Subscriptions
from tenantry.observability import note
from tenantry.tenancy import Principal, bind_principal
from tenantry.tools import data_resources

RESOURCE_NOT_FOUND: Final = -32002  # what the MCP specification names for an unknown resource
_PAGE: Final = 100
_NOT_FOUND: Final = {"resource_not_found": RESOURCE_NOT_FOUND, "prompt_not_found": types.INVALID_PARAMS}
_CALLER_ERRORS: Final = frozenset({"invalid_arguments", "argument_invalid", "argument_forbidden"})


def _cursor(cursor: str | None) -> tuple[str, Any]:
    """("data", key to continue after) or ("upstream", offset) from a resources/list cursor."""
    if cursor is None:
        return "data", None
    try:
        section, at = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise MCPError(types.INVALID_PARAMS, "the cursor is not one this server gave") from None
    if (section, type(at)) not in {("data", str), ("upstream", int)} or (section == "upstream" and at < 0):
        raise MCPError(types.INVALID_PARAMS, "the cursor is not one this server gave")
    return section, at


def _next(section: str, at: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps([section, at]).encode()).decode().rstrip("=")


class Offerings:
    def __init__(self, calls: ToolCalls, catalog: Catalog, subscriptions: Subscriptions, *, stateful: bool) -> None:
        self._calls = calls
        self._catalog = catalog
        self.subscriptions = subscriptions
        self._stateful = stateful

    def handlers(self) -> dict[str, Any]:
        """The SDK `Server` handlers this serves, by keyword."""
        return {
            "on_list_resources": self.list_resources,
            "on_list_resource_templates": self.list_templates,
            "on_read_resource": self.read_resource,
            "on_subscribe_resource": self.subscribe,
            "on_unsubscribe_resource": self.unsubscribe,
            "on_subscriptions_listen": self.listen,
            "on_list_prompts": self.list_prompts,
            "on_get_prompt": self.get_prompt,
            "on_completion": self.complete,
        }

    def _caller(self, ctx: ServerRequestContext[Any, Any], method: str) -> Principal:
        principal = principal_of(ctx)
        note(rpc_method=method)
        self.subscriptions.seen(principal.tenant_id, session_key(ctx, stateful=self._stateful), ctx.session)
        return principal

    # -- resources -------------------------------------------------------------------------

    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        """The data store's keys first (a page at a time, from the database), then the upstreams'."""
        principal = self._caller(ctx, "resources/list")
        section, at = _cursor(params.cursor if params is not None else None)
        resources: list[types.Resource] = []
        if section == "data":
            page, after = await data_resources.listed(self._calls.context(principal), at, _PAGE)
            resources = await self._calls.visible(principal, page, lambda r: RESOURCE + r.uri)
            if after is not None:
                return types.ListResourcesResult(resources=resources, next_cursor=_next("data", after))
            section, at = "upstream", 0  # the store is done: the page goes on with the upstreams'
        listed = (await self._catalog.view(principal)).resource_definitions
        end = at + _PAGE - len(resources)
        resources += await self._calls.visible(principal, listed[at:end], lambda r: RESOURCE + r.uri)
        following = _next("upstream", end) if end < len(listed) else None
        return types.ListResourcesResult(resources=resources, next_cursor=following)

    async def list_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        principal = self._caller(ctx, "resources/templates/list")
        view = await self._catalog.view(principal)
        templates = [data_resources.TEMPLATE, *view.template_definitions]
        shown = await self._calls.visible(principal, templates, lambda t: RESOURCE + t.uri_template)
        return types.ListResourceTemplatesResult(resource_templates=shown)

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        principal = self._caller(ctx, RESOURCE_READ)
        uri = str(params.uri)
        with bind_principal(principal):
            outcome = await self._calls.call(principal, RESOURCE + uri, {"uri": uri}, method=RESOURCE_READ)
        return types.ReadResourceResult.model_validate(_answer(outcome))

    async def _readable(self, principal: Principal, uri: str) -> Any:
        """What reads gateway URI `uri` for `principal`, or None when it may not or nothing does."""
        name = RESOURCE + uri
        if not await self._calls.visible(principal, [name], str):
            return None
        return await self._catalog.find(principal, RESOURCE_READ, name)

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        principal = self._caller(ctx, "resources/subscribe")
        session_id = self._session(ctx)
        uri = str(params.uri)
        entry = await self._readable(principal, uri)
        if entry is None or getattr(entry, "withheld", False):
            raise MCPError(RESOURCE_NOT_FOUND, f"resource_not_found: no resource {uri[:300]!r}")
        await self.subscriptions.subscribe(principal.tenant_id, session_id, ctx.session, uri, entry)
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        principal = self._caller(ctx, "resources/unsubscribe")
        await self.subscriptions.unsubscribe(principal.tenant_id, self._session(ctx), str(params.uri))
        return types.EmptyResult()

    def _session(self, ctx: ServerRequestContext[Any, Any]) -> str:
        session_id = session_key(ctx, stateful=self._stateful)
        if session_id is None:
            raise MCPError(
                types.INVALID_REQUEST,
                "resource subscriptions need a session to deliver updates on: the legacy SSE transport, "
                "streamable HTTP with stateful sessions, or subscriptions/listen (2026-07-28)",
            )
        return session_id

    async def listen(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        principal = self._caller(ctx, "subscriptions/listen")

        async def resolve(uri: str) -> Any:
            entry = await self._readable(principal, uri)
            return entry if isinstance(entry, UpstreamResource) and not entry.withheld else None

        return await self.subscriptions.listen(principal.tenant_id, ctx, params, resolve)

    # -- prompts ---------------------------------------------------------------------------

    async def list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        principal = self._caller(ctx, "prompts/list")
        prompts = (await self._catalog.view(principal)).prompt_definitions
        return types.ListPromptsResult(prompts=await self._calls.visible(principal, prompts, lambda p: PROMPT + p.name))

    async def get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        principal = self._caller(ctx, PROMPT_GET)
        arguments = {"arguments": dict(params.arguments or {})}
        with bind_principal(principal):
            outcome = await self._calls.call(principal, PROMPT + params.name, arguments, method=PROMPT_GET)
        return types.GetPromptResult.model_validate(_answer(outcome))

    # -- completion ------------------------------------------------------------------------

    async def complete(
        self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        """Completion of a prompt's or a template's argument, by the upstream that offers it (the data
        store's own template completes keys). Not metered: like a listing, it runs nothing."""
        principal = self._caller(ctx, "completion/complete")
        ref, argument = params.ref, params.argument
        forwarded: dict[str, Any] = {"argument": argument.model_dump(mode="json")}
        if params.context is not None:
            forwarded["context"] = params.context.model_dump(mode="json", by_alias=True, exclude_none=True)
        view = await self._catalog.view(principal)
        if isinstance(ref, types.PromptReference):
            prompt = view.prompts.get(ref.name)
            allowed = await self._calls.visible(principal, [PROMPT + ref.name], str)
            if prompt is None or prompt.withheld or not allowed:
                raise MCPError(types.INVALID_PARAMS, f"prompt_not_found: no prompt named {ref.name[:100]!r}")
            result = await self._upstream(prompt.pool, prompt.upstream, {"type": "ref/prompt", "name": prompt.prompt})
            return types.CompleteResult.model_validate(await result(forwarded))
        uri = ref.uri
        if not await self._calls.visible(principal, [RESOURCE + uri], str):
            raise MCPError(RESOURCE_NOT_FOUND, f"resource_not_found: no resource template {uri[:300]!r}")
        if uri == data_resources.TEMPLATE.uri_template:
            keys = await data_resources.completed(self._calls.context(principal), argument.value)
            return types.CompleteResult(completion=types.Completion(values=keys[:100], has_more=len(keys) >= 100))
        split = split_uri(uri)
        templates = view.templates.get(split[0], []) if split is not None else []
        template = next((t for t in templates if split is not None and t.own == split[1] and not t.withheld), None)
        upstream = view.upstreams.get(split[0]) if split is not None else None
        if template is None or upstream is None or self._catalog.pool is None:
            raise MCPError(RESOURCE_NOT_FOUND, f"resource_not_found: no resource template {uri[:300]!r}")
        result = await self._upstream(self._catalog.pool, upstream, {"type": "ref/resource", "uri": template.own})
        return types.CompleteResult.model_validate(await result(forwarded))

    async def _upstream(self, pool: UpstreamPool, upstream: Upstream, ref: dict[str, Any]) -> _Ask:
        async def ask(params: dict[str, Any]) -> dict[str, Any]:
            try:
                return await pool.request(upstream, "completion/complete", {**params, "ref": ref})
            except TenantryError as exc:
                raise jsonrpc_error(exc) from None

        return ask


_Ask = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _answer(outcome: ToolOutcome) -> dict[str, Any]:
    """A read's or a prompt get's result as on the wire (with its usage event id), or the JSON-RPC error
    that refuses it: these methods have no tool-level errors."""
    error = outcome.error
    if error is not None:
        code = _NOT_FOUND.get(error.code)
        if code is None:
            code = types.INVALID_PARAMS if error.code in _CALLER_ERRORS else jsonrpc_error(error).error.code
        raise MCPError(code, f"{error.code}: {error.detail}", data=error.body())
    result = dict(outcome.result or {})
    if outcome.event_id is not None:
        result["_meta"] = {**result.get("_meta", {}), EVENT_ID_META: str(outcome.event_id)}
    return result
