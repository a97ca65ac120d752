"""The trail's storage: append-only for the application role, tamper-evident, partitioned with retention."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry.audit import store
from tenantry.audit.changes import describe
from tenantry.audit.maintenance import maintain
from tenantry.audit.records import ADMITTED, REFUSED, AuditRecord
from tenantry.db.engine import Database
from tenantry.governance.guardrails import redacted
from tenantry.metering.ledger import insert_documents
from tenantry.settings import Settings
from tests.test_cli import run


def record(tenant: uuid.UUID, n: int, *, at: datetime | None = None) -> AuditRecord:
    kept = AuditRecord(tenant, "rest", f"GET /thing/{n}", REFUSED if n % 3 == 0 else ADMITTED, "ok", latency_us=n)
    if at is not None:
        kept.at_us = int(at.timestamp() * 1_000_000) + n
    return kept


async def append(db: Database, tenant: uuid.UUID, records: list[AuditRecord]) -> None:
    await insert_documents(db, {}, {tenant: [r.document() for r in records]})


async def test_the_app_role_can_read_and_append_audit_records_and_nothing_else(db: Database) -> None:
    async with db.system() as conn:
        tables = (
            (
                await conn.execute(
                    text(
                        "SELECT c.relname FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid"
                        " WHERE i.inhparent = 'audit_records'::regclass"
                    )
                )
            )
            .scalars()
            .all()
        )
        assert "audit_records_default" in tables
        assert len(tables) >= 4
        privileges = {
            (table, p): (
                await conn.execute(
                    text("SELECT has_table_privilege(:role, :table, :p)"),
                    {"role": db.app_role, "table": table, "p": p},
                )
            ).scalar_one()
            for table in ["audit_records", *tables]
            for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
        }
    # Through the parent: read and append only. The partitions themselves: nothing at all.
    assert {p for (t, p), granted in privileges.items() if t == "audit_records" and granted} == {"SELECT", "INSERT"}
    assert not [key for key, granted in privileges.items() if key[0] != "audit_records" and granted]

    tenant = uuid.uuid4()
    await append(db, tenant, [record(tenant, 1)])
    for statement in (
        "UPDATE audit_records SET outcome = 'forged'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
    ):
        with pytest.raises(DBAPIError, match="permission denied"):
            async with db.tenant(tenant) as conn:
                await conn.execute(text(statement))
    async with db.tenant(tenant) as conn:
        assert (await conn.execute(text("SELECT outcome FROM audit_records"))).scalars().all() == ["ok"]
    # A tenant reads only its own trail.
    async with db.tenant(uuid.uuid4()) as conn:
        assert (await conn.execute(text("SELECT count(*) FROM audit_records"))).scalar_one() == 0


async def test_a_replayed_entry_is_stored_once_and_chains_stay_per_tenant(db: Database) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    first = [record(a, n) for n in range(1, 4)]
    await append(db, a, first)
    await append(db, b, [record(b, 1)])
    await append(db, a, [first[1], record(a, 4)])  # a drain re-reading an entry after a crash
    async with db.tenant(a) as conn:
        seqs = (await conn.execute(text("SELECT seq FROM audit_records ORDER BY seq"))).scalars().all()
    assert seqs == [1, 2, 3, 4]
    assert (await store.verify(db, a)).public()["intact"]
    assert (await store.verify(db, b)).checked == 1


async def test_verify_names_the_first_broken_link_of_an_edited_or_removed_record(
    db: Database, settings: Settings
) -> None:
    tenant = uuid.uuid4()
    await append(db, tenant, [record(tenant, n) for n in range(1, 8)])
    intact = await store.verify(db, tenant)
    assert (intact.intact, intact.checked, intact.head_seq) == (True, 7, 7)
    cli = run(settings, "audit", "verify", "--tenant", str(tenant))
    assert cli.returncode == 0
    assert "intact, 7 record(s)" in cli.stdout

    # Someone with the owner's rights turns refused record 3 into an admitted one (the app role cannot).
    async with db.system() as conn:
        await conn.execute(
            text("UPDATE audit_records SET decision = 'admitted' WHERE tenant_id = :t AND seq = 3"), {"t": tenant}
        )
    edited = await store.verify(db, tenant)
    assert edited.broken is not None
    assert (edited.broken["seq"], edited.checked) == (3, 2)
    assert "edited" in edited.broken["problem"]
    cli = run(settings, "audit", "verify", "--tenant", str(tenant), "--json")
    assert cli.returncode == 1
    assert json.loads(cli.stdout)["broken"]["seq"] == 3
    async with db.system() as conn:  # put it back: intact again
        await conn.execute(
            text("UPDATE audit_records SET decision = 'refused' WHERE tenant_id = :t AND seq = 3"), {"t": tenant}
        )
    assert (await store.verify(db, tenant)).intact

    # Removing record 4 instead shows as a gap, and removing the last ones as a chain shorter than its head.
    async with db.system() as conn:
        await conn.execute(text("DELETE FROM audit_records WHERE tenant_id = :t AND seq = 4"), {"t": tenant})
    removed = await store.verify(db, tenant)
    assert removed.broken is not None
    assert removed.broken["seq"] == 5
    assert "4 to 4 are missing" in removed.broken["problem"]
    other = uuid.uuid4()
    await append(db, other, [record(other, n) for n in range(1, 4)])
    async with db.system() as conn:
        await conn.execute(text("DELETE FROM audit_records WHERE tenant_id = :t AND seq = 3"), {"t": other})
    truncated = await store.verify(db, other)
    assert truncated.broken is not None
    assert "head is at seq 3" in truncated.broken["problem"]


async def test_retention_drops_whole_old_months_and_the_chain_verifies_from_where_it_now_starts(
    db: Database, settings: Settings
) -> None:
    tenant = uuid.uuid4()
    async with db.system() as conn:
        await conn.execute(
            text(
                "CREATE TABLE audit_records_y2020m01 PARTITION OF audit_records"
                " FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-02-01 00:00+00')"
            )
        )
    old = datetime(2020, 1, 15, tzinfo=UTC)
    await append(db, tenant, [record(tenant, 1, at=old), record(tenant, 2, at=old), record(tenant, 3)])
    assert (await store.verify(db, tenant)).checked == 3

    assert await maintain(db, keep_months=0) == []  # nothing made (it exists), nothing dropped: keep all
    done = await maintain(db, keep_months=13)
    assert "dropped audit_records_y2020m01" in done
    after = await store.verify(db, tenant)
    assert (after.intact, after.first_seq, after.checked, after.head_seq) == (True, 3, 1, 3)
    async with db.tenant(tenant) as conn:
        assert (await conn.execute(text("SELECT seq FROM audit_records"))).scalars().all() == [3]


async def test_a_record_dated_past_the_made_months_moves_into_its_partition_when_that_month_is_made(
    db: Database,
) -> None:
    tenant = uuid.uuid4()
    far = datetime.now(UTC) + timedelta(days=400)  # a clock far ahead: no partition holds that month yet
    await append(db, tenant, [record(tenant, 1, at=far), record(tenant, 2)])
    month = f"audit_records_y{far:%Y}m{far:%m}"

    async def partition_of(seq: int) -> str:
        async with db.system() as conn:
            found = await conn.execute(
                text("SELECT tableoid::regclass::text FROM audit_records WHERE tenant_id = :t AND seq = :s"),
                {"t": tenant, "s": seq},
            )
            return str(found.scalar_one())

    assert await partition_of(1) == "audit_records_default"
    async with db.system() as conn:
        done = (await conn.execute(text("SELECT tenantry_audit_partitions(15, 0)"))).scalar_one()
    assert f"created {month} (1 records moved in)" in done
    assert await partition_of(1) == month
    assert (await store.verify(db, tenant)).intact
    async with db.system() as conn:  # leave the months as a migration makes them, for the other tests
        for stale in done:
            await conn.execute(text(f"DROP TABLE {stale.split()[1]}"))


async def test_the_cli_lists_exports_and_checks_argument_digests(
    db: Database, settings: Settings, tmp_path: object
) -> None:
    tenant = uuid.uuid4()
    async with db.system() as conn:
        await conn.execute(text("INSERT INTO tenants (id, name) VALUES (:t, 'audited')"), {"t": tenant})
    await append(db, tenant, [record(tenant, n) for n in range(1, 6)])
    formula = record(tenant, 6)
    formula.method = "=HYPERLINK(1)"  # what a client could put in a path or a tool name
    await append(db, tenant, [formula])
    listed = run(settings, "audit", "list", "--tenant", str(tenant), "--limit", "2", "--json")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert [r["seq"] for r in page["records"]] == [6, 5]
    assert page["next_cursor"]
    refused = run(settings, "audit", "list", "--tenant", str(tenant), "--decision", "refused", "--json")
    assert [r["seq"] for r in json.loads(refused.stdout)["records"]] == [6, 3]
    exported = run(settings, "audit", "export", "--tenant", str(tenant), "--format", "csv")
    assert exported.returncode == 0
    assert len(exported.stdout.splitlines()) == 7
    assert "'=HYPERLINK(1)" in exported.stdout  # a spreadsheet shows it, and does not run it
    bad = run(settings, "audit", "list", "--tenant", str(tenant), "--since", "yesterday")
    assert bad.returncode == 2
    assert "ISO 8601" in bad.stderr
    assert run(settings, "audit", "list", "--tenant", str(uuid.uuid4())).returncode == 2  # no such tenant

    digest = run(settings, "audit", "digest", "--tenant", str(tenant), "--arguments", '{"b": 2, "a": 1}')
    made = digest.stdout.strip()
    same = run(settings, "audit", "digest", "--tenant", str(tenant), "--arguments", '{"a":1,"b":2}', "--digest", made)
    other = run(settings, "audit", "digest", "--tenant", str(tenant), "--arguments", '{"a":1}', "--digest", made)
    assert (same.returncode, other.returncode) == (0, 1)


def test_a_change_never_records_a_secret_and_redacted_arguments_redact_keys_too() -> None:
    change = describe(
        "upstream.update",
        "u1",
        {"url": "https://a", "client_secret": "s3cr3t"},
        {"url": "https://b", "client_secret": "n3w", "options": {"refresh_token": "r", "timeout": 5}},
    )
    assert change["changes"]["url"] == {"before": "https://a", "after": "https://b"}
    assert change["changes"]["client_secret"] == {"changed": True}
    assert change["changes"]["options"]["after"] == {"refresh_token": "[secret]", "timeout": 5}
    assert "s3cr3t" not in json.dumps(change)
    assert "n3w" not in json.dumps(change)
    assert redacted({"alice@example.com": {"note": "call bob@example.org"}}) == {"[EMAIL]": {"note": "call [EMAIL]"}}
