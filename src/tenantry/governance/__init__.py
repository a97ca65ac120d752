"""Governance: which subject may call which tool with which arguments, and stopping what must stop.

    policy.py  a tenant's policy document, validated and compiled (verdicts memoised per caller and tool)
    store.py   the documents in PostgreSQL (versioned, RLS) and each process's compiled copies
    kills.py   kills of a session, key, subject, tool or tenant: held in memory on every replica,
               refusing new calls and cancelling calls in flight

The call pipeline (`gateway/calls.py`) asks both on every call, before the meter: what they refuse
is never billed.
"""
