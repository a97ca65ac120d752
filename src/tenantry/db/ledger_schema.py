"""The shared ledger's batch writer (migration 0021): a drained batch stored in two statements, whatever
the number of tenants in it.

`tenantry_record_usage` (0006) and `tenantry_record_audit` (0010) bind each tenant of a batch in turn
and store its rows with statements of its own, under the application role's RLS. With many active
tenants every entry of a batch is its own tenant, and those statements' fixed cost (executor set-up,
partition routing, the roll-up trigger, the chain head's lock and update) became most of PostgreSQL's
work per call: ~210 µs per tenant of a batch, against ~50 µs here (`bench/bench_tenants.py`, #18).

The two functions here store a batch of shared-tier tenants in set-based statements instead. They run
as a role of their own, `<app role>_ledger`, not the application role, so the application role's
policies stay what invariant 1 says (one tenant, bound per transaction) and a forgotten `WHERE` on a
request path still sees one tenant:

- the ledger role is NOLOGIN, not superuser, not BYPASSRLS, owns no table, and nobody is a member of
  it: it is reached only through these two SECURITY DEFINER functions, which the application role may
  execute (their search path pinned to the one they were made with);
- it may append usage events and audit records, move chain heads on and keep the roll-ups their
  triggers write (forced RLS applies to it as to everyone), and touch nothing else: no keys, no
  tenants, no data store;
- its policies are keyed on a transaction-local setting too, `tenantry.ledger`, which only these
  functions turn on, and off again before they return: with it off, the role sees and writes no row.

What they store is exactly what the per-tenant functions store: the same rows, the same roll-ups
(the statement triggers see the whole batch as their transition table and group by tenant), the same
hash chain, link for link (every window is partitioned by tenant, seeded by its head; a test stores one
batch both ways and compares every hash). Each tenant's chain head is made if missing and locked in one
pass in tenant order, so two drains never deadlock, and a head fenced by a move (TNMOV) fails the
statement as before. Tier copies keep 0010's per-tenant function: their tenants are stored one by one,
each in its own copy.
"""

from __future__ import annotations

from tenantry.db.audit_schema import DOC_COLUMNS, DOC_RECORD, RECORD_NAMES, RECORD_X_ARGS, RECORD_X_COLUMNS
from tenantry.db.rls import identifier

LEDGER_SETTING = "tenantry.ledger"
_OPEN = f"current_setting('{LEDGER_SETTING}', true) = 'on'"

# What the ledger role may do, table by table (and nothing else anywhere).
LEDGER_GRANTS = {
    "usage_events": ("SELECT", "INSERT"),
    "usage_rollups": ("SELECT", "INSERT", "UPDATE"),
    "refusal_rollups": ("SELECT", "INSERT", "UPDATE"),
    "audit_records": ("SELECT", "INSERT"),
    "audit_chain_heads": ("SELECT", "INSERT", "UPDATE"),
}

USAGE_SIGNATURE = "tenantry_ledger_usage(uuid[], integer[], json[])"
AUDIT_SIGNATURE = "tenantry_ledger_audit(uuid[], integer[], json[], boolean)"


# The role(s) that own, and so run, the two functions, and whether one could bypass RLS: the gateway
# refuses to start with such a ledger, and /health's `app_role` check fails, as for the app role itself.
LEDGER_OWNERS = """
    SELECT r.rolname, r.rolsuper OR r.rolbypassrls AS bypasses_rls FROM pg_roles r
    WHERE r.oid IN (SELECT p.proowner FROM pg_proc p
                    WHERE p.proname IN ('tenantry_ledger_usage', 'tenantry_ledger_audit'))
    ORDER BY r.rolname
"""


def ledger_role(app_role: str) -> str:
    return identifier(f"{app_role}_ledger")


def _clause(command: str) -> str:
    if command == "INSERT":
        return f"WITH CHECK ({_OPEN})"
    if command == "UPDATE":
        return f"USING ({_OPEN}) WITH CHECK ({_OPEN})"
    return f"USING ({_OPEN})"


# The checks both functions start with, and each entry's tenant (`owners`, aligned with the documents).
_ALIGN = """
    IF cardinality(tenants) <> cardinality(counts)
       OR (SELECT coalesce(sum(c), 0) FROM unnest(counts) AS c) <> cardinality({docs})
       OR EXISTS (SELECT FROM unnest(counts) AS c WHERE c IS NULL OR c < 1)
       OR EXISTS (SELECT FROM unnest(tenants) AS t WHERE t IS NULL)
       OR (SELECT count(DISTINCT t) FROM unnest(tenants) AS t) <> cardinality(tenants) THEN
        RAISE EXCEPTION 'tenants, counts and {docs} do not line up' USING ERRCODE = '22023';
    END IF;
    owners := ARRAY(SELECT t.tenant FROM unnest(tenants, counts) WITH ORDINALITY AS t(tenant, n, k),
                           LATERAL generate_series(1, t.n) AS g(j) ORDER BY t.k, g.j);
    PERFORM set_config('{setting}', 'on', true);
"""
_CLOSE = f"PERFORM set_config('{LEDGER_SETTING}', '', true);"

_USAGE = f"""
    CREATE FUNCTION tenantry_ledger_usage(
        tenants uuid[], counts integer[], events json[]
    ) RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    DECLARE
        owners uuid[];
        added integer;
    BEGIN
    {_ALIGN.format(docs="events", setting=LEDGER_SETTING)}
        INSERT INTO usage_events (tenant_id, event_id, tool, units, outcome, latency_ms, occurred_at, metered)
        SELECT x.tenant, d.e, d.tool, d.u, d.o, d.l, to_timestamp(d.at / 1000.0::double precision), d.m
        FROM unnest(owners, events) AS x(tenant, doc),
             LATERAL json_to_record(x.doc)
                 AS d(e uuid, tool text, u integer, o text, l double precision, at bigint, m boolean)
        ON CONFLICT (tenant_id, event_id) DO NOTHING;
        GET DIAGNOSTICS added = ROW_COUNT;
        {_CLOSE}
        RETURN added;
    END
    $$
"""

_AUDIT = f"""
    CREATE FUNCTION tenantry_ledger_audit(
        tenants uuid[], counts integer[], docs json[], fresh boolean DEFAULT false
    ) RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    DECLARE
        owners uuid[];
        n integer;
    BEGIN
    {_ALIGN.format(docs="docs", setting=LEDGER_SETTING)}
        -- Each tenant's head, made if missing and locked (not rewritten: WHERE false), in tenant order,
        -- in one pass: the order every writer takes them in.
        INSERT INTO audit_chain_heads AS h (tenant_id) SELECT t FROM unnest(tenants) AS t ORDER BY t
        ON CONFLICT (tenant_id) DO UPDATE SET seq = h.seq WHERE false;
        -- Each tenant's records in stream order (but those already stored, when not `fresh`), numbered
        -- on from its head, hashed, chained from its head's hash, stored, and its head moved on.
        WITH x AS (
            SELECT u.owner AS tenant_id, to_timestamp(d.at / 1000000.0::double precision) AS at,
                   h.seq + row_number() OVER (PARTITION BY u.owner ORDER BY u.n) AS seq, {DOC_COLUMNS},
                   h.hash AS head_hash
            FROM unnest(owners, docs) WITH ORDINALITY AS u(owner, doc, n)
                 JOIN audit_chain_heads h ON h.tenant_id = u.owner,
                 LATERAL json_to_record(u.doc) AS {DOC_RECORD}
            WHERE fresh OR NOT EXISTS (SELECT FROM audit_records a WHERE a.tenant_id = u.owner AND a.id = d.id)
        ), chained AS (
            SELECT x.*, tenantry_audit_chain(
                x.head_hash, sha256(convert_to(tenantry_audit_canonical({RECORD_X_ARGS}), 'UTF8'))
            ) OVER (PARTITION BY x.tenant_id ORDER BY x.seq) AS hash
            FROM x
        ), ins AS (
            INSERT INTO audit_records ({RECORD_NAMES}, prev_hash, hash)
            SELECT {RECORD_X_COLUMNS},
                   coalesce(lag(c.hash) OVER (PARTITION BY c.tenant_id ORDER BY c.seq), c.head_hash), c.hash
            FROM chained c
            RETURNING tenant_id, seq, hash
        ), moved_on AS (
            UPDATE audit_chain_heads h SET seq = l.seq, hash = l.hash
            FROM (SELECT DISTINCT ON (i.tenant_id) i.tenant_id, i.seq, i.hash FROM ins i
                  ORDER BY i.tenant_id, i.seq DESC) l
            WHERE h.tenant_id = l.tenant_id
        )
        SELECT count(*) INTO n FROM ins;
        {_CLOSE}
        RETURN n;
    END
    $$
"""


def ledger_statements(app_role: str) -> list[str]:
    """Migration 0021's upgrade: the ledger role, its grants and policies, and the two functions."""
    app, ledger = identifier(app_role), ledger_role(app_role)
    out = [
        # Roles are cluster-wide: another database (or an earlier run) may have made it already.
        f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ledger}') THEN
            CREATE ROLE {ledger} NOLOGIN;
          END IF;
          -- The owner must be able to hand the functions to it (a superuser can anyway).
          IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            EXECUTE format('GRANT {ledger} TO %I', current_user);
          END IF;
        END $$
        """,
        f"ALTER ROLE {ledger} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT",
        f"GRANT USAGE ON SCHEMA public TO {ledger}",
    ]
    for table, commands in LEDGER_GRANTS.items():
        for command in commands:
            name = f"{table}_ledger_{command.lower()}"
            out.append(f"CREATE POLICY {name} ON {table} FOR {command} TO {ledger} {_clause(command)}")
        out.append(f"GRANT {', '.join(commands)} ON {table} TO {ledger}")
    for create, signature in ((_USAGE, USAGE_SIGNATURE), (_AUDIT, AUDIT_SIGNATURE)):
        out.append(create)
        out.append(f"ALTER FUNCTION {signature} OWNER TO {ledger}")
        out.append(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        out.append(f"GRANT EXECUTE ON FUNCTION {signature} TO {app}")
    return out


def drop_statements(app_role: str) -> list[str]:
    """Migration 0021's downgrade. The role stays: other databases of the cluster may use it."""
    ledger = ledger_role(app_role)
    out = [f"DROP FUNCTION {AUDIT_SIGNATURE}", f"DROP FUNCTION {USAGE_SIGNATURE}"]
    for table, commands in LEDGER_GRANTS.items():
        out.extend(f"DROP POLICY {table}_ledger_{command.lower()} ON {table}" for command in commands)
        out.append(f"REVOKE ALL ON {table} FROM {ledger}")
    out.append(f"REVOKE USAGE ON SCHEMA public FROM {ledger}")
    return out
