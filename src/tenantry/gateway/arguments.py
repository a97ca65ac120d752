"""What the caller got wrong, said before anything is metered: values no tool can be given, arguments
that fail their schema, and names of nothing the tenant has."""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from tenantry.errors import BadRequest, NotFound
from tenantry.federation.offerings import PROMPT, RESOURCE
from tenantry.gateway.catalog import PROMPT_GET, RESOURCE_READ

_MAX_DEPTH = 64


def refuse_unrepresentable(value: Any, *, nul_allowed: bool, depth: int = 0) -> None:
    """Refuse (400 `invalid_arguments`) what no tool can be given: numbers JSON cannot carry (NaN,
    infinities, which a lenient JSON parser lets through), strings that are not Unicode text (lone
    surrogates), nesting deeper than 64, and, unless `nul_allowed` (upstream tools, which get JSON),
    NUL characters, which PostgreSQL cannot store. The message says where, never what."""
    if depth > _MAX_DEPTH:
        raise BadRequest(f"arguments nest deeper than {_MAX_DEPTH} levels", code="invalid_arguments")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("a string holds a lone surrogate, which is not text", code="invalid_arguments") from None
        if not nul_allowed and "\x00" in value:
            raise BadRequest("a string holds a NUL character, which cannot be stored", code="invalid_arguments")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest("a number is NaN or infinite, which JSON cannot carry", code="invalid_arguments")
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_unrepresentable(key, nul_allowed=nul_allowed, depth=depth + 1)
            refuse_unrepresentable(item, nul_allowed=nul_allowed, depth=depth + 1)
    elif isinstance(value, list):
        for item in value:
            refuse_unrepresentable(item, nul_allowed=nul_allowed, depth=depth + 1)


def unknown(method: str, name: str) -> NotFound:
    if method == RESOURCE_READ:
        return NotFound(f"no resource {name.removeprefix(RESOURCE)[:300]!r}", code="resource_not_found")
    if method == PROMPT_GET:
        return NotFound(f"no prompt named {name.removeprefix(PROMPT)[:100]!r}", code="prompt_not_found")
    return NotFound(f"no tool named {name[:100]!r}", code="unknown_tool")


def describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        # A pattern's own text is no help (and can hold control characters): say what it asks for.
        message = "must be printable text" if error["type"] == "string_pattern_mismatch" else error["msg"]
        problems.append(f"{where}: {message}")
    return "; ".join(problems)
