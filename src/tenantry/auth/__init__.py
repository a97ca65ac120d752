"""Who is calling: credentials to a `tenancy.Principal`, checked on every request.

api_keys.py     tenant API keys: made once, shown once, stored as SHA-256 hashes
jwt.py          short-lived tenant, admin and canary tokens (HS256, audience pinned)
resolver.py     a credential to its principal, cached briefly and forgotten on every tenant change
middleware.py   TenantAuth, the pure ASGI middleware in front of the MCP endpoints
"""
