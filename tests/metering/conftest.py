"""Metering fixtures: a redis-py client, a stream key of the test's own, and a local Redis Cluster."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tenantry.dev.redis_cluster import LocalCluster, cluster_programs, start_local_cluster
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


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A three-master Redis Cluster on free loopback ports, for this run only (stopped afterwards)."""
    if cluster_programs() is None:
        pytest.skip("redis-server and redis-cli are needed for a Redis Cluster (Debian: redis-server)")
    cluster = start_local_cluster(3)
    try:
        yield cluster
    finally:
        cluster.stop()
