"""The data plane a schema- or database-tier tenant holds: its tables, revision by revision.

A tier copy holds what the tenant's own tools write, and nothing of the control plane:

- moves with the tenant: `tenant_data` (the data store) and `tenant_storage` (its byte and key
  counters, kept exact by a trigger as in migration 0011), revision 1; and its audit trail,
  `audit_records` and `audit_chain_heads` with their functions, made from migration 0010's very
  statements (`audit_schema.py`: the same canonical text, so the same hashes), and the refusal
  roll-ups its triggers keep (`refusal_schema.py`, 0012's), revision 2;
- stays in the shared tables: tenants, plans, keys, upstreams and their pins, policies, identity
  providers, kills, and usage events: the operator's billing ledger, which the Stripe reporter reads
  across tenants (README "Isolation tiers").

Each copy is a second wall, not the only one: every table carries `tenant_id` with forced RLS and a
policy per command for the application role, exactly like the shared tables (`db/rls.py`), so a
routing bug cannot show one tenant another's rows. `REVISIONS[n]` is the DDL that takes a copy from
revision n to n + 1; the tenant row's `placement_revision` says where each copy is, and the router
refuses a copy older than `HEAD` (retryably) instead of serving it against the wrong tables.

Statements run as the owner with the copy's namespace first on the search path (`SET LOCAL`), so
unqualified names land in the tenant's schema (or its database's `public`).
"""

from __future__ import annotations

from collections.abc import Callable

from tenantry.db import refusal_schema
from tenantry.db.audit_schema import UNUSUAL_INDEXES, audit_statements
from tenantry.db.rls import identifier, tenant_table_policies

# What a move copies and verifies, in this order (`db/provision.py`).
DATA_PLANE_TABLES = ("tenant_data", "tenant_storage", "audit_records", "audit_chain_heads")

# A moved tenant's old copy is fenced: once a move has set `moved` on its storage row (which every write
# of the data store updates, through the counting trigger), any later write there fails with SQLSTATE
# TNMOV, which `Database.tenant` turns into a retryable `tenant_moving`. So a call that raced the move
# on a replica that had not yet heard of it cannot land in the copy being left: none lost, none doubled.
STORAGE_FENCE_FUNCTION = """
    CREATE FUNCTION tenantry_storage_fence() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'tenant % has moved to another isolation tier', OLD.tenant_id USING ERRCODE = 'TNMOV';
    END
    $$
"""
STORAGE_FENCE_TRIGGER = """
    CREATE TRIGGER tenant_storage_fence
    BEFORE UPDATE ON tenant_storage
    FOR EACH ROW WHEN (OLD.moved AND NEW.moved)
    EXECUTE FUNCTION tenantry_storage_fence()
"""

# The audit trail's fence, the same idea: a move sets `moved` on the tenant's chain head in the copy it
# leaves, which waits for the appends in flight (`tenantry_record_audit` holds the head's lock) and makes
# a later append there fail with TNMOV, since it must move the head on (the drain leaves such records
# pending and retries them on the new copy). Only an append is fenced: retention may still move the
# anchor of a fenced head (dropping an old month adds no record). Migration 0018 (shared tables) and
# revision 2 (tier copies) run these same statements.
AUDIT_FENCE = (
    "ALTER TABLE audit_chain_heads ADD COLUMN moved boolean NOT NULL DEFAULT false",
    """
    CREATE TRIGGER audit_chain_heads_fence
    BEFORE UPDATE ON audit_chain_heads
    FOR EACH ROW WHEN (OLD.moved AND NEW.moved AND (OLD.seq, OLD.hash) IS DISTINCT FROM (NEW.seq, NEW.hash))
    EXECUTE FUNCTION tenantry_storage_fence()
    """,
)


def _revision_1(app_role: str) -> list[str]:
    role = identifier(app_role)
    return [
        """
        CREATE TABLE tenant_data (
            tenant_id uuid NOT NULL,
            key text COLLATE "C" NOT NULL CHECK (length(key) BETWEEN 1 AND 1024),
            value jsonb NOT NULL,
            size_bytes integer NOT NULL CHECK (size_bytes >= 0),
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, key)
        )
        """,
        *tenant_table_policies("tenant_data", role),
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_data TO {role}",
        """
        CREATE TABLE tenant_storage (
            tenant_id uuid PRIMARY KEY,
            bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
            keys bigint NOT NULL DEFAULT 0 CHECK (keys >= 0),
            updated_at timestamptz NOT NULL DEFAULT now(),
            moved boolean NOT NULL DEFAULT false
        )
        """,
        *tenant_table_policies("tenant_storage", role),
        f"GRANT SELECT, INSERT, UPDATE ON tenant_storage TO {role}",
        # The body of 0011's function; `SET search_path FROM CURRENT` pins it to this copy's namespace,
        # whatever the writer's search path.
        """
        CREATE FUNCTION tenantry_count_storage() RETURNS trigger
        LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
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
            PERFORM set_config('tenantry.storage_delta', delta_bytes::text, true);
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
        """,
        """
        CREATE TRIGGER tenant_data_count_storage
        AFTER INSERT OR UPDATE OR DELETE ON tenant_data
        FOR EACH ROW EXECUTE FUNCTION tenantry_count_storage()
        """,
        STORAGE_FENCE_FUNCTION,
        STORAGE_FENCE_TRIGGER,
    ]


def _revision_2(app_role: str) -> list[str]:
    """The audit trail (issue #17): 0010's tables and functions, pinned to the copy, the fence, and 0012's
    refusal roll-ups, which its triggers keep."""
    role = identifier(app_role)
    return [*audit_statements(role, pinned=True), *AUDIT_FENCE, *refusal_schema.copy_statements(role)]


def _revision_3(app_role: str) -> list[str]:
    """Migration 0019's partial indexes of the trail's refused and unusual records."""
    return list(UNUSUAL_INDEXES)


# REVISIONS[n]: from revision n to n + 1. Append, never edit: copies in the field are on older ones.
REVISIONS: list[Callable[[str], list[str]]] = [_revision_1, _revision_2, _revision_3]
HEAD = len(REVISIONS)
# The first revision whose copies hold the tenant's audit trail.
AUDIT_REVISION = 2


def upgrade_statements(current: int, app_role: str, *, target: int | None = None) -> list[str]:
    """The DDL that takes a copy on revision `current` to `target` (default: the newest)."""
    end = len(REVISIONS) if target is None else target
    return [statement for step in REVISIONS[current:end] for statement in step(app_role)]
