"""What an upstream sends during a forwarded call, relayed to the agent that made the call.

An `AgentRelay` is built per `tools/call` from the SDK's request context and
handed down to the upstream link, which calls it for everything the upstream
sends on that call's stream:

- `notifications/progress` is relayed when the agent asked for progress, and
  only with the agent's own token (an upstream cannot address another
  request's progress);
- `notifications/message` (logging) is relayed at the levels the agent chose:
  `logging/setLevel` on its session (handshake protocol versions) or the
  request's `_meta` log level (2026-07-28), filtered here;
- `sampling/createMessage`, `elicitation/create` and `roots/list` go to the
  agent as requests related to its call, when the agent declared the
  capability and its connection can carry a request back (a stateful session
  with SSE responses; stateless JSON has no such channel), and the agent's
  answer goes back to the upstream. Anything else is refused with a
  JSON-RPC error the upstream can handle.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Any, Final, get_args

import mcp_types as types
from mcp.server.connection import allowed_log_levels
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp.shared.message import ServerMessageMetadata
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

__all__ = ["NO_CHANNEL", "AgentRelay", "LogLevels", "session_key"]

LEVELS: Final[tuple[str, ...]] = get_args(types.LoggingLevel)

_Capability = types.ClientCapabilities
_REQUESTS: Final[dict[str, tuple[types.ClientCapabilities, type[BaseModel]]]] = {
    "sampling/createMessage": (_Capability(sampling=types.SamplingCapability()), types.CreateMessageResult),
    "elicitation/create": (_Capability(elicitation=types.ElicitationCapability()), types.ElicitResult),
    "roots/list": (_Capability(roots=types.RootsCapability()), types.ListRootsResult),
}


def session_key(ctx: ServerRequestContext[Any, Any], *, stateful: bool) -> str | None:
    """The agent's MCP session, if it really has one: a streamable HTTP session id (only in
    stateful mode, where the SDK checks it exists and the gateway that it is the caller's; a
    stateless server accepts any value), or the legacy SSE session (checked by its transport)."""
    request = ctx.request
    if not isinstance(request, Request):
        return None
    if request.url.path.startswith("/messages"):
        return request.query_params.get("session_id")
    return request.headers.get("mcp-session-id") if stateful else None


class LogLevels:
    """The level each agent session set with `logging/setLevel` (bounded; the oldest is forgotten)."""

    def __init__(self, *, stateful: bool, capacity: int = 10_000) -> None:
        self._levels: OrderedDict[tuple[uuid.UUID, str], str] = OrderedDict()
        self._stateful = stateful
        self._capacity = capacity

    def set(self, ctx: ServerRequestContext[Any, Any], tenant_id: uuid.UUID, level: str) -> None:
        session = session_key(ctx, stateful=self._stateful)
        if session is None:
            return  # no session for the level to outlive this request
        key = (tenant_id, session)
        self._levels[key] = level
        self._levels.move_to_end(key)
        while len(self._levels) > self._capacity:
            self._levels.popitem(last=False)

    def forget(self, session: str) -> None:
        """The session ended: drop what it set."""
        for key in [k for k in self._levels if k[1] == session]:
            del self._levels[key]

    def level_of(self, session: str) -> str | None:
        return next((level for (_, s), level in self._levels.items() if s == session), None)

    def allowed(self, ctx: ServerRequestContext[Any, Any], tenant_id: uuid.UUID) -> frozenset[str]:
        meta = (ctx.params or {}).get("_meta")
        levels: frozenset[str] = allowed_log_levels(ctx.protocol_version, meta if isinstance(meta, dict) else None)
        session = session_key(ctx, stateful=self._stateful)
        chosen = self._levels.get((tenant_id, session)) if session is not None else None
        if chosen in LEVELS:
            levels = levels & frozenset(LEVELS[LEVELS.index(chosen) :])
        return levels


class AgentRelay:
    def __init__(self, ctx: ServerRequestContext[Any, Any], log_levels: frozenset[str]) -> None:
        self._ctx = ctx
        self._log_levels = log_levels
        meta = (ctx.params or {}).get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        self._token: str | int | None = token if isinstance(token, str | int) else None

    @property
    def progress_token(self) -> str | int | None:
        return self._token

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        params = params or {}
        ctx = self._ctx
        try:
            if method == "notifications/progress":
                if self._token is None or params.get("progressToken") != self._token:
                    return
                progress = types.ProgressNotificationParams.model_validate(params)
                note: types.ServerNotification = types.ProgressNotification(params=progress)
            elif method == "notifications/message":
                if params.get("level") not in self._log_levels:
                    return
                note = types.LoggingMessageNotification(
                    params=types.LoggingMessageNotificationParams.model_validate(params)
                )
            else:
                return  # list changes and resource updates concern the gateway's session, not the agent's
        except ValidationError:
            return  # a malformed notification from the upstream is dropped, not relayed
        await ctx.session.send_notification(note, related_request_id=ctx.request_id)

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        ctx = self._ctx
        known = _REQUESTS.get(method)
        if known is None:
            raise MCPError(types.METHOD_NOT_FOUND, f"the gateway does not relay {method[:100]}")
        capability, result_type = known
        if not ctx.session.can_send_request:
            raise MCPError(types.INVALID_REQUEST, _NO_BACK_CHANNEL.format(method=method))
        if not ctx.session.check_client_capability(capability):
            raise MCPError(types.INVALID_REQUEST, f"the agent behind the gateway does not support {method}")
        if method == "sampling/createMessage" and params and params.get("tools"):
            result_type = types.CreateMessageResultWithTools
        try:
            request = types.server_request_adapter.validate_python({"method": method, "params": params})
        except ValidationError as exc:
            raise MCPError(types.INVALID_PARAMS, f"invalid {method} request: {exc.error_count()} error(s)") from None
        try:
            result = await ctx.session.send_request(
                request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
            )
        except NoBackChannelError:
            raise MCPError(types.INVALID_REQUEST, f"the agent's connection cannot carry {method}") from None
        dumped: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return dumped


class _NoChannel:
    """The relay of a call whose agent has no back-channel (stateless JSON): nothing gets through."""

    progress_token = None

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        return None

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        raise MCPError(types.INVALID_REQUEST, _NO_BACK_CHANNEL.format(method=method[:100]))


_NO_BACK_CHANNEL = (
    "the agent's connection to the gateway cannot carry {method} (that needs a stateful session with SSE responses)"
)
NO_CHANNEL: Final = _NoChannel()
