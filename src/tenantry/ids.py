"""Identifiers minted by the gateway: time-ordered UUIDs (version 7, RFC 9562).

Usage events and audit records are keyed by such an id in indexes that grow by millions of rows; an id
that starts with the time it was made lands at the right edge of those B-trees (where the pages are
already in memory) instead of at a random leaf. 48 bits of Unix milliseconds, then 74 random bits:
unique across replicas without coordination, like a version 4 UUID.
"""

from __future__ import annotations

import os
import time
import uuid

_RAND_B = (1 << 62) - 1


def time_ordered_id() -> uuid.UUID:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | (rand & _RAND_B)
    return uuid.UUID(int=value)
