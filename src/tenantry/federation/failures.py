"""How an upstream fails, as the rest of federation sees it: the error, the circuit breaker per
(tenant, upstream), and a one-line reason for whatever an upstream session raised."""

from __future__ import annotations

from collections.abc import Callable

import httpx2

from tenantry.errors import Unavailable
from tenantry.federation.http1 import HttpStatusError

Clock = Callable[[], float]


class UpstreamError(Unavailable):
    """A failure of the upstream itself (not of the tool): codes upstream_unavailable/_timeout/_error."""

    default_code = "upstream_unavailable"


class Breaker:
    """Closed until `threshold` consecutive failures; open (fail fast) for `cooldown`; then one trial."""

    def __init__(self, threshold: int, cooldown: float, clock: Clock) -> None:
        self.threshold, self.cooldown, self._clock = threshold, cooldown, clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        self._trial = False
        if self.failures >= self.threshold:
            self.opened_at = self._clock()


def describe_failure(exc: BaseException) -> tuple[str, bool]:
    """A short reason (the innermost error), and whether the upstream refused our credential (401/403)."""
    seen: list[BaseException] = [exc]
    leaf = exc
    while seen:
        current = seen.pop()
        if isinstance(current, httpx2.HTTPStatusError) and current.response.status_code in (401, 403):
            return f"credentials refused (HTTP {current.response.status_code})", True
        if isinstance(current, HttpStatusError) and current.status in (401, 403):
            return f"credentials refused (HTTP {current.status})", True
        if isinstance(current, BaseExceptionGroup):
            seen.extend(current.exceptions)
            continue
        leaf = current
        if current.__cause__ is not None:
            seen.append(current.__cause__)
    text = str(leaf) or type(leaf).__name__
    refused = any(f"{code} " in text or f"'{code} " in text for code in ("401", "403"))
    return f"{type(leaf).__name__}: {text[:200]}", refused
