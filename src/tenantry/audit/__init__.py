"""The audit trail: who did what, admitted or refused, in an append-only, hash-chained record per tenant.

- `records.py`: one record and its stream document, and the HMAC digest of a call's arguments;
- `trail.py`: the writer (records travel with the usage ledger's stream, durable before the answer);
- `store.py`: the query, the exports, verification of a tenant's chain;
- `maintenance.py`: monthly partitions and retention.
"""
