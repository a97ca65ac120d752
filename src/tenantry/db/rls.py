"""SQL for row-level security, used by migrations (never at request time).

Every tenant-scoped table gets RLS enabled *and forced* and one policy per
DML command for the application role, keyed on the transaction-local
setting `tenantry.tenant_id`. The key expression fails closed: when no
tenant is bound, `current_setting(..., true)` is NULL or '' (after a
transaction that set it ended), NULLIF turns '' into NULL, and
`tenant_id = NULL` matches no row. `current_setting` is STABLE, so the
planner evaluates it once and uses the `tenant_id`-leading index.

The owner role (migrations, admin, billing: work that is cross-tenant by
nature) gets one explicit policy, so it keeps working when it is not a
superuser; tenant-scoped statements never run as the owner.
"""

from __future__ import annotations

import re

TENANT_SETTING = "tenantry.tenant_id"
CURRENT_TENANT = f"NULLIF(current_setting('{TENANT_SETTING}', true), '')::uuid"
COMMANDS = ("SELECT", "INSERT", "UPDATE", "DELETE")

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def identifier(name: str) -> str:
    """`name` if it is a plain lower-case SQL identifier; refuse anything else."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def migration_app_role() -> str:
    """The application role the running migration grants to (set by `db.migrate`), checked."""
    from alembic import context

    return identifier(str(context.config.attributes.get("app_role", "tenantry_app")))


def tenant_table_policies(table: str, app_role: str, column: str = "tenant_id") -> list[str]:
    """Statements that put `table` under forced RLS keyed on `column`."""
    t, role, col = identifier(table), identifier(app_role), identifier(column)
    match = f"{col} = {CURRENT_TENANT}"
    return [
        f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {t} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {t}_tenant_select ON {t} FOR SELECT TO {role} USING ({match})",
        f"CREATE POLICY {t}_tenant_insert ON {t} FOR INSERT TO {role} WITH CHECK ({match})",
        f"CREATE POLICY {t}_tenant_update ON {t} FOR UPDATE TO {role} USING ({match}) WITH CHECK ({match})",
        f"CREATE POLICY {t}_tenant_delete ON {t} FOR DELETE TO {role} USING ({match})",
        f"CREATE POLICY {t}_owner_all ON {t} FOR ALL TO CURRENT_USER USING (true) WITH CHECK (true)",
    ]


def drop_tenant_table_policies(table: str) -> list[str]:
    t = identifier(table)
    names = [f"{t}_tenant_{c.lower()}" for c in COMMANDS] + [f"{t}_owner_all"]
    return [f"DROP POLICY IF EXISTS {n} ON {t}" for n in names]
