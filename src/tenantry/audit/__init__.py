"""The audit trail: who did what, admitted or refused, in an append-only, hash-chained record per tenant.

- `records.py`: one record and its stream document, and the HMAC digest of a call's arguments;
- `trail.py`: the writer (records travel with the usage ledger's stream, durable before the answer);
- `store.py`: the query, the exports, verification of a tenant's chain;
- `maintenance.py`: monthly partitions and retention;
- `changes.py`: what an admin change did, and the CLI's record of it.

A tenant's trail lives where its isolation tier keeps its data (the shared tables, its own schema or
its own database: `db/audit_schema.py`, one source of the tables and functions for all three), and
moves with it; the drain stores each record there (`metering/storing.py`) and `store.py` reads it there.
"""
