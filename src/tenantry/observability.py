"""What a request leaves behind for operators: its id, one log line, and (when configured) a trace.

- **The request record** (`RequestRecord`, in a contextvar set by the outermost
  middleware, `api/middleware.py`): the request id, and what the layers below
  learn as the request goes: the tenant and subject (authentication), the MCP
  method and tool and the call's outcome (the gateway). The record is one
  mutable object, so what a handler running in a child task writes is seen by
  the middleware that logs it.
- **Logs**: every line carries the current request id; `configure_logging`
  installs one handler on the root logger, JSON (one object per line, for
  machines) or text (for people). Argument values, tokens and secrets are never
  put in a record.
- **Traces** (`Tracing`): OpenTelemetry spans for the request, the tool call,
  the meter, the database transaction and the upstream call, and the W3C
  `traceparent` of the current span for the upstream request. Off unless
  `OTEL_TRACES_EXPORTER` names an exporter; when off, `span()` is a shared
  null context and the hot path does no OpenTelemetry work at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

REQUEST_ID_HEADER: Final = "x-request-id"
# What a client may choose as its request id: short, and safe in a header, a log line and a JSON string.
_VALID_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    tenant: str | None = None
    subject: str | None = None  # who called inside the tenant (the key's subject, or the token's)
    key: str | None = None  # the key the credential came through
    session: str | None = None  # the stateful MCP session, if any (what a session kill names)
    rpc_method: str | None = None
    tool: str | None = None
    outcome: str | None = None
    transport: str | None = None  # what it came over when it is audited (streamable_http, sse, rest)
    audited: bool = False  # its audit record is written (by whoever knew most about it)
    detail: dict[str, Any] | None = None  # what an admin change did (`audit/changes.py`)
    pending: Any = None  # an audit record to write at the end unless another is written (`audit/trail.py`)
    trace: Any = None  # the request span's OpenTelemetry context, when tracing (the parent of its tool calls)


REQUEST_SCOPE_KEY: Final = "tenantry.request"


_current: ContextVar[RequestRecord | None] = ContextVar("tenantry_request", default=None)


def request_id_from(header: bytes | None) -> str:
    """The client's request id when it is acceptable, else a new one."""
    if header is not None:
        value = header.decode("latin-1")
        if _VALID_REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def begin_request(request_id: str) -> tuple[RequestRecord, Any]:
    record = RequestRecord(request_id)
    return record, _current.set(record)


def end_request(token: Any) -> None:
    _current.reset(token)


def current_request() -> RequestRecord | None:
    return _current.get()


def adopt_request(scope: MutableMapping[str, Any]) -> None:
    """Make the record of the HTTP request in `scope` the current one. For code that runs in a task
    another request started (the MCP SDK's stateful sessions and legacy SSE handle each message in a
    task of the session, which inherited the context of the request that opened it)."""
    record = scope.get(REQUEST_SCOPE_KEY)
    if isinstance(record, RequestRecord) and _current.get() is not record:
        _current.set(record)


def note(**values: str | None) -> None:
    """Write what this layer learned about the current request into its record (no record: nothing)."""
    record = _current.get()
    if record is not None:
        for name, value in values.items():
            setattr(record, name, value)


# --- logs ------------------------------------------------------------------------------------------


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:  # an access line names its request itself
            current = _current.get()
            record.request_id = current.request_id if current is not None else None
        return True


# Attributes every LogRecord has; anything else a caller passed in `extra=` is a field of the line.
# uvicorn's `color_message` repeats the message with terminal colours.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "color_message",
    "rid",
    "fields",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and the `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """For people: time, level, logger, request id, message, then the `extra` fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(rid)s %(message)s%(fields)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.rid = f" [{request_id}]" if request_id else ""
        # Fields the message already says (an access line's method, path and status) are not repeated.
        said = getattr(record, "_in_message", ())
        skip = set(said)
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k not in skip and k[0] != "_"}
        record.fields = "".join(f" {k}={_printable(v)}" for k, v in extra.items() if v is not None)
        line = super().format(record)
        # A client-chosen value (a path, a tool name) must not start a line of its own.
        return line if line.isprintable() or record.exc_info else _printable(line)


def _printable(value: object) -> str:
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def configure_logging(*, json_lines: bool, level: str) -> None:
    """One handler on the root logger (stderr), for `tenantry serve` and `tenantry dev`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own loggers go through the same handler and format.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # The MCP SDK logs whole messages (tool arguments and results) at DEBUG: never, whatever the level.
    logging.getLogger("mcp").setLevel(max(logging.INFO, root.level))


# --- traces ----------------------------------------------------------------------------------------

_NO_SPAN: Final = contextlib.nullcontext(None)


class Tracing:
    """OpenTelemetry spans of one app, or nothing at all when tracing is off."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer: Tracer | None = provider.get_tracer("tenantry") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @classmethod
    def configured(cls, exporter_name: str, exporter: SpanExporter | None = None) -> Tracing:
        """Tracing for `OTEL_TRACES_EXPORTER` (`otlp`, `console`; `none` is off), or to `exporter`."""
        name = exporter_name.strip().lower()
        if exporter is None and name in ("", "none"):
            return cls()
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by Resource.create().
        provider = TracerProvider(resource=Resource.create({"service.name": "tenantry"}))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER {exporter_name!r} is not one of otlp, console, none")
        return cls(provider)

    def span(
        self, name: str, *, parent: Any = None, **attributes: Any
    ) -> contextlib.AbstractContextManager[Span | None]:
        """A child of `parent` (an OpenTelemetry context) or of the current span, current while the block runs."""
        if self._tracer is None:
            return _NO_SPAN
        return self._tracer.start_as_current_span(
            name,
            context=parent,
            attributes={k: str(v) if isinstance(v, uuid.UUID) else v for k, v in attributes.items()},
        )

    def current(self) -> Any:
        """The current OpenTelemetry context (to parent spans started in another task), or None."""
        if self._tracer is None:
            return None
        from opentelemetry import context

        return context.get_current()

    def trace_headers(self) -> str:
        """The current span's W3C trace context as header lines (CRLF-ended), or "" with no span."""
        if self._tracer is None:
            return ""
        from opentelemetry.propagate import inject

        carrier: dict[str, str] = {}
        inject(carrier)
        return "".join(f"{k}: {v}\r\n" for k, v in carrier.items())

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
