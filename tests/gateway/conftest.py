"""Gateway fixtures: a real SDK upstream MCP server on loopback, one per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.upstream_servers import FixtureUpstream, serve_upstream


@pytest.fixture(scope="module")
def fixture_upstream() -> Iterator[tuple[FixtureUpstream, str]]:
    upstream = FixtureUpstream()
    with serve_upstream(upstream) as (url, _server):
        yield upstream, url
