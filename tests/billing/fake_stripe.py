"""A fake Stripe on loopback that the real `stripe` client talks to.

It does what the reporter depends on: `POST /v1/billing/meter_events` records
an event, a repeated `identifier` is the same event (the original is
returned, nothing is counted twice), an unknown customer is a 400
`invalid_request_error`, and it fails on request: 500, 429, a timeout, or a
dropped response *after* accepting the event. It also signs webhooks the way
Stripe does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class FakeStripe:
    url: str = ""
    customers: set[str] = field(default_factory=set)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # identifier -> event
    requests: int = 0
    # Requests by the customer they name: a gateway reports every tenant with a customer in its database,
    # so a test sharing that database with others counts its own customer's requests only.
    requests_by_customer: Counter[str] = field(default_factory=Counter)
    # Failures to inject, in order: "500", "429", "timeout", "drop" (accept, then send no response).
    failures: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, *kinds: str) -> None:
        with self.lock:
            self.failures.extend(kinds)

    def billed(self, customer: str) -> int:
        """What Stripe would bill `customer`: the sum over distinct identifiers."""
        with self.lock:
            return sum(int(e["payload"]["value"]) for e in self.events.values() if e["customer"] == customer)

    def billed_by_customer(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        with self.lock:
            for e in self.events.values():
                totals[e["customer"]] += int(e["payload"]["value"])
        return dict(totals)

    def _handle(self, body: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
        with self.lock:
            self.requests += 1
            self.requests_by_customer[body.get("payload[stripe_customer_id]", "")] += 1
            failure = self.failures.pop(0) if self.failures else None
        if failure == "500":
            return 500, {"error": {"type": "api_error", "message": "injected failure"}}
        if failure == "429":
            return 429, {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "slow down"}}
        if failure == "timeout":
            self.release.wait(5)
            return 500, {"error": {"type": "api_error", "message": "too late"}}
        customer = body.get("payload[stripe_customer_id]", "")
        if customer not in self.customers:
            return 400, {
                "error": {
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "param": "payload[stripe_customer_id]",
                    "message": f"No such customer: '{customer}'",
                }
            }
        identifier = body["identifier"]
        with self.lock:
            event = self.events.get(identifier)
            if event is None:
                event = {
                    "object": "billing.meter_event",
                    "created": int(time.time()),
                    "event_name": body["event_name"],
                    "identifier": identifier,
                    "timestamp": int(body["timestamp"]),
                    "payload": {"stripe_customer_id": customer, "value": body["payload[value]"]},
                    "customer": customer,
                }
                self.events[identifier] = event
        if failure == "drop":
            return 0, None
        return 200, {k: v for k, v in event.items() if k != "customer"}


def _handler(fake: FakeStripe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = dict(parse_qsl(self.rfile.read(length).decode()))
            if self.path != "/v1/billing/meter_events":
                status, payload = 404, {"error": {"type": "invalid_request_error", "message": "unknown path"}}
            else:
                status, payload = fake._handle(body)
            if payload is None:  # accepted, but the response is lost
                self.close_connection = True
                return
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    return Handler


@contextmanager
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-stripe", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header for `payload`, as Stripe makes it."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"
