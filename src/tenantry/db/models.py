"""The tables, as SQLAlchemy Core metadata for queries.

The schema itself (with its RLS policies and grants) is owned by the alembic
revisions in `tenantry/migrations`; this module must describe the same
columns. `tests/db/test_schema.py` checks the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()

tenants = Table(
    "tenants",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", Text, nullable=False),
    Column("plan", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Column("limits", JSONB, nullable=False, server_default="{}"),
    # --- billing (migration 0004) ---
    Column("stripe_customer_id", Text, unique=True),
    Column("stripe_subscription_id", Text),
    Column("checkout_session_id", Text, unique=True),
    Column("subscription_status", Text),
    Column("subscription_event_at", DateTime(timezone=True)),
    Column("payment_event_at", DateTime(timezone=True)),
    Column("past_due_since", DateTime(timezone=True)),
    Column("plan_before_restriction", Text),
    Column("canary_passed_at", DateTime(timezone=True)),
    # --- isolation tiers (migration 0014) ---
    Column("tier", Text),
    Column("placement", Text, nullable=False, server_default="shared"),
    Column("placement_name", Text),
    Column("placement_url", Text),
    Column("placement_secret", LargeBinary),
    Column("placement_revision", Integer, nullable=False, server_default="0"),
    Column("moving_since", DateTime(timezone=True)),
    Column("retired_placement", JSONB),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("tenant_id", Uuid, ForeignKey("tenants.id"), primary_key=True),
    Column("id", Uuid, primary_key=True),
    Column("name", Text, nullable=False),
    Column("prefix", Text, nullable=False),
    Column("key_hash", LargeBinary, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    # --- governance (migration 0008) ---
    Column("subject", Text),
    Column("roles", ARRAY(Text), nullable=False, server_default="{}"),
    Column("tools", ARRAY(Text)),  # the only tools the key may call (globs); NULL: no restriction
)

tenant_data = Table(
    "tenant_data",
    metadata,
    Column("tenant_id", Uuid, ForeignKey("tenants.id"), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", JSONB, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

usage_events = Table(
    "usage_events",
    metadata,
    Column("tenant_id", Uuid, ForeignKey("tenants.id"), primary_key=True),
    Column("event_id", Uuid, primary_key=True),
    Column("tool", Text, nullable=False),
    Column("units", Integer, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("metered", Boolean, nullable=False, server_default="true"),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# --- billing (migration 0004) ---
usage_reports = Table(
    "usage_reports",
    metadata,
    Column("tenant_id", Uuid, ForeignKey("tenants.id"), primary_key=True),
    Column("id", Uuid, primary_key=True),
    Column("meter", Text, nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("event_count", Integer, nullable=False),
    Column("first_occurred_at", DateTime(timezone=True)),
    Column("last_occurred_at", DateTime(timezone=True)),
    Column("event_timestamp", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_error", Text),
    Column("stripe_customer_id", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("sent_at", DateTime(timezone=True)),
)

usage_report_events = Table(
    "usage_report_events",
    metadata,
    Column("tenant_id", Uuid, primary_key=True),
    Column("event_id", Uuid, primary_key=True),
    Column("report_id", Uuid, nullable=False),
)

usage_archive = Table(
    "usage_archive",
    metadata,
    Column("tenant_id", Uuid, ForeignKey("tenants.id"), primary_key=True),
    Column("event_id", Uuid, primary_key=True),
    Column("tool", Text, nullable=False),
    Column("units", Integer, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("report_id", Uuid),
    Column("archived_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

onboarding_keys = Table(
    "onboarding_keys",
    metadata,
    Column("tenant_id", Uuid, ForeignKey("tenants.id"), primary_key=True),
    Column("key_id", Uuid, primary_key=True),
    Column("ciphertext", LargeBinary),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("claimed_at", DateTime(timezone=True)),
)

stripe_webhook_events = Table(
    "stripe_webhook_events",
    metadata,
    Column("id", Text, primary_key=True),
    Column("type", Text, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("outcome", Text, nullable=False),
    Column("customer", Text),
    Column("payload", JSONB),
)


upstreams = Table(
    "upstreams",
    metadata,
    Column("tenant_id", Uuid, ForeignKey("tenants.id"), primary_key=True),
    Column("id", Uuid, primary_key=True),
    Column("name", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("transport", Text, nullable=False),
    Column("credentials", LargeBinary, nullable=False),
    Column("header_names", ARRAY(Text), nullable=False, server_default="{}"),
    Column("costs", JSONB, nullable=False, server_default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Kind `openapi` (0013): an uploaded document (NULL: fetched from `url`) and the operation filters.
    Column("document", JSONB, nullable=True),
    Column("operations", JSONB, nullable=False, server_default="{}"),
    # 0017: a disabled upstream keeps its row, credentials and pins but offers nothing.
    Column("enabled", Boolean, nullable=False, server_default="true"),
)

upstream_tool_pins = Table(
    "upstream_tool_pins",
    metadata,
    Column("tenant_id", Uuid, primary_key=True),
    Column("upstream_id", Uuid, primary_key=True),
    Column("tool", Text, primary_key=True),
    Column("sha256", Text, nullable=False),
    Column("definition", JSONB, nullable=False),
    Column("approved_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # --- screening (migration 0009): an admin approved this definition (not only first sight) ---
    Column("reviewed", Boolean, nullable=False, server_default="false"),
)

upstream_tool_drift = Table(
    "upstream_tool_drift",
    metadata,
    Column("tenant_id", Uuid, primary_key=True),
    Column("upstream_id", Uuid, primary_key=True),
    Column("tool", Text, primary_key=True),
    Column("pinned_sha256", Text, nullable=False),
    Column("seen_sha256", Text, primary_key=True),
    Column("definition", JSONB, nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

tenant_policies = Table(
    "tenant_policies",
    metadata,
    Column("tenant_id", Uuid, ForeignKey("tenants.id"), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("document", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

tenant_identity_providers = Table(
    "tenant_identity_providers",
    metadata,
    Column("tenant_id", Uuid, ForeignKey("tenants.id"), primary_key=True),
    Column("issuer", Text, nullable=False, unique=True),
    Column("jwks_url", Text, nullable=False),
    Column("audience", Text, nullable=False),
    Column("subject_claim", Text, nullable=False, server_default="sub"),
    Column("roles_claim", Text, nullable=False, server_default="roles"),
    Column("algorithms", ARRAY(Text), nullable=False, server_default="{RS256,ES256}"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

governance_triggers = Table(
    "governance_triggers",
    metadata,
    Column("tenant_id", Uuid, ForeignKey("tenants.id"), primary_key=True),
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("trigger", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("session", Text, nullable=False, server_default=""),
    Column("tool", Text, nullable=False, server_default=""),
    Column("detail", Text, nullable=False, server_default=""),
    Column("fired_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

kills = Table(
    "kills",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("applies_to", Uuid, ForeignKey("tenants.id")),  # NULL: every tenant (a tool kill)
    Column("scope", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("lifted_at", DateTime(timezone=True)),
)

TENANT_SCOPED_TABLES = (
    "api_keys",
    "tenant_data",
    "usage_events",
    # billing
    "usage_reports",
    "usage_report_events",
    "usage_archive",
    "onboarding_keys",
    "upstreams",
    "upstream_tool_pins",
    "upstream_tool_drift",
    # governance
    "tenant_policies",
    "tenant_identity_providers",
    "governance_triggers",
)
