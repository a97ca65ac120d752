"""Billing: Stripe ids on tenants, usage reports (the meter-event outbox), webhook events, usage archive.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

from tenantry.db.rls import drop_tenant_table_policies, migration_app_role, tenant_table_policies

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TENANT_TABLES = ("usage_report_events", "usage_reports", "usage_archive", "onboarding_keys")


def upgrade() -> None:
    role = migration_app_role()
    op.execute(
        """
        ALTER TABLE tenants
            ADD COLUMN stripe_customer_id text,
            ADD COLUMN stripe_subscription_id text,
            ADD COLUMN checkout_session_id text,
            ADD COLUMN subscription_status text,
            -- `created` of the newest subscription event applied: an older one arriving later is ignored.
            ADD COLUMN subscription_event_at timestamptz,
            ADD COLUMN payment_event_at timestamptz,
            ADD COLUMN past_due_since timestamptz,
            -- The plan a past-due tenant was on before the dunning policy restricted it.
            ADD COLUMN plan_before_restriction text,
            ADD COLUMN canary_passed_at timestamptz,
            ADD CONSTRAINT tenants_stripe_customer_id_key UNIQUE (stripe_customer_id),
            ADD CONSTRAINT tenants_checkout_session_id_key UNIQUE (checkout_session_id)
        """
    )

    # One row per meter event sent (or to be sent) to Stripe: the outbox. Its id is the
    # meter event `identifier`, so every retry of a row is the same event to Stripe.
    op.execute(
        """
        CREATE TABLE usage_reports (
            tenant_id uuid NOT NULL REFERENCES tenants (id),
            id uuid NOT NULL,
            meter text NOT NULL,
            units bigint NOT NULL CHECK (units >= 0),
            event_count integer NOT NULL CHECK (event_count >= 0),
            first_occurred_at timestamptz,
            last_occurred_at timestamptz,
            event_timestamp timestamptz NOT NULL,
            status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'parked')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error text,
            stripe_customer_id text,
            created_at timestamptz NOT NULL DEFAULT now(),
            sent_at timestamptz,
            PRIMARY KEY (tenant_id, id)
        )
        """
    )
    op.execute("CREATE INDEX usage_reports_tenant_status_idx ON usage_reports (tenant_id, status, next_attempt_at)")
    # Which report covers which usage event. The ledger stays append-only: "reported" lives here.
    op.execute(
        """
        CREATE TABLE usage_report_events (
            tenant_id uuid NOT NULL,
            event_id uuid NOT NULL,
            report_id uuid NOT NULL,
            PRIMARY KEY (tenant_id, event_id),
            FOREIGN KEY (tenant_id, event_id) REFERENCES usage_events (tenant_id, event_id),
            FOREIGN KEY (tenant_id, report_id) REFERENCES usage_reports (tenant_id, id)
        )
        """
    )
    op.execute("CREATE INDEX usage_report_events_report_idx ON usage_report_events (tenant_id, report_id)")
    # A deprovisioned tenant's usage, exported before soft delete.
    op.execute(
        """
        CREATE TABLE usage_archive (
            tenant_id uuid NOT NULL REFERENCES tenants (id),
            event_id uuid NOT NULL,
            tool text NOT NULL,
            units integer NOT NULL,
            outcome text NOT NULL,
            occurred_at timestamptz NOT NULL,
            report_id uuid,
            archived_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, event_id)
        )
        """
    )
    # Onboarding's first API key, encrypted at rest until an operator claims it (once).
    op.execute(
        """
        CREATE TABLE onboarding_keys (
            tenant_id uuid NOT NULL REFERENCES tenants (id),
            key_id uuid NOT NULL,
            ciphertext bytea,
            created_at timestamptz NOT NULL DEFAULT now(),
            claimed_at timestamptz,
            PRIMARY KEY (tenant_id, key_id)
        )
        """
    )
    for table in _TENANT_TABLES:
        for statement in tenant_table_policies(table, role):
            op.execute(statement)
    # The app role may read its own reports (usage sub-resources); it writes none of these tables.
    op.execute(f"GRANT SELECT ON usage_reports, usage_report_events, usage_archive TO {role}")

    # Owner-only (no tenant_id, nothing granted to the app role): every Stripe event id seen.
    op.execute(
        """
        CREATE TABLE stripe_webhook_events (
            id text PRIMARY KEY,
            type text NOT NULL,
            created timestamptz NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            outcome text NOT NULL,
            -- Only for events whose customer no tenant had yet: replayed by onboarding, then cleared.
            customer text,
            payload jsonb
        )
        """
    )
    op.execute("CREATE INDEX stripe_webhook_events_received_idx ON stripe_webhook_events (received_at)")
    op.execute(
        "CREATE INDEX stripe_webhook_events_unmatched_idx ON stripe_webhook_events (customer) "
        "WHERE outcome = 'unknown_customer'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE stripe_webhook_events")
    for table in _TENANT_TABLES:
        for statement in drop_tenant_table_policies(table):
            op.execute(statement)
        op.execute(f"DROP TABLE {table}")
    op.execute(
        """
        ALTER TABLE tenants
            DROP CONSTRAINT tenants_checkout_session_id_key,
            DROP CONSTRAINT tenants_stripe_customer_id_key,
            DROP COLUMN canary_passed_at,
            DROP COLUMN plan_before_restriction,
            DROP COLUMN past_due_since,
            DROP COLUMN payment_event_at,
            DROP COLUMN subscription_event_at,
            DROP COLUMN subscription_status,
            DROP COLUMN checkout_session_id,
            DROP COLUMN stripe_subscription_id,
            DROP COLUMN stripe_customer_id
        """
    )
