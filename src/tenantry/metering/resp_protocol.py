"""RESP2 on the wire, for `resp.RespClient`: commands encoded (bulk strings only), replies parsed (simple
strings, errors, integers, bulk strings, arrays, nested), and Lua scripts named by their SHA1.

Pure functions of bytes, no I/O: the connection, pipelining and deadlines are `resp.py`'s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final

from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

Arg = str | bytes | int | float
Command = Sequence[Arg]

# Error prefixes that redis-py maps to its own exception classes; the same classes here, so that
# "Redis is loading" still reads as "Redis is unavailable" to the meter, as it did with redis-py.
_ERRORS: Final[dict[str, type[ResponseError] | type[RedisConnectionError]]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
}


class Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def encode_command(args: Command) -> bytes:
    """One command as a RESP array of bulk strings (the parts joined once, by CRLF: fewer copies)."""
    parts = [b"*%d" % len(args)]
    push = parts.append
    for arg in args:
        # Exact type checks first: cheaper than isinstance, and bool must not pass for int.
        if type(arg) is str:
            data = arg.encode()
        elif type(arg) is int:
            data = b"%d" % arg
        elif type(arg) is bytes:
            data = arg
        else:
            data = (arg.decode() if isinstance(arg, bytes) else str(arg)).encode()  # subclasses, floats
        push(b"$%d" % len(data))
        push(data)
    push(b"")
    return b"\r\n".join(parts)


def _error(text: str) -> Exception:
    code = text.split(" ", 1)[0]
    cls = _ERRORS.get(code, ResponseError)
    return cls(text.removeprefix("ERR ") if cls is ResponseError else text)


def parse_reply(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """The reply starting at `pos` and the position after it. Errors are returned, not raised
    (they belong to one caller, not to the connection); raises `Incomplete` at the buffer's end."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    kind = buf[pos]
    if kind == 0x3A:  # ':' integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 0x24:  # '$' bulk string
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        start = end + 2
        if len(buf) < start + n + 2:
            raise Incomplete
        return bytes(buf[start : start + n]), start + n + 2
    if kind == 0x2A:  # '*' array
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        items = []
        at = end + 2
        for _ in range(n):
            item, at = parse_reply(buf, at)
            items.append(item)
        return items, at
    if kind == 0x2B:  # '+' simple string
        return bytes(buf[pos + 1 : end]), end + 2
    if kind == 0x2D:  # '-' error
        return _error(bytes(buf[pos + 1 : end]).decode(errors="replace")), end + 2
    raise RedisConnectionError(f"protocol error: unexpected reply type {bytes([kind])!r}")


class LuaScript:
    """A script and its SHA1, for `RespClient.evalsha`."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
