"""Every call counted against the tenant's plan in Redis, and made a durable usage event exactly once.

    meter.py / meter.lua  quota, request rate and in-flight cap: one atomic script, one round trip
abandon.lua           undoes an admission the meter gave up waiting for (a hung Redis)
breaker.py            after Redis fails to answer, decide without it for a while instead of waiting again
decision.py           what the meter answers: a Decision per call or request, Usage of the quota window
    ledger.py             the usage event, appended to a Redis stream before the result is returned
    drain.py              the stream -> usage_events, each event once (a lifespan task on every replica)
    commands.py           the per-call Redis commands behind one interface, on either client
    resp.py               the lean RESP client those commands use in the app
    usage.py              usage queries (per tool, per range) for the API and the tenant's own tool

What a plan allows is `plans.Limits`.
"""
