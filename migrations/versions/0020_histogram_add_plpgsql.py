"""The usage roll-up's histogram sum becomes PL/pgSQL: a third of the drain's cost per tenant went to it.

The roll-up trigger on `usage_events` (0012) runs once per INSERT statement, and `tenantry_record_usage`
inserts tenant by tenant (each under its own RLS binding). Its upsert adds histograms with
`tenantry_histogram_add`, a SQL function that cannot be inlined (it aggregates), so PostgreSQL planned
its body again at every execution of the upsert: once per tenant per drained batch. With 10,000 active
tenants, every event is its own tenant in a batch, and that planning was ~45 µs of the ~136 µs each
tenant cost (`insert_documents` of 500 events as 500 tenants x 1: 79 ms before, 58 ms after). PL/pgSQL
keeps its plans for the session. Same result for every input: element-wise sums, the shorter array
padded with zeros, NULL when both are empty or NULL.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION tenantry_histogram_add(a bigint[], b bigint[]) RETURNS bigint[]
        LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
        DECLARE
            n integer := greatest(coalesce(cardinality(a), 0), coalesce(cardinality(b), 0));
            total bigint[];
        BEGIN
            IF n = 0 THEN
                RETURN NULL;
            END IF;
            total := array_fill(0::bigint, ARRAY[n]);
            FOR i IN 1 .. n LOOP
                total[i] := coalesce(a[i], 0) + coalesce(b[i], 0);
            END LOOP;
            RETURN total;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(  # 0012's body
        """
        CREATE OR REPLACE FUNCTION tenantry_histogram_add(a bigint[], b bigint[]) RETURNS bigint[]
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY n)
            FROM unnest(a, b) WITH ORDINALITY AS h(x, y, n)
        $$
        """
    )
