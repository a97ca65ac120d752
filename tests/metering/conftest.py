"""Metering fixtures: a redis-py client, and a stream key of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tenantry.metering.drain import dead_letter_key
from tenantry.settings import Settings


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def stream(redis: Redis) -> AsyncIterator[str]:
    """A stream of the test's own, removed afterwards with its dead-letter stream."""
    key = f"tenantry-ledger-test:{uuid.uuid4().hex}:{{ledger}}"
    yield key
    await redis.delete(key, dead_letter_key(key))
