"""When Redis stops answering, stop waiting for it on every call.

After a command times out or fails, the breaker is open: the meter decides by the plans' outage
policy at once, without sending anything, for `first_s` (doubling while Redis stays down, up to
`max_s`); then it lets one call try (a probe) while the others are still decided at once. An answer
closes it. A hung Redis so costs one timeout per interval, not one per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RedisBreaker:
    def __init__(
        self, *, first_s: float = 0.5, max_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._first_s, self._max_s, self._clock = first_s, max_s, clock
        self._open_until = 0.0
        self._open_for = 0.0
        self._probing = False

    @property
    def open(self) -> bool:
        """Whether Redis failed to answer a moment ago (and is not being asked now)."""
        return self._clock() < self._open_until

    def may_ask(self) -> bool:
        """True when a command may be sent: closed, or the one probe after the interval."""
        if self._open_for == 0.0:
            return True
        if self._clock() < self._open_until or self._probing:
            return False
        self._probing = True
        return True

    def answered(self) -> None:
        self._open_for, self._open_until, self._probing = 0.0, 0.0, False

    def unanswered(self) -> None:
        self._open_for = min(max(self._open_for * 2, self._first_s), self._max_s)
        self._open_until = self._clock() + self._open_for
        self._probing = False
