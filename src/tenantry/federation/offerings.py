"""What a tenant's upstreams offer behind the gateway: tools, prompts, resources and resource templates.

Names are rewritten so that two upstreams cannot collide and a client cannot address what is not
its own:

- a tool `t` of upstream `fx` is `fx__t`, a prompt `p` is `fx__p`;
- a resource URI `u` is `fx+u` (`test://static` becomes `fx+test://static`), a template likewise.

An upstream name is a slug (`[a-z][a-z0-9-]*`), so it holds no `+`: the text before a URI's first
`+` names the upstream, the rest is the upstream's own URI, forwarded verbatim (never normalised)
and only to that upstream of the caller's own tenant (views are per tenant, read under RLS). And it
is forwarded only when it is a resource that upstream listed, or fits a template it published,
and neither is withheld: a crafted URI (`fx+../gx/...`, `gx+...` of an upstream the tenant does
not have, `f%78+...`) finds nothing and is refused as an unknown resource.

Everything a model reads of a prompt or a resource (name, title, description, a prompt's
arguments) is pinned and screened like a tool's (`discovery.py`), under a key naming its kind:
`prompt:<name>`, `resource:<uri>`, `template:<uri template>`; tools keep their plain name.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import mcp_types as types
from pydantic import BaseModel, ConfigDict, Field

from tenantry.errors import Forbidden
from tenantry.federation.pool import UpstreamPool
from tenantry.federation.registry import NAME, SEPARATOR, Upstream
from tenantry.federation.screening import Finding
from tenantry.tools.base import ToolContext

COST_META: Final = "io.tenantry/cost"
URI_SEPARATOR: Final = "+"
# Pipeline names (and usage-event names) of what is not a tool call.
RESOURCE: Final = "resource:"
PROMPT: Final = "prompt:"
# Pin keys of what is not a tool (tools are pinned under their own name).
PIN_PROMPT: Final = "prompt:"
PIN_RESOURCE: Final = "resource:"
PIN_TEMPLATE: Final = "template:"


def split_uri(uri: str) -> tuple[str, str] | None:
    """(upstream name, the upstream's own URI) of a gateway URI, or None when it names no upstream."""
    name, plus, own = uri.partition(URI_SEPARATOR)
    if not plus or not NAME.fullmatch(name) or not own:
        return None
    return name, own


_EXPRESSION = re.compile(r"\{([+#./;?&]?)([^{}]*)\}")


def template_pattern(template: str) -> re.Pattern[str]:
    """A regular expression matching the URIs an RFC 6570 template expands to (levels 1-4, loosely:
    what each operator can produce, without checking variable names)."""
    out, at = [], 0
    for match in _EXPRESSION.finditer(template):
        out.append(re.escape(template[at : match.start()]))
        operator = match.group(1)
        out.append(
            {
                "": r"[^/?#&]*",
                "+": r"[^?#]*",
                "#": r"(?:#.*)?",
                ".": r"(?:\.[^/?#&]*)*",
                "/": r"(?:/[^/?#&]*)*",
                ";": r"(?:;[^/?#]*)*",
                "?": r"(?:\?[^#]*)?",
                "&": r"(?:&[^#]*)?",
            }[operator]
        )
        at = match.end()
    out.append(re.escape(template[at:]))
    return re.compile("".join(out))


class PassThrough(BaseModel):
    """Upstream arguments are validated by the upstream, against the schema it published."""

    model_config = ConfigDict(extra="allow")


class PromptArguments(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    arguments: dict[str, str] = Field(default_factory=dict)


class ReadArguments(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    uri: str = Field(min_length=1, max_length=4096)


def _withheld(kind: str, name: str, upstream: Upstream, own: str, flagged: bool) -> Forbidden:
    extra = {"upstream": upstream.name, kind: own}
    if flagged:
        detail = f"the definition of {kind} {name[:200]!r} looks poisoned; an admin must review it"
        return Forbidden(detail, code=f"{kind}_definition_flagged", extra=extra)
    detail = f"the definition of {kind} {name[:200]!r} changed since it was approved; an admin must review it"
    return Forbidden(detail, code=f"{kind}_definition_changed", extra=extra)


@dataclass(frozen=True, slots=True)
class UpstreamTool:
    """A catalog entry that forwards to its upstream; withheld when its definition drifted."""

    name: str
    tool: str
    upstream: Upstream
    definition: types.Tool
    cost: int
    pool: UpstreamPool
    withheld: bool = False
    flagged: bool = False  # withheld because the screener flagged it (else: its definition drifted)
    arguments: type[BaseModel] = PassThrough

    def precheck(self, args: BaseModel) -> None:
        """Nothing: the upstream checks its own arguments against the schema it published."""

    async def execute(self, ctx: ToolContext, args: BaseModel) -> types.CallToolResult:
        if self.withheld:
            raise _withheld("tool", self.name, self.upstream, self.tool, self.flagged)
        return await self.pool.call_tool(self.upstream, self.tool, args.model_dump(), ctx.relay)


@dataclass(frozen=True, slots=True)
class UpstreamPrompt:
    """`prompts/get` of an upstream's prompt, as a pipeline entry named `prompt:<upstream>__<prompt>`."""

    name: str
    prompt: str
    upstream: Upstream
    definition: types.Prompt
    cost: int
    pool: UpstreamPool
    withheld: bool = False
    flagged: bool = False
    arguments: type[BaseModel] = PromptArguments

    def precheck(self, args: BaseModel) -> None:
        """Nothing: the upstream checks the arguments of its own prompt."""

    async def execute(self, ctx: ToolContext, args: PromptArguments) -> dict[str, Any]:
        if self.withheld:
            raise _withheld("prompt", self.definition.name, self.upstream, self.prompt, self.flagged)
        params = {"name": self.prompt, "arguments": args.arguments}
        return namespaced_contents(await self.pool.request(self.upstream, "prompts/get", params), self.upstream.name)


@dataclass(frozen=True, slots=True)
class UpstreamResource:
    """`resources/read` of one upstream URI (listed, or fitting a published template), as a pipeline
    entry named `resource:<gateway uri>`."""

    name: str
    uri: str
    upstream: Upstream
    cost: int
    pool: UpstreamPool
    withheld: bool = False
    flagged: bool = False
    arguments: type[BaseModel] = ReadArguments

    def precheck(self, args: BaseModel) -> None:
        """Nothing: the URI was resolved when the entry was found."""

    async def execute(self, ctx: ToolContext, args: BaseModel) -> dict[str, Any]:
        if self.withheld:
            raise _withheld("resource", self.name.removeprefix(RESOURCE), self.upstream, self.uri, self.flagged)
        result = await self.pool.request(self.upstream, "resources/read", {"uri": self.uri})
        return namespaced_contents(result, self.upstream.name)


def namespaced_contents(result: dict[str, Any], upstream: str) -> dict[str, Any]:
    """A read or prompt result with every resource URI in it given its gateway name, so what the
    agent reads back names what it can read again."""
    contents = result.get("contents")
    if isinstance(contents, list):
        result["contents"] = [_prefixed(item, upstream) for item in contents]
    messages = result.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, dict) and isinstance(content.get("resource"), dict):
                content["resource"] = _prefixed(content["resource"], upstream)
    return result


def _prefixed(item: Any, upstream: str) -> Any:
    if isinstance(item, dict) and isinstance(item.get("uri"), str):
        return {**item, "uri": f"{upstream}{URI_SEPARATOR}{item['uri']}"}
    return item


@dataclass(frozen=True, slots=True)
class Template:
    definition: types.ResourceTemplate  # namespaced
    own: str  # the upstream's own template
    pattern: re.Pattern[str]
    withheld: bool
    flagged: bool


@dataclass
class UpstreamStatus:
    upstream: Upstream
    reachable: bool = False
    credentials_accepted: bool | None = None
    detail: str | None = None
    # What a model reads of everything offered, as last seen, by pin key (for review): a tool under its
    # own name, the rest under `prompt:`, `resource:`, `template:` keys.
    current: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The definitions as the upstream sent them, by pin key (prompts, resources, templates).
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)
    drifted: list[str] = field(default_factory=list)
    # Definitions the screener flagged and no admin approved: withheld, with what was found.
    flagged: dict[str, list[Finding]] = field(default_factory=dict)

    def check(self) -> dict[str, Any]:
        # A disabled upstream is off on purpose: nothing of it is served, so nothing of it is failing.
        ok = (self.reachable or not self.upstream.enabled) and not self.drifted and not self.flagged
        held = set(self.drifted) | set(self.flagged)
        counts = {"tool_count": 0, "prompt_count": 0, "resource_count": 0, "template_count": 0}
        for key in self.current:
            if key not in held:
                counts[f"{pin_kind(key)}_count"] += 1
        return {
            "status": "ok" if ok else "fail",
            "upstream_id": str(self.upstream.id),
            "enabled": self.upstream.enabled,
            "reachable": self.reachable,
            "credentials_accepted": self.credentials_accepted,
            **counts,
            "drift": sorted(self.drifted),
            "flagged": sorted(self.flagged),
            **({"detail": self.detail} if self.detail else {}),
        }


def pin_kind(key: str) -> str:
    for prefix, kind in ((PIN_PROMPT, "prompt"), (PIN_RESOURCE, "resource"), (PIN_TEMPLATE, "template")):
        if key.startswith(prefix):
            return kind
    return "tool"


@dataclass
class TenantView:
    """One tenant's upstream offerings, built by discovery, held for its TTL."""

    expires_at: float
    tools: dict[str, UpstreamTool] = field(default_factory=dict)
    definitions: list[types.Tool] = field(default_factory=list)
    statuses: dict[uuid.UUID, UpstreamStatus] = field(default_factory=dict)
    prompts: dict[str, UpstreamPrompt] = field(default_factory=dict)
    prompt_definitions: list[types.Prompt] = field(default_factory=list)
    # By gateway URI: (namespaced definition, withheld, flagged).
    resources: dict[str, tuple[types.Resource, bool, bool]] = field(default_factory=dict)
    resource_definitions: list[types.Resource] = field(default_factory=list)
    templates: dict[str, list[Template]] = field(default_factory=dict)  # by upstream name
    template_definitions: list[types.ResourceTemplate] = field(default_factory=list)
    upstreams: dict[str, Upstream] = field(default_factory=dict)  # by name

    def resource(self, uri: str, pool: UpstreamPool, cost: int) -> UpstreamResource | None:
        """The entry that reads gateway URI `uri`, or None when no upstream of this tenant offers it."""
        split = split_uri(uri)
        upstream = self.upstreams.get(split[0]) if split is not None else None
        if split is None or upstream is None:
            return None
        own = split[1]
        cost = int(upstream.costs.get(PIN_RESOURCE + own, cost))
        listed = self.resources.get(uri)
        if listed is not None:
            _, withheld, flagged = listed
            return UpstreamResource(RESOURCE + uri, own, upstream, cost, pool, withheld, flagged)
        for template in self.templates.get(upstream.name, ()):
            if template.pattern.fullmatch(own):
                held, flagged = template.withheld, template.flagged
                return UpstreamResource(RESOURCE + uri, own, upstream, cost, pool, held, flagged)
        return None


def prompt_name(upstream: str, prompt: str) -> str:
    return f"{upstream}{SEPARATOR}{prompt}"
