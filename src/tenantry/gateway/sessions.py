"""Stateful MCP sessions: each one is its caller's alone, and what the gateway keeps for it ends with it.

The SDK's session manager binds a session to the credential that opened it (`TenantAuth` names the
tenant, the key and the subject), answering 404 to anyone else, and discards a session however it
ends: DELETE from the client, the idle timeout, a crash. `Sessions` adds the two things the gateway
needs: it tells `on_end` listeners (so the state kept per session, like the agent's log level, is
dropped then), and `end(session_id)` ends a live session on an admin's kill. An ended session's id
answers 404 from then on; a client that opens a new session starts from nothing.

Behind a balancer, each session's id names the replica that owns it (`mint`, see `replicas.py`).

It relies on two private methods of the SDK's manager (`_discard_session`, where every ending goes, and
`_admit_session`, where every session is registered); `tests/gateway/test_sessions.py` and
`tests/test_replicas.py` fail if they change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

log = logging.getLogger(__name__)


class Sessions(StreamableHTTPSessionManager):
    def __init__(self, *, mint: Callable[[], str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_end: list[Callable[[str], None]] = []
        self._mint = mint

    def _admit_session(self, requestor: Any) -> StreamableHTTPServerTransport | None:
        transport = super()._admit_session(requestor)
        if transport is None or self._mint is None or transport.mcp_session_id is None:
            return transport
        # The SDK's random id, replaced (before anything has seen it) by one that names this replica.
        minted, new = transport.mcp_session_id, self._mint()
        self._server_instances[new] = self._server_instances.pop(minted)
        if minted in self._session_owners:
            self._session_owners[new] = self._session_owners.pop(minted)
        transport.mcp_session_id = new
        return transport

    def live(self, session_id: str) -> bool:
        return session_id in self._server_instances

    async def end(self, session_id: str) -> bool:
        """End a live session on this replica (False: it is not here)."""
        transport = self._server_instances.get(session_id)
        if transport is None:
            return False
        await self._discard_session(session_id, transport)
        return True

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        ended = session_id in self._server_instances
        await super()._discard_session(session_id, transport)
        if ended:
            for listener in self.on_end:
                try:
                    listener(session_id)
                except Exception:  # one listener's bug must not keep the others from forgetting the session
                    log.exception("forgetting session %s failed", session_id[:64])
