"""Tenantry: a multi-tenant MCP gateway. Isolation by PostgreSQL RLS, metering in Redis, billing
through Stripe, federation of each tenant's own upstream MCP servers. See README.md's layout."""
