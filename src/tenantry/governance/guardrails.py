"""The output guardrail: personal data in what a tool returns, or relays during the call, redacted or refused.

A tenant's policy sets a mode per tool (`policy.output_guard`): `off`, `redact` (each finding replaced
by its typed placeholder, `[EMAIL]`) or `block` (the result is dropped and the call ends
`pii_blocked`, unbilled). It applies to:

- a built-in's structured result and an upstream's `structuredContent`: every string, walked in place,
  so the JSON keeps its shape (a placeholder is a string where a string was);
- text content, and the text of embedded resources;
- what is relayed to the agent during the call (progress messages, log messages): redacted, or in
  block mode not relayed at all.

The data itself is never logged or recorded: only how many of each kind were found (`/metrics`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import mcp_types as types

from tenantry.errors import Forbidden
from tenantry.governance.pii import redact
from tenantry.tools.base import Relay

Found = Callable[[list[str]], None]
T = TypeVar("T")


class PiiBlocked(Forbidden):
    def __init__(self, tool: str, kinds: list[str]) -> None:
        counts = Counter(kinds)
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        super().__init__(
            f"the output of {tool!r} held personal data ({what}); the tenant's policy blocks it",
            code="pii_blocked",
            extra={"kinds": sorted(counts)},
        )


def redacted(value: Any) -> Any:
    """`value` (JSON) with every kind of personal data in its strings replaced by placeholders."""
    if isinstance(value, str):
        return redact(value)[0]
    if isinstance(value, dict):  # keys too: personal data can be a key (an address book keyed by email)
        return {redact(str(key))[0]: redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redacted(item) for item in value]
    return value


class OutputGuard:
    def __init__(self, mode: str, kinds: frozenset[str] | None, found: Found) -> None:
        self.blocking = mode == "block"
        self._kinds = kinds
        self._found = found

    def text(self, text: str) -> tuple[str, list[str]]:
        return redact(text, self._kinds)

    def value(self, value: Any, found: list[str]) -> Any:
        """`value` (JSON) with every string redacted; what was found is added to `found`."""
        if isinstance(value, str):
            clean, kinds = redact(value, self._kinds)
            found.extend(kinds)
            return clean
        if isinstance(value, dict):
            return {key: self.value(item, found) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item, found) for item in value]
        return value

    def result(self, tool: str, result: dict[str, Any]) -> dict[str, Any]:
        """A built-in's structured result, redacted; raises `PiiBlocked` in block mode when anything is found."""
        found: list[str] = []
        clean: dict[str, Any] = self.value(result, found)
        return self._settle(tool, found, clean)

    def forwarded(self, tool: str, result: types.CallToolResult) -> types.CallToolResult:
        """An upstream's result: text, embedded resources' text and structuredContent."""
        found: list[str] = []
        content: list[Any] = []
        for block in result.content:
            if isinstance(block, types.TextContent):
                text, kinds = self.text(block.text)
                found.extend(kinds)
                content.append(block.model_copy(update={"text": text}) if kinds else block)
            elif isinstance(block, types.EmbeddedResource) and isinstance(block.resource, types.TextResourceContents):
                text, kinds = self.text(block.resource.text)
                found.extend(kinds)
                resource = block.resource.model_copy(update={"text": text})
                content.append(block.model_copy(update={"resource": resource}) if kinds else block)
            else:
                content.append(block)
        update: dict[str, Any] = {"content": content}
        if result.structured_content is not None:
            update["structured_content"] = self.value(result.structured_content, found)
        return self._settle(tool, found, result.model_copy(update=update) if found else result)

    def _settle(self, tool: str, found: list[str], clean: T) -> T:
        if found:
            self._found(found)
            if self.blocking:
                raise PiiBlocked(tool, found)
        return clean

    def relay(self, relay: Relay | None) -> Relay | None:
        return None if relay is None else GuardedRelay(relay, self)


class GuardedRelay:
    """The agent's channel, with what an upstream relays during the call passed through the guard."""

    def __init__(self, relay: Relay, guard: OutputGuard) -> None:
        self._relay = relay
        self._guard = guard

    @property
    def progress_token(self) -> str | int | None:
        return self._relay.progress_token

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        if params is not None:
            found: list[str] = []
            params = self._guard.value(params, found)
            if found:
                self._guard._found(found)
                if self._guard.blocking:
                    return  # block mode: the message is not relayed at all
        await self._relay.notify(method, params)

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        return await self._relay.request(method, params)
