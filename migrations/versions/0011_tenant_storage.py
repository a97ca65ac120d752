"""What each tenant's data store holds, kept exact by a trigger: bytes and keys, for the storage quotas.

`tenant_storage` has one row per tenant that ever stored something: `bytes` is the sum over its keys
of the key's UTF-8 length plus the value's `size_bytes` (the canonical JSON the data store writes:
compact separators, UTF-8, not ASCII-escaped; what `data_put` reports), `keys` the number of keys.

A row trigger on `tenant_data` applies each insert, overwrite (the difference) and delete to that row
in the same statement, whoever writes (the data store, offboarding, SQL by hand), so the counters
cannot drift from the rows. Its UPDATE takes the row's lock until the transaction ends: concurrent
writers of one tenant queue there, and each sees the total the previous one committed. The data store
reads the total (and what its own write changed, which the trigger leaves in the transaction-local
setting `tenantry.storage_delta`) after its write, and rolls back when the write grew the store past
the tenant's limit, so N racing puts never end above it. The trigger runs as the writer, under RLS,
and touches only the writer's own tenant's row.

Existing rows are counted into the table here.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from tenantry.db.rls import drop_tenant_table_policies, migration_app_role, tenant_table_policies

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    role = migration_app_role()
    op.execute(
        """
        CREATE TABLE tenant_storage (
            tenant_id uuid PRIMARY KEY REFERENCES tenants (id),
            bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
            keys bigint NOT NULL DEFAULT 0 CHECK (keys >= 0),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    for statement in tenant_table_policies("tenant_storage", role):
        op.execute(statement)
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON tenant_storage TO {role}")
    op.execute(
        """
        CREATE FUNCTION tenantry_count_storage() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            delta_bytes bigint := 0;
            delta_keys bigint := 0;
        BEGIN
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                delta_bytes := octet_length(NEW.key) + NEW.size_bytes;
                delta_keys := 1;
            END IF;
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                delta_bytes := delta_bytes - octet_length(OLD.key) - OLD.size_bytes;
                delta_keys := delta_keys - 1;
            END IF;
            -- What this write changed, for the writer to read back in its transaction (data_put tells an
            -- overwrite that grows the store from one that does not, exactly, whatever raced it).
            PERFORM set_config('tenantry.storage_delta', delta_bytes::text, true);
            -- Only a new key may need the row created; an overwrite or a delete has its row already (the
            -- insert of that key made it, or the backfill). Not one upsert for all: the candidate row of
            -- an upsert is checked (bytes >= 0) before the conflict is found, so a shrink would fail.
            IF TG_OP = 'INSERT' THEN
                INSERT INTO tenant_storage AS s (tenant_id, bytes, keys) VALUES (NEW.tenant_id, delta_bytes, delta_keys)
                ON CONFLICT (tenant_id) DO UPDATE
                SET bytes = s.bytes + excluded.bytes, keys = s.keys + excluded.keys, updated_at = now();
            ELSE
                UPDATE tenant_storage
                SET bytes = bytes + delta_bytes, keys = keys + delta_keys, updated_at = now()
                WHERE tenant_id = OLD.tenant_id;
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER tenant_data_count_storage
        AFTER INSERT OR UPDATE OR DELETE ON tenant_data
        FOR EACH ROW EXECUTE FUNCTION tenantry_count_storage()
        """
    )
    op.execute(
        """
        INSERT INTO tenant_storage (tenant_id, bytes, keys)
        SELECT tenant_id, sum(octet_length(key) + size_bytes), count(*) FROM tenant_data GROUP BY tenant_id
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER tenant_data_count_storage ON tenant_data")
    op.execute("DROP FUNCTION tenantry_count_storage()")
    for statement in drop_tenant_table_policies("tenant_storage"):
        op.execute(statement)
    op.execute("DROP TABLE tenant_storage")
