"""Tenantry: a multi-tenant MCP gateway. Isolation by PostgreSQL RLS, metering in Redis, billing
through Stripe, federation of each tenant's own upstream MCP servers. See README.md's layout."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tenantry")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"
