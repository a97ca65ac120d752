"""Billing through Stripe: every successful call billed exactly once, and Stripe's events applied.

    stripe_client.py  the official client, pointed where the settings say (a fake Stripe in tests)
    reporter.py       unreported usage -> usage_reports -> Stripe meter events (a lifespan task)
    reconcile.py      ledger vs reported units, per tenant and month
    subscriptions.py  which plan a subscription or a checkout stands for
    events.py         what a verified webhook event does (in the webhook's transaction)
    dunning.py        an unpaid invoice: a grace period, then the configured policy
    onboarding.py     checkout -> an active tenant, in resumable steps; offboarding
    health.py         the billing checks of `/health`
    runtime.py        the billing objects of one app, and the reporter's task
    cli.py            `tenantry billing ...`

A tenant's plan and status are written through `tenants.py`, never here.
"""
