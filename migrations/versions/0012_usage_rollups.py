"""Hourly roll-ups of usage events and refusals, kept as events are drained, so tenant reports stay fast.

A 7-day report over 1,000,000 raw usage events takes seconds; over roll-ups it reads ~22,000 rows.

- `usage_rollups`: per (tenant, UTC hour, kind, name, outcome) the number of events, their units and
  latency sum/min/max, and a latency histogram over the fixed bounds of `tenantry_latency_bounds()`
  (milliseconds; slot k counts latencies in [bound k-1, bound k), the last slot those at or above the
  last bound). `kind`/`name` split `usage_events.tool` as the usage contract writes it:
  `resource:<uri>` -> (resource, uri), `prompt:<name>` -> (prompt, name), anything else (tool, name).
- `refusal_rollups`: per (tenant, UTC hour, kind, name, reason) the number of refused requests. A
  refused request leaves no usage event, only an audit record (decision 'refused').

Both are kept in the transaction that stores what they count, by triggers, so every writer (the drain,
the direct fallback, a test) keeps them without knowing about them, and a replay counts nothing twice:

- usage: a statement-level AFTER INSERT trigger on `usage_events` reads the statement's transition
  table, which holds only the rows actually inserted (`ON CONFLICT DO NOTHING` leaves a replayed event
  out), and adds them to the roll-ups in key order (two drains lock roll-up rows in one order).
- refusals: a statement-level AFTER INSERT trigger on `audit_records` (the partitioned parent: its
  transition table holds the rows inserted into any partition; `tenantry_record_audit` never inserts a
  replayed record). `tenantry_audit_partitions` moves records out of the default partition by deleting
  and re-inserting them: a row-level AFTER DELETE trigger takes each deleted refusal back out, so a
  move counts nothing twice. Retention drops partitions (no trigger): roll-ups outlive the records.
  (A first version read the appended records back by seq from a trigger on `audit_chain_heads`: with
  a new tenant's statistics stale the planner scanned all its records, 400 µs a call at 350,000.)

The triggers run as their caller (the application role, under RLS with the batch's tenant bound, as the
ledger functions bind it), so the roll-ups obey the same isolation as the events. Existing events and
refusals are rolled up here.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from tenantry.db.refusal_schema import ROLL_UP_REFUSALS, UPSERT_REFUSALS, over, refusal_statements
from tenantry.db.rls import drop_tenant_table_policies, migration_app_role, tenant_table_policies

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Latency histogram bounds in ms. Frozen here: changing them would make old roll-ups unreadable;
# `tenantry.metering.reports.LATENCY_BOUNDS_MS` must equal them (a test checks).
_BOUNDS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

# One histogram from a group's `slot` values (width_bucket: 0 .. len(bounds)), as a bigint array.
_HISTOGRAM = "ARRAY[" + ", ".join(f"count(*) FILTER (WHERE slot = {k})" for k in range(len(_BOUNDS) + 1)) + "]"

# Rows of `usage_events` (as `source`) grouped into roll-up rows.
_ROLL_UP_EVENTS = f"""
    SELECT tenant_id, bucket, kind, name, outcome, count(*) AS calls, sum(units) AS units,
           sum(latency_ms) AS latency_sum_ms, min(latency_ms) AS latency_min_ms, max(latency_ms) AS latency_max_ms,
           {_HISTOGRAM} AS latency_histogram
    FROM (SELECT tenant_id, date_trunc('hour', occurred_at, 'UTC') AS bucket,
                 tenantry_usage_kind(tool) AS kind, tenantry_usage_name(tool) AS name, outcome, units,
                 latency_ms, width_bucket(latency_ms, tenantry_latency_bounds()) AS slot
          FROM source) e
    GROUP BY tenant_id, bucket, kind, name, outcome
"""

_UPSERT_EVENTS = """
    INSERT INTO usage_rollups AS r (tenant_id, bucket, kind, name, outcome, calls, units, latency_sum_ms,
                                   latency_min_ms, latency_max_ms, latency_histogram)
    {rows}
    ORDER BY tenant_id, bucket, kind, name, outcome
    ON CONFLICT (tenant_id, bucket, kind, name, outcome) DO UPDATE SET
        calls = r.calls + excluded.calls,
        units = r.units + excluded.units,
        latency_sum_ms = r.latency_sum_ms + excluded.latency_sum_ms,
        latency_min_ms = least(r.latency_min_ms, excluded.latency_min_ms),
        latency_max_ms = greatest(r.latency_max_ms, excluded.latency_max_ms),
        latency_histogram = tenantry_histogram_add(r.latency_histogram, excluded.latency_histogram)
"""


def upgrade() -> None:
    role = migration_app_role()
    refusal = refusal_statements()
    bounds = ", ".join(str(float(b)) for b in _BOUNDS)
    op.execute(
        f"""
        CREATE FUNCTION tenantry_latency_bounds() RETURNS double precision[]
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT ARRAY[{bounds}]::double precision[] $$
        """
    )
    op.execute(refusal["usage_kind"])
    op.execute(refusal["usage_name"])
    # A refusal of a call names its tool; a read's or a prompt get's names its URI or prompt (with or
    # without the usage prefix); a request of no tool (a refused listing) is counted under its method.
    op.execute(refusal["refusal_kind"])
    # Element-wise sum of two histograms (a roll-up row's and a batch's).
    op.execute(
        """
        CREATE FUNCTION tenantry_histogram_add(a bigint[], b bigint[]) RETURNS bigint[]
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY n)
            FROM unnest(a, b) WITH ORDINALITY AS h(x, y, n)
        $$
        """
    )
    op.execute(
        """
        CREATE TABLE usage_rollups (
            tenant_id uuid NOT NULL,
            bucket timestamptz NOT NULL,
            kind text NOT NULL,
            name text NOT NULL,
            outcome text NOT NULL,
            calls bigint NOT NULL,
            units bigint NOT NULL,
            latency_sum_ms double precision NOT NULL,
            latency_min_ms double precision NOT NULL,
            latency_max_ms double precision NOT NULL,
            latency_histogram bigint[] NOT NULL,
            PRIMARY KEY (tenant_id, bucket, kind, name, outcome)
        )
        """
    )
    op.execute(refusal["table"])
    for table in ("usage_rollups", "refusal_rollups"):
        for statement in tenant_table_policies(table, role):
            op.execute(statement)
        # Kept by triggers running as the app role; never rewritten otherwise (no DELETE grant).
        op.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO {role}")
    op.execute(
        f"""
        CREATE FUNCTION tenantry_rollup_usage() RETURNS trigger LANGUAGE plpgsql SECURITY INVOKER AS $$
        BEGIN
            {_UPSERT_EVENTS.format(rows=over(_ROLL_UP_EVENTS, "added"))};
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER usage_events_rollup AFTER INSERT ON usage_events
        REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION tenantry_rollup_usage()
        """
    )
    op.execute(refusal["rollup_function"])
    op.execute(refusal["rollup_trigger"])
    # Only partition maintenance deletes records (to re-insert them into a new partition; the app role
    # cannot delete): what it takes out is taken out of the roll-ups, so the move counts nothing twice.
    op.execute(refusal["unroll_function"])
    op.execute(refusal["unroll_trigger"])
    # The roll-ups counted afresh from the raw rows, as the caller may see them (security_invoker: under
    # its RLS): what the roll-ups must always equal (tests), and the reference the benchmark times.
    op.execute(
        "CREATE VIEW usage_rollups_recount WITH (security_invoker = true) AS " + over(_ROLL_UP_EVENTS, "usage_events")
    )
    op.execute(
        "CREATE VIEW refusal_rollups_recount WITH (security_invoker = true) AS "
        + over(ROLL_UP_REFUSALS, "audit_records")
    )
    op.execute(f"GRANT SELECT ON usage_rollups_recount, refusal_rollups_recount TO {role}")
    # What was stored before this revision (the owner's policy lets the migration see every tenant).
    op.execute(_UPSERT_EVENTS.format(rows=over(_ROLL_UP_EVENTS, "usage_events")))
    op.execute(UPSERT_REFUSALS.format(rows=over(ROLL_UP_REFUSALS, "audit_records")))


def downgrade() -> None:
    op.execute("DROP VIEW refusal_rollups_recount")
    op.execute("DROP VIEW usage_rollups_recount")
    op.execute("DROP TRIGGER audit_records_unroll ON audit_records")
    op.execute("DROP TRIGGER audit_records_rollup ON audit_records")
    op.execute("DROP TRIGGER usage_events_rollup ON usage_events")
    op.execute("DROP FUNCTION tenantry_unroll_refusal()")
    op.execute("DROP FUNCTION tenantry_rollup_refusals()")
    op.execute("DROP FUNCTION tenantry_rollup_usage()")
    for table in ("refusal_rollups", "usage_rollups"):
        for statement in drop_tenant_table_policies(table):
            op.execute(statement)
        op.execute(f"DROP TABLE {table}")
    op.execute("DROP FUNCTION tenantry_histogram_add(bigint[], bigint[])")
    op.execute("DROP FUNCTION tenantry_refusal_kind(text, text)")
    op.execute("DROP FUNCTION tenantry_usage_name(text)")
    op.execute("DROP FUNCTION tenantry_usage_kind(text)")
    op.execute("DROP FUNCTION tenantry_latency_bounds()")
