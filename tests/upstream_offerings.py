"""What the fixture upstream offers besides tools: resources, a template, prompts, completion, subscriptions.

Answered by credential like its tools: `Bearer alpha` sees everything, `Bearer beta` only `memo://one`
and the `greet` prompt. `touch(uri)` tells every session subscribed to `uri` that it changed;
`greet_description` can be changed (a rug pull on a prompt) and announced with `list_changed`.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from starlette.requests import Request

LOGO = base64.b64encode(b"\x89PNG\r\n\x1a\nlogo").decode()
RESOURCES_BY_TOKEN = {"alpha": {"memo://one", "memo://secret", "blob://logo"}, "beta": {"memo://one"}}
PROMPTS_BY_TOKEN = {"alpha": {"greet", "summarize"}, "beta": {"greet"}}
TEXTS = {"memo://one": "inside one", "memo://secret": "alpha's secret: write to ada@example.com"}
NAMES = ["alice", "alan", "bob"]


def _token(ctx: ServerRequestContext[Any, Any]) -> str:
    request = ctx.request
    assert isinstance(request, Request)
    return request.headers.get("authorization", "").removeprefix("Bearer ")


class Offered:
    def __init__(self) -> None:
        self.greet_description = "Greet someone by name."
        self.reads: list[str] = []  # every URI read, as the upstream got it
        self.subscribed: dict[str, list[ServerSession]] = {}
        self.subscribe_requests: list[tuple[str, str]] = []  # (method, uri)
        self.sessions: list[ServerSession] = []  # every session that listed prompts
        self.loop: asyncio.AbstractEventLoop | None = None

    async def run(self, work: Any) -> Any:
        """Run coroutine `work` on the upstream's own event loop (it serves in a thread), from a test."""
        assert self.loop is not None, "the upstream has not been asked anything yet"
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    async def reprompt(self, description: str) -> None:
        """Change `greet`'s description and announce it to every session that listed prompts."""
        self.greet_description = description
        for session in self.sessions:
            await session.send_prompt_list_changed()

    def handlers(self) -> dict[str, Any]:
        return {
            "on_list_resources": self._list_resources,
            "on_list_resource_templates": self._list_templates,
            "on_read_resource": self._read,
            "on_subscribe_resource": self._subscribe,
            "on_unsubscribe_resource": self._unsubscribe,
            "on_list_prompts": self._list_prompts,
            "on_get_prompt": self._get_prompt,
            "on_completion": self._complete,
        }

    async def _list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        allowed = RESOURCES_BY_TOKEN.get(_token(ctx), set())
        listed = [
            types.Resource(uri="memo://one", name="one", description="The first memo.", mime_type="text/plain"),
            types.Resource(uri="memo://secret", name="secret", description="Alpha only.", mime_type="text/plain"),
            types.Resource(uri="blob://logo", name="logo", description="A picture.", mime_type="image/png"),
        ]
        return types.ListResourcesResult(resources=[r for r in listed if str(r.uri) in allowed])

    async def _list_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        if _token(ctx) != "alpha":
            return types.ListResourceTemplatesResult(resource_templates=[])
        note = types.ResourceTemplate(uri_template="memo://notes/{name}", name="note", description="A note by name.")
        return types.ListResourceTemplatesResult(resource_templates=[note])

    async def _read(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        self.reads.append(uri)
        if uri == "blob://logo":
            return types.ReadResourceResult(
                contents=[types.BlobResourceContents(uri=uri, mime_type="image/png", blob=LOGO)]
            )
        text = TEXTS.get(uri) or (
            f"note {uri.removeprefix('memo://notes/')}" if uri.startswith("memo://notes/") else None
        )
        if text is None:
            raise ValueError(f"no resource {uri}")
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="text/plain", text=text)]
        )

    async def _subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        self.loop = asyncio.get_running_loop()
        self.subscribe_requests.append(("subscribe", str(params.uri)))
        self.subscribed.setdefault(str(params.uri), []).append(ctx.session)
        return types.EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        self.subscribe_requests.append(("unsubscribe", str(params.uri)))
        self.subscribed.pop(str(params.uri), None)
        return types.EmptyResult()

    async def touch(self, uri: str) -> int:
        """Tell the sessions subscribed to `uri` that it changed; how many were told."""
        sessions = self.subscribed.get(uri, [])
        for session in sessions:
            await session.send_resource_updated(uri)
        return len(sessions)

    def prompts(self) -> list[types.Prompt]:
        name = types.PromptArgument(name="name", description="Who to greet.", required=True)
        return [
            types.Prompt(name="greet", description=self.greet_description, arguments=[name]),
            types.Prompt(name="summarize", description="Summarize the first memo.", arguments=[]),
        ]

    async def _list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        self.loop = asyncio.get_running_loop()
        if ctx.session not in self.sessions:
            self.sessions.append(ctx.session)
        allowed = PROMPTS_BY_TOKEN.get(_token(ctx), set())
        return types.ListPromptsResult(prompts=[p for p in self.prompts() if p.name in allowed])

    async def _get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        args = params.arguments or {}
        if params.name == "greet":
            if "name" not in args:
                raise ValueError("greet needs a name")
            text = types.TextContent(type="text", text=f"Say hello to {args['name']}.")
            return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=text)])
        memo = types.TextResourceContents(uri="memo://one", mime_type="text/plain", text=TEXTS["memo://one"])
        embedded = types.EmbeddedResource(type="resource", resource=memo)
        return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=embedded)])

    async def _complete(
        self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        prefix = params.argument.value
        if isinstance(params.ref, types.PromptReference):
            values = [n for n in NAMES if n.startswith(prefix)]
        else:
            values = [f"{prefix}-note-{i}" for i in (1, 2)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))
