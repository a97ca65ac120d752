"""Refusal roll-ups (migration 0012's refusal half): one source for the shared tables and tier copies.

A refused request leaves no usage event, only an audit record: the hourly count of refusals per
(tenant, kind, name, reason) in `refusal_rollups` is kept by triggers on `audit_records` (0012's
docstring tells how). Since a schema- or database-tier tenant's trail lives in its own copy (tier
revision 2), so do these roll-ups: the copy gets the same table, functions and triggers from these
statements, the functions that name tables pinned to the copy (`SET search_path FROM CURRENT`), and a
tenant's usage report reads its refusals where its trail is (`metering/reports.py`). A move needs no
step of its own for them: the copied records are rolled up by the target's trigger as they arrive, and
the records deleted from a copy left behind are taken back out of its roll-ups.

Frozen like a migration (0012 runs this text): a change is a new migration and a new tier revision.
"""

from __future__ import annotations

from tenantry.db.rls import identifier, tenant_table_policies

# Refused audit records (as `source`) grouped into roll-up rows.
ROLL_UP_REFUSALS = """
    SELECT tenant_id, bucket, kind, name, reason, count(*) AS refusals
    FROM (SELECT tenant_id, date_trunc('hour', at, 'UTC') AS bucket,
                 tenantry_refusal_kind(method, tool) AS kind, coalesce(tenantry_usage_name(tool), method) AS name,
                 coalesce(reason, outcome) AS reason
          FROM source WHERE decision = 'refused') a
    GROUP BY tenant_id, bucket, kind, name, reason
"""

UPSERT_REFUSALS = """
    INSERT INTO refusal_rollups AS r (tenant_id, bucket, kind, name, reason, refusals)
    {rows}
    ORDER BY tenant_id, bucket, kind, name, reason
    ON CONFLICT (tenant_id, bucket, kind, name, reason) DO UPDATE SET refusals = r.refusals + excluded.refusals
"""


def over(rows: str, source: str) -> str:
    return rows.replace("FROM source", f"FROM {source}")


def refusal_statements(pin: str = "") -> dict[str, str]:
    """0012's refusal statements by name; `pin`: a clause for the trigger functions (a tier copy's)."""
    out: dict[str, str] = {}
    out["usage_kind"] = """
        CREATE FUNCTION tenantry_usage_kind(tool text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT CASE WHEN tool LIKE 'resource:%' THEN 'resource' WHEN tool LIKE 'prompt:%' THEN 'prompt'
                        ELSE 'tool' END
        $$
        """
    out["usage_name"] = """
        CREATE FUNCTION tenantry_usage_name(tool text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT CASE WHEN tool LIKE 'resource:%' THEN substr(tool, 10) WHEN tool LIKE 'prompt:%'
                        THEN substr(tool, 8) ELSE tool END
        $$
        """
    out["refusal_kind"] = """
        CREATE FUNCTION tenantry_refusal_kind(method text, tool text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT CASE WHEN tool IS NULL THEN 'request'
                        WHEN tenantry_usage_kind(tool) <> 'tool' THEN tenantry_usage_kind(tool)
                        WHEN method = 'resources/read' THEN 'resource'
                        WHEN method = 'prompts/get' THEN 'prompt'
                        ELSE 'tool' END
        $$
        """
    out["table"] = """
        CREATE TABLE refusal_rollups (
            tenant_id uuid NOT NULL,
            bucket timestamptz NOT NULL,
            kind text NOT NULL,
            name text NOT NULL,
            reason text NOT NULL,
            refusals bigint NOT NULL,
            PRIMARY KEY (tenant_id, bucket, kind, name, reason)
        )
        """
    out["rollup_function"] = f"""
        CREATE FUNCTION tenantry_rollup_refusals() RETURNS trigger LANGUAGE plpgsql SECURITY INVOKER{pin} AS $$
        BEGIN
            {UPSERT_REFUSALS.format(rows=over(ROLL_UP_REFUSALS, "added"))};
            RETURN NULL;
        END
        $$
        """
    out["rollup_trigger"] = """
        CREATE TRIGGER audit_records_rollup AFTER INSERT ON audit_records
        REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION tenantry_rollup_refusals()
        """
    out["unroll_function"] = f"""
        CREATE FUNCTION tenantry_unroll_refusal() RETURNS trigger LANGUAGE plpgsql SECURITY INVOKER{pin} AS $$
        BEGIN
            UPDATE refusal_rollups SET refusals = refusals - 1
            WHERE tenant_id = OLD.tenant_id AND bucket = date_trunc('hour', OLD.at, 'UTC')
              AND kind = tenantry_refusal_kind(OLD.method, OLD.tool)
              AND name = coalesce(tenantry_usage_name(OLD.tool), OLD.method)
              AND reason = coalesce(OLD.reason, OLD.outcome);
            RETURN NULL;
        END
        $$
        """
    out["unroll_trigger"] = """
        CREATE TRIGGER audit_records_unroll AFTER DELETE ON audit_records
        FOR EACH ROW WHEN (OLD.decision = 'refused') EXECUTE FUNCTION tenantry_unroll_refusal()
        """
    return out


def copy_statements(app_role: str) -> list[str]:
    """The refusal roll-ups of a tier copy (tier revision 2), made after its trail."""
    role = identifier(app_role)
    made = refusal_statements(" SET search_path FROM CURRENT")
    return [
        made["usage_kind"],
        made["usage_name"],
        made["refusal_kind"],
        made["table"],
        *tenant_table_policies("refusal_rollups", role),
        f"GRANT SELECT, INSERT, UPDATE ON refusal_rollups TO {role}",
        made["rollup_function"],
        made["rollup_trigger"],
        made["unroll_function"],
        made["unroll_trigger"],
        "CREATE VIEW refusal_rollups_recount WITH (security_invoker = true) AS "
        + over(ROLL_UP_REFUSALS, "audit_records"),
        f"GRANT SELECT ON refusal_rollups_recount TO {role}",
    ]
