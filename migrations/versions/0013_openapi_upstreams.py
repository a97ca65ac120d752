"""Upstreams of kind `openapi`: a REST API described by an OpenAPI document, its operations as tools.

- `transport` may be `openapi`;
- `document`: the OpenAPI document when it was uploaded (NULL when it is fetched from `url`, at every
  discovery, like an MCP upstream's `tools/list`);
- `operations`: which operations become tools (`{"include": [...], "exclude": [...]}`, patterns on the
  tool name or `tag:<tag>`).

No new table, so no new policy: the columns live under the `upstreams` policies of 0003.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE upstreams ADD COLUMN document jsonb")
    op.execute("ALTER TABLE upstreams ADD COLUMN operations jsonb NOT NULL DEFAULT '{}'::jsonb")
    op.execute("ALTER TABLE upstreams DROP CONSTRAINT upstreams_transport_check")
    op.execute(
        "ALTER TABLE upstreams ADD CONSTRAINT upstreams_transport_check"
        " CHECK (transport IN ('streamable_http', 'sse', 'openapi'))"
    )
    # A document only for the kind that reads one.
    op.execute(
        "ALTER TABLE upstreams ADD CONSTRAINT upstreams_document_kind_check"
        " CHECK (document IS NULL OR transport = 'openapi')"
    )


def downgrade() -> None:
    op.execute("DELETE FROM upstreams WHERE transport = 'openapi'")
    op.execute("ALTER TABLE upstreams DROP CONSTRAINT upstreams_document_kind_check")
    op.execute("ALTER TABLE upstreams DROP CONSTRAINT upstreams_transport_check")
    op.execute(
        "ALTER TABLE upstreams ADD CONSTRAINT upstreams_transport_check CHECK (transport IN ('streamable_http', 'sse'))"
    )
    op.execute("ALTER TABLE upstreams DROP COLUMN operations")
    op.execute("ALTER TABLE upstreams DROP COLUMN document")
