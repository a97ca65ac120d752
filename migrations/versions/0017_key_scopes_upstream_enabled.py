"""A key's roles and tool scope may change after it is made; an upstream may be switched off.

- `api_keys`: a change of `subject`, `roles` or `tools` (`PATCH /api/tenants/{id}/keys/{key_id}`) is
  announced on `tenantry_tenant_changes` like a revocation (0007's function), so every replica forgets
  what it cached for the key's tenant: a narrowed key is refused a tool at once on every replica.
- `upstreams.enabled`: a disabled upstream keeps its row, credentials and pins but offers nothing (no
  discovery, no tools, no session). Its change is announced by 0005's trigger (any update of the row).

Revision ID: 0017
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TRIGGER api_keys_notify_credentials_scope
        AFTER UPDATE OF subject, roles, tools ON api_keys
        FOR EACH ROW WHEN (
            OLD.subject IS DISTINCT FROM NEW.subject OR OLD.roles IS DISTINCT FROM NEW.roles
            OR OLD.tools IS DISTINCT FROM NEW.tools
        )
        EXECUTE FUNCTION tenantry_notify_tenant_credentials()
        """
    )
    op.execute("ALTER TABLE upstreams ADD COLUMN enabled boolean NOT NULL DEFAULT true")


def downgrade() -> None:
    op.execute("ALTER TABLE upstreams DROP COLUMN enabled")
    op.execute("DROP TRIGGER api_keys_notify_credentials_scope ON api_keys")
