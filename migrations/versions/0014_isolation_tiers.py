"""Isolation tiers: where each tenant's data plane lives (shared tables, its own schema, its own database).

Control-plane columns on `tenants` (read by the router in `db/router.py`, written by `db/tiers.py`):

- `tier`: the admin's explicit choice; NULL means "what the tenant's plan says" (`TENANTRY_PLAN_TIERS`);
- `placement`: where the tenant's data plane is *now* (`shared`, `schema`, `database`) and
  `placement_name` the schema or database that holds it; `placement_revision` the tier DDL revision
  that copy is on (`db/tier_schema.py`), so a copy on an older revision is refused, not served;
- `placement_url`: a database-tier tenant on another server: the owner's URL without its password,
  which is sealed like upstream credentials (`placement_secret`, Fernet under TENANTRY_SECRET_KEYS);
- `moving_since`: a move is under way (calls are refused with a retryable error meanwhile);
  `retired_placement`: the copy a move left behind, kept until an explicit cleanup.

`tenant_storage.moved` and the trigger `tenant_storage_fence` fence a moved tenant's old copy: a write
that reaches it after the move froze it fails (SQLSTATE TNMOV) instead of being lost there.

The credentials trigger of 0007 also fires when the placement changes, so every replica's router
forgets the tenant's cached placement at commit (the same `tenantry_tenant_changes` channel).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from tenantry.db.tier_schema import STORAGE_FENCE_FUNCTION, STORAGE_FENCE_TRIGGER

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_TIERS = "('shared', 'schema', 'database')"

_TRIGGER = """
    CREATE TRIGGER tenants_notify_credentials
    AFTER UPDATE OF status, plan, limits, deleted_at{extra} ON tenants
    FOR EACH ROW WHEN (
        OLD.status IS DISTINCT FROM NEW.status OR OLD.plan IS DISTINCT FROM NEW.plan
        OR OLD.limits IS DISTINCT FROM NEW.limits OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at{when}
    )
    EXECUTE FUNCTION tenantry_notify_tenant_credentials()
"""
_PLACEMENT_COLUMNS = ("tier", "placement", "placement_name", "placement_url", "placement_revision", "moving_since")


def upgrade() -> None:
    op.execute(f"ALTER TABLE tenants ADD COLUMN tier text CHECK (tier IN {_TIERS})")
    op.execute(f"ALTER TABLE tenants ADD COLUMN placement text NOT NULL DEFAULT 'shared' CHECK (placement IN {_TIERS})")
    op.execute("ALTER TABLE tenants ADD COLUMN placement_name text")
    op.execute("ALTER TABLE tenants ADD COLUMN placement_url text")
    op.execute("ALTER TABLE tenants ADD COLUMN placement_secret bytea")
    op.execute("ALTER TABLE tenants ADD COLUMN placement_revision integer NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE tenants ADD COLUMN moving_since timestamptz")
    op.execute("ALTER TABLE tenants ADD COLUMN retired_placement jsonb")
    op.execute(
        "ALTER TABLE tenants ADD CONSTRAINT tenants_placement_named"
        " CHECK ((placement = 'shared') = (placement_name IS NULL))"
    )
    op.execute("ALTER TABLE tenant_storage ADD COLUMN moved boolean NOT NULL DEFAULT false")
    op.execute(STORAGE_FENCE_FUNCTION)
    op.execute(STORAGE_FENCE_TRIGGER)
    op.execute("DROP TRIGGER tenants_notify_credentials ON tenants")
    extra = "".join(f", {c}" for c in _PLACEMENT_COLUMNS)
    when = "".join(f"\n        OR OLD.{c} IS DISTINCT FROM NEW.{c}" for c in _PLACEMENT_COLUMNS)
    op.execute(_TRIGGER.format(extra=extra, when=when))


def downgrade() -> None:
    op.execute("DROP TRIGGER tenant_storage_fence ON tenant_storage")
    op.execute("DROP FUNCTION tenantry_storage_fence()")
    op.execute("ALTER TABLE tenant_storage DROP COLUMN moved")
    op.execute("DROP TRIGGER tenants_notify_credentials ON tenants")
    op.execute(_TRIGGER.format(extra="", when=""))
    op.execute("ALTER TABLE tenants DROP CONSTRAINT tenants_placement_named")
    for column in (
        "retired_placement",
        "moving_since",
        "placement_revision",
        "placement_secret",
        "placement_url",
        "placement_name",
        "placement",
        "tier",
    ):
        op.execute(f"ALTER TABLE tenants DROP COLUMN {column}")
