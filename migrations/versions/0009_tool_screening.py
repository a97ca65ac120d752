"""Tool-poisoning screening: a pin says whether an admin reviewed the definition it approves.

A definition the screener flags (`federation/screening.py`) is withheld until an admin approves it;
the approval pins it with `reviewed = true`, and only such a pin lets a flagged definition through. A
definition pinned automatically on first sight (nothing flagged) has `reviewed = false`.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE upstream_tool_pins ADD COLUMN reviewed boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    op.execute("ALTER TABLE upstream_tool_pins DROP COLUMN reviewed")
