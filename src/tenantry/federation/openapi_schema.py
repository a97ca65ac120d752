"""An OpenAPI 3.0/3.1 document read as MCP tools: one per operation, named, described and typed.

Pure functions over the parsed document (no I/O), so the mapping is the same at registration (to
refuse a document that yields nothing usable) and in the session (`openapi.py`) that serves it.

- Name: the operationId, or `<method>_<path>` when there is none, reduced to MCP's tool-name
  characters (`A-Za-z0-9_.-`). Runs of `_` collapse to one, because `__` separates the upstream's
  name from the tool's in the gateway; names are cut at 64 characters (with a digest of the rest),
  and a duplicate gets `_2`, `_3`, ...
- Description: the summary and the description, or `METHOD /path` when the document has neither.
- Input schema: one object; every path, query and header parameter is a property under its own
  name, and the JSON request body is the property `body`. A name used in two places (a path `id`
  and a query `id`) becomes `<name>__<in>` in each. Local `$ref`s are inlined, with cycles and depth
  cut (a cut reference becomes an unconstrained schema) and a budget on the schema's size.
- Header parameters the gateway owns (the credential headers, `Host`, `Content-Type`, ...) are left
  out: a model cannot set them. Cookie parameters, and bodies that are not JSON, are not supported;
  an operation whose body is not JSON is left out.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urljoin

import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs; safe_load is all that is used

from tenantry.errors import BadRequest

METHODS: Final = ("get", "put", "post", "delete", "patch")
MAX_NAME: Final = 64
_MAX_DEPTH: Final = 12  # nested $refs
_MAX_LEVELS: Final = 64  # nested JSON of a schema, $refs inlined (far below Python's recursion limit)
_MAX_NODES: Final = 5000  # schema nodes per tool, after $refs are inlined
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.-]+")
_UNDERSCORES: Final = re.compile(r"_{2,}")
_DROPPED: Final = frozenset({"discriminator", "xml", "externalDocs", "example", "nullable"})
_GATEWAY_HEADERS: Final = frozenset(
    {"host", "content-length", "content-type", "accept", "connection", "transfer-encoding", "cookie", "authorization"}
)


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str  # as the API knows it
    location: str  # path, query, header or body
    argument: str  # as the tool's input schema names it
    required: bool


@dataclass(frozen=True, slots=True)
class Operation:
    tool: str
    method: str
    path: str
    tags: tuple[str, ...]
    parameters: tuple[Parameter, ...]
    definition: dict[str, Any]  # the MCP tool definition, as on the wire


def invalid(why: str) -> BadRequest:
    return BadRequest(f"not a usable OpenAPI 3 document: {why}", code="invalid_openapi_document")


def parse_document(raw: bytes | str) -> dict[str, Any]:
    """A document from JSON or YAML text."""
    try:
        found = json.loads(raw)
    except (ValueError, RecursionError):
        try:
            _check_yaml(raw)
            found = yaml.safe_load(raw)
        except (yaml.YAMLError, RecursionError) as exc:
            raise invalid("neither JSON nor YAML") from exc
    if not isinstance(found, dict):
        raise invalid("the document is not an object")
    return found


def _check_yaml(raw: bytes | str) -> None:
    """Refuse, before building anything, YAML that would cost far more than its size: an alias
    repeats a node without copying it, and expanded (to JSON, to store it) a few nested ones make
    gigabytes of a kilobyte ("billion laughs"); deep nesting makes PyYAML slow and recursive. The
    events are read lazily, so a refusal stops at the offending one."""
    depth = 0
    for event in yaml.parse(raw):
        if isinstance(event, yaml.AliasEvent):
            raise invalid("YAML aliases (*name) are not accepted")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > _MAX_LEVELS:
                raise invalid(f"it nests deeper than {_MAX_LEVELS} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def check_document(doc: dict[str, Any]) -> dict[str, Any]:
    version = doc.get("openapi")
    if not isinstance(version, str) or not re.match(r"^3\.[01]\.\d+", version):
        raise invalid(f"'openapi' must be 3.0.x or 3.1.x, not {str(version)[:20]!r} (Swagger 2 is not read)")
    if not isinstance(doc.get("paths"), dict):
        raise invalid("it has no 'paths' object")
    return doc


def check_filters(operations: dict[str, Any] | None) -> dict[str, list[str]]:
    """`{"include": [...], "exclude": [...]}`: globs on the tool name or operationId, or `tag:<glob>`."""
    filters = operations or {}
    if not isinstance(filters, dict) or set(filters) - {"include", "exclude"}:
        raise BadRequest("operations takes 'include' and 'exclude' lists only", code="invalid_operations")
    out: dict[str, list[str]] = {}
    for key, patterns in filters.items():
        ok = isinstance(patterns, list) and len(patterns) <= 100
        if not ok or not all(isinstance(p, str) and 0 < len(p) <= 200 for p in patterns):
            raise BadRequest(f"operations.{key} is a list of up to 100 patterns", code="invalid_operations")
        out[key] = list(patterns)
    return out


def _matches(patterns: Iterable[str], names: tuple[str, ...], tags: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern.startswith("tag:"):
            if any(fnmatch.fnmatchcase(tag, pattern[4:]) for tag in tags):
                return True
        elif any(fnmatch.fnmatchcase(name, pattern) for name in names):
            return True
    return False


def tool_name(raw: str) -> str:
    name = _UNDERSCORES.sub("_", _UNSAFE.sub("_", raw)).strip("_.-") or "operation"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}_{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
    return name


def server_url(doc: dict[str, Any], base: str, *, fetched: bool) -> str:
    """The API's base URL: the first server's URL (its variables at their defaults), resolved against
    `base` (the document's URL, or the base URL given with an uploaded document) when relative. With no
    server, OpenAPI says `/` (the fetched document's origin); an uploaded document's base is `base`."""
    servers = doc.get("servers")
    first = servers[0] if isinstance(servers, list) and servers and isinstance(servers[0], dict) else {}
    url = first.get("url")
    if not isinstance(url, str) or not url:
        return urljoin(base, "/") if fetched else base
    variables = first.get("variables") if isinstance(first.get("variables"), dict) else {}
    for name, variable in (variables or {}).items():
        if isinstance(variable, dict) and isinstance(variable.get("default"), str):
            url = url.replace("{" + str(name) + "}", variable["default"])
    return urljoin(base, url)


class _Resolver:
    """Inlines local `$ref`s of one tool's schema: cycle-safe, depth- and size-bounded."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.budget = _MAX_NODES

    def target(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            return None  # remote references are not fetched
        node: Any = self.doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def schema(self, node: Any, stack: tuple[str, ...] = (), level: int = 0) -> Any:
        self.budget -= 1
        if self.budget < 0 or len(stack) > _MAX_DEPTH or level > _MAX_LEVELS:
            return {}
        level += 1
        if isinstance(node, list):
            return [self.schema(item, stack, level) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            found = self.target(ref)
            if ref in stack or not isinstance(found, dict):
                return {k: v for k, v in node.items() if k in ("description", "title")}
            resolved = self.schema(found, (*stack, ref), level)
            siblings = {k: self.schema(v, stack, level) for k, v in node.items() if k != "$ref" and k not in _DROPPED}
            return {**resolved, **siblings} if isinstance(resolved, dict) else resolved
        out = {k: self.schema(v, stack, level) for k, v in node.items() if k not in _DROPPED}
        if node.get("nullable") is True and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]  # OpenAPI 3.0's nullable, as JSON Schema says it
        return out

    def deref(self, node: Any) -> Any:
        """A parameter or request body object that may itself be a `$ref` (one level of indirection)."""
        for _ in range(_MAX_DEPTH):
            if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
                return node
            node = self.target(node["$ref"])
        return None


def _json_body(resolver: _Resolver, body: Any) -> tuple[dict[str, Any], bool] | bool | None:
    """(schema, required) of a JSON request body; False when there is a body but it is not JSON."""
    body = resolver.deref(body)
    if not isinstance(body, dict) or not isinstance(body.get("content"), dict):
        return None
    for media, content in body["content"].items():
        kind = str(media).split(";")[0].strip().lower()
        if kind == "application/json" or kind.endswith("+json"):
            schema = content.get("schema", {}) if isinstance(content, dict) else {}
            return resolver.schema(schema) or {}, bool(body.get("required"))
    return False


def _operation(
    doc: dict[str, Any], path: str, method: str, item: dict[str, Any], op: dict[str, Any], reserved: frozenset[str]
) -> tuple[str, Operation] | None:
    resolver = _Resolver(doc)
    declared: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in [*(item.get("parameters") or []), *(op.get("parameters") or [])]:  # the operation's win
        param = resolver.deref(raw)
        if (
            isinstance(param, dict)
            and isinstance(param.get("name"), str)
            and param.get("in") in ("path", "query", "header")
        ):
            declared[(param["name"], param["in"])] = param
    found: list[tuple[str, str, bool, dict[str, Any]]] = []
    for (name, where), param in declared.items():
        if where == "header" and name.lower() in reserved:
            continue
        declared_schema: Any = param.get("schema")
        content = param.get("content")
        if declared_schema is None and isinstance(content, dict) and content:
            first = next(iter(content.values()))
            declared_schema = first.get("schema") if isinstance(first, dict) else None
        resolved = resolver.schema(declared_schema) if isinstance(declared_schema, dict) else {}
        prop: dict[str, Any] = dict(resolved) if isinstance(resolved, dict) else {}
        if isinstance(param.get("description"), str) and "description" not in prop:
            prop["description"] = param["description"]
        found.append((name, where, where == "path" or bool(param.get("required")), prop))
    body = _json_body(resolver, op.get("requestBody"))
    if body is False:
        return None
    if isinstance(body, tuple):
        found.append(("body", "body", body[1], body[0]))
    counts: dict[str, int] = {}
    for name, *_ in found:
        counts[name] = counts.get(name, 0) + 1
    properties: dict[str, Any] = {}
    parameters: list[Parameter] = []
    for name, where, required, prop in found:
        argument = _UNSAFE.sub("_", name if counts[name] == 1 else f"{name}__{where}")[:64]
        properties[argument] = prop
        parameters.append(Parameter(name, where, argument, required))
    input_schema: dict[str, Any] = {"type": "object", "properties": properties}
    required_args = [p.argument for p in parameters if p.required]
    if required_args:
        input_schema["required"] = required_args
    text = [str(op[k]).strip() for k in ("summary", "description") if isinstance(op.get(k), str) and op[k].strip()]
    raw_name = str(op["operationId"]) if isinstance(op.get("operationId"), str) else f"{method}_{path}"
    annotations = {"readOnlyHint": method == "get", "destructiveHint": method == "delete", "openWorldHint": True}
    name = tool_name(raw_name)
    definition = {
        "name": name,
        "description": "\n\n".join(text) or f"{method.upper()} {path}",
        "inputSchema": input_schema,
        "annotations": annotations,
    }
    tags = tuple(str(t) for t in op.get("tags") or [] if isinstance(t, str))
    return raw_name, Operation(name, method, path, tags, tuple(parameters), definition)


def operations(
    doc: dict[str, Any],
    filters: dict[str, Any],
    *,
    credential_headers: Iterable[str] = (),
    limit: int = 500,
) -> list[Operation]:
    """The operations that become tools, in document order, filtered, with unique names."""
    check_document(doc)
    reserved = _GATEWAY_HEADERS | {h.lower() for h in credential_headers}
    include, exclude = filters.get("include") or [], filters.get("exclude") or []
    out: list[Operation] = []
    taken: set[str] = set()
    for path, item in doc["paths"].items():
        if not isinstance(item, dict) or not isinstance(path, str):
            continue
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            made = _operation(doc, path, method, item, op, reserved)
            if made is None:
                continue
            raw_name, operation = made
            names = (operation.tool, raw_name)
            if include and not _matches(include, names, operation.tags):
                continue
            if _matches(exclude, names, operation.tags):
                continue
            name, n = operation.tool, 2
            while name in taken:
                name, n = f"{operation.tool[: MAX_NAME - 4]}_{n}", n + 1
            if name != operation.tool:
                operation = Operation(
                    name, operation.method, operation.path, operation.tags, operation.parameters,
                    {**operation.definition, "name": name},
                )  # fmt: skip
            taken.add(name)
            out.append(operation)
            if len(out) >= limit:
                return out
    return out
