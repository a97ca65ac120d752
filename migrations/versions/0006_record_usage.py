"""One function that stores a drained batch of usage events for any number of tenants.

The ledger's drain used to send two statements per tenant in a batch (bind the
tenant, insert its events): with a thousand tenants calling, a batch of 500
events cost up to a thousand round trips. `tenantry_record_usage` takes the
whole batch in one call and does the same work inside PostgreSQL: for each
tenant in turn it binds the tenant (transaction-local, as `Database.tenant`
does) and inserts that tenant's events, so every row still passes the
table's RLS policy for the application role. It runs as its caller (SECURITY
INVOKER): it grants nothing the caller does not already have.

Arguments: `tenants` (distinct tenant ids), `counts` (how many events each
has) and `events` (the events, grouped in the same order, each one JSON
object as the gateway wrote it to the ledger stream:
{"e": event id, "tool", "u": units, "o": outcome, "l": latency ms,
"at": epoch ms, "m": metered}). Replays are no-ops (ON CONFLICT DO NOTHING on
the primary key). Returns how many events were new.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

from tenantry.db.rls import TENANT_SETTING, migration_app_role

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    role = migration_app_role()
    op.execute(
        f"""
        CREATE FUNCTION tenantry_record_usage(tenants uuid[], counts integer[], events json[])
        RETURNS integer LANGUAGE plpgsql SECURITY INVOKER AS $$
        DECLARE
            first integer := 1;
            added integer;
            total integer := 0;
        BEGIN
            IF cardinality(tenants) <> cardinality(counts)
               OR (SELECT coalesce(sum(c), 0) FROM unnest(counts) AS c) <> cardinality(events)
               OR EXISTS (SELECT FROM unnest(counts) AS c WHERE c IS NULL OR c < 1) THEN
                RAISE EXCEPTION 'tenants, counts and events do not line up' USING ERRCODE = '22023';
            END IF;
            FOR i IN 1 .. cardinality(tenants) LOOP
                PERFORM set_config('{TENANT_SETTING}', tenants[i]::text, true);
                INSERT INTO usage_events (tenant_id, event_id, tool, units, outcome, latency_ms, occurred_at, metered)
                SELECT tenants[i], d.e, d.tool, d.u, d.o, d.l, to_timestamp(d.at / 1000.0::double precision), d.m
                FROM unnest(events[first : first + counts[i] - 1]) AS x(doc),
                     LATERAL json_to_record(x.doc)
                         AS d(e uuid, tool text, u integer, o text, l double precision, at bigint, m boolean)
                ON CONFLICT (tenant_id, event_id) DO NOTHING;
                GET DIAGNOSTICS added = ROW_COUNT;
                total := total + added;
                first := first + counts[i];
            END LOOP;
            PERFORM set_config('{TENANT_SETTING}', '', true);
            RETURN total;
        END
        $$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION tenantry_record_usage(uuid[], integer[], json[]) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION tenantry_record_usage(uuid[], integer[], json[]) TO {role}")


def downgrade() -> None:
    op.execute("DROP FUNCTION tenantry_record_usage(uuid[], integer[], json[])")
