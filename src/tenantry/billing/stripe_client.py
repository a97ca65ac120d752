"""The one place Tenantry talks to Stripe: Billing Meter events, through the official `StripeClient`.

Stripe's errors are sorted here into two kinds the reporter acts on:

    StripeFailure
    ├── TransientStripeFailure   back off and retry the same row (5xx, 429, timeouts, connection drops)
    └── PermanentStripeFailure   park the row (400 invalid request: unknown customer, bad meter, ...)

A meter event carries the report row's `identifier`, and the request carries
the same value as its `Idempotency-Key`, so a retry of a request whose
response was lost is the same event to Stripe, never a second one.

The SDK's synchronous client runs in a worker thread: it needs no extra
HTTP library, and a slow Stripe never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import stripe

from tenantry.settings import Settings

# Stripe refuses a repeated identifier with this code; the event it names was accepted before.
_DUPLICATE_CODES = {"resource_already_exists", "meter_event_identifier_already_exists"}


class StripeFailure(Exception):
    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code


class TransientStripeFailure(StripeFailure):
    """Worth retrying later with the same identifier."""

    def __init__(self, detail: str, *, code: str | None = None, rate_limited: bool = False) -> None:
        super().__init__(detail, code=code)
        self.rate_limited = rate_limited


class PermanentStripeFailure(StripeFailure):
    """Retrying the same request cannot succeed; someone must fix the data."""


@dataclass(frozen=True, slots=True)
class MeterEvent:
    identifier: str
    event_name: str
    customer_id: str
    value: int
    timestamp: datetime

    def params(self) -> dict[str, Any]:
        return {
            "event_name": self.event_name,
            "identifier": self.identifier,
            "timestamp": int(self.timestamp.timestamp()),
            "payload": {"stripe_customer_id": self.customer_id, "value": str(self.value)},
        }


class StripeBilling:
    """A `StripeClient` pointed at `TENANTRY_STRIPE_API_BASE`, and when it last answered."""

    def __init__(self, settings: Settings) -> None:
        base = settings.stripe_api_base.rstrip("/")
        self._client = stripe.StripeClient(
            settings.stripe_api_key or "sk_disabled",
            base_addresses={"api": base, "meter_events": base},
            max_network_retries=settings.stripe_max_network_retries,
            http_client=stripe.RequestsClient(timeout=settings.stripe_timeout_seconds),
        )
        self.last_success_monotonic: float | None = None

    async def send_meter_event(self, event: MeterEvent) -> None:
        """Send one meter event; return once Stripe accepted it (now or on an earlier attempt)."""
        await asyncio.to_thread(self._send, event)
        self.last_success_monotonic = time.monotonic()

    def _send(self, event: MeterEvent) -> None:
        try:
            self._client.v1.billing.meter_events.create(
                event.params(),  # type: ignore[arg-type]
                options={"idempotency_key": event.identifier},
            )
        except stripe.RateLimitError as exc:
            raise TransientStripeFailure(_describe(exc), code="rate_limited", rate_limited=True) from exc
        except stripe.IdempotencyError:
            # The key was used before with other parameters: that earlier request was accepted.
            return
        except stripe.InvalidRequestError as exc:
            if exc.code in _DUPLICATE_CODES:
                return
            if (exc.http_status or 400) >= 500:
                raise TransientStripeFailure(_describe(exc), code=exc.code) from exc
            raise PermanentStripeFailure(_describe(exc), code=exc.code or "invalid_request") from exc
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            # A configuration problem for every tenant: retry after someone fixes the key, park nothing.
            raise TransientStripeFailure(_describe(exc), code="stripe_auth") from exc
        except (stripe.APIConnectionError, stripe.APIError) as exc:
            raise TransientStripeFailure(_describe(exc), code="stripe_unavailable") from exc
        except stripe.StripeError as exc:
            if (exc.http_status or 500) >= 500 or exc.http_status in (408, 409):
                raise TransientStripeFailure(_describe(exc), code=exc.code) from exc
            raise PermanentStripeFailure(_describe(exc), code=exc.code) from exc


def _describe(exc: stripe.StripeError) -> str:
    status = f"HTTP {exc.http_status}: " if exc.http_status else ""
    return f"{type(exc).__name__}: {status}{exc.user_message or str(exc)}"[:500]
