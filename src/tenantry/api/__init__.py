"""The REST face: routers built on the objects in `services.py`, one per audience.

    admin.py            tenants, keys, usage (admin key or admin JWT)
    upstreams.py        a tenant's upstream servers, their pins and re-approval (admin)
    governance.py       a tenant's policy (read, replace, delete, dry-run) and kills (admin)
    tenant.py           a tenant's token exchange and the REST tool bridge (the same pipeline as MCP)
    health.py           `/health`, `/health?tenant=`, `/metrics` (ops)
    stripe_webhooks.py  `/webhooks/stripe` (signed by Stripe) and the onboarding key hand-out (admin)
    deps.py             the dependencies that tell the two kinds of caller apart
    body_limit.py       the request size limit (pure ASGI)
    edge.py             the layers every request passes, and `POST /mcp`'s short way through them

Errors are raised as `errors.TenantryError` and mapped once to JSON in `app.py`.
"""
