"""The audit trail's DDL: one source for the shared tables (migration 0010) and every tier copy.

Migration 0010 made the shared `audit_records`, `audit_chain_heads` and their functions from these
statements; tier revision 2 (`tier_schema.py`) makes a schema- or database-tier tenant's copy from the
very same ones, so a record's canonical text, and so its hash, is identical wherever it lives and a
trail moves between tiers without a link changing. What the tables and functions do is told in 0010's
docstring.

The one difference is `pinned`: in a tier copy, each function that names a table or another function
of the trail carries `SET search_path FROM CURRENT`, fixed when the copy is made (its schema, or its
database's `public`), so it works on the copy's tables whatever the caller's search path (a CLI change
recorded on the owner's connection, say). The canonical text and the chain link name nothing: they
stay inlinable.

Frozen like a migration: copies in the field and the shared tables were made from this text, so a
change is a new migration and a new tier revision, never an edit here.
"""

from __future__ import annotations

from tenantry.db.rls import CURRENT_TENANT, TENANT_SETTING

# The columns a record's hash covers (all but the hashes), in order. Its canonical text is their row's
# text form (record_out: each value quoted where it needs to be, NULL empty, so no two records share
# one; uuid, integer, text and jsonb print the same whatever the session's settings), with the time as
# microseconds since the epoch (a timestamp's text depends on the time zone setting).
_FIELDS = (
    ("tenant_id", "uuid"),
    ("seq", "bigint"),
    ("at", "timestamptz"),
    ("id", "uuid"),
    ("request_id", "text"),
    ("transport", "text"),
    ("method", "text"),
    ("tool", "text"),
    ("subject", "text"),
    ("key_id", "text"),
    ("session", "text"),
    ("decision", "text"),
    ("reason", "text"),
    ("outcome", "text"),
    ("status", "integer"),
    ("latency_us", "bigint"),
    ("event_id", "uuid"),
    ("args_digest", "text"),
    ("args", "jsonb"),
    ("detail", "jsonb"),
)
_PARAMS = ", ".join(f"{name} {kind}" for name, kind in _FIELDS)


_CANONICAL = (
    "ROW("
    + ", ".join(
        "(extract(epoch FROM $3) * 1000000)::bigint" if name == "at" else f"${n}"
        for n, (name, _) in enumerate(_FIELDS, start=1)
    )
    + ")::text"
)
_ROW_ARGS = ", ".join(f"r.{name}" for name, _ in _FIELDS)
_X_ARGS = ", ".join(f"x.{name}" for name, _ in _FIELDS)
_X_COLUMNS = ", ".join(f"c.{name}" for name, _ in _FIELDS)
_NAMES = ", ".join(name for name, _ in _FIELDS)

# A record's document (`AuditRecord.document`) read as columns: `d` as `json_to_record` types it, and
# its columns after `at` and `seq` under the names of `audit_records` (the text of 0010's function).
DOC_RECORD = """d(
                             id uuid, at bigint, rid text, tr text, m text, tool text, sub text, key text,
                             ses text, d text, r text, o text, st integer, lat bigint, e uuid, dig text,
                             args jsonb, det jsonb)"""
DOC_COLUMNS = """d.id,
                           coalesce(d.rid, '') AS request_id, d.tr AS transport, d.m AS method, d.tool,
                           d.sub AS subject, d.key AS key_id, d.ses AS session, d.d AS decision, d.r AS reason,
                           d.o AS outcome, d.st AS status, coalesce(d.lat, 0) AS latency_us, d.e AS event_id,
                           d.dig AS args_digest, d.args, d.det AS detail"""
# What the shared ledger's batch function (`ledger_schema.py`) writes and hashes, as 0010's does.
RECORD_NAMES, RECORD_X_ARGS, RECORD_X_COLUMNS = _NAMES, _X_ARGS, _X_COLUMNS


def audit_statements(role: str, *, pinned: bool = False) -> list[str]:
    """0010's upgrade, statement by statement, granting to `role` (a checked identifier). `pinned`: for a
    tier copy (see the module docstring)."""
    pin = " SET search_path FROM CURRENT" if pinned else ""
    out: list[str] = []
    out.append(
        """
        CREATE TABLE audit_records (
            tenant_id uuid NOT NULL,
            at timestamptz NOT NULL,
            seq bigint NOT NULL CHECK (seq > 0),
            id uuid NOT NULL,
            request_id text NOT NULL DEFAULT '',
            transport text NOT NULL,
            method text NOT NULL,
            tool text,
            subject text,
            key_id text,
            session text,
            decision text NOT NULL CHECK (decision IN ('admitted', 'refused')),
            reason text,
            outcome text NOT NULL,
            status integer,
            latency_us bigint NOT NULL DEFAULT 0,
            event_id uuid,
            args_digest text,
            args jsonb,
            detail jsonb,
            prev_hash bytea NOT NULL,
            hash bytea NOT NULL,
            PRIMARY KEY (tenant_id, at, seq)
        ) PARTITION BY RANGE (at)
        """
    )
    # Verification walks a tenant's chain by seq; a replayed entry is found by id; the query API filters
    # by subject or tool over a time range.
    out.append("CREATE INDEX audit_records_chain ON audit_records (tenant_id, seq)")
    out.append("CREATE UNIQUE INDEX audit_records_once ON audit_records (tenant_id, id, at)")
    out.append("CREATE INDEX audit_records_subject ON audit_records (tenant_id, subject, at)")
    out.append("CREATE INDEX audit_records_tool ON audit_records (tenant_id, tool, at)")
    out.append("CREATE TABLE audit_records_default PARTITION OF audit_records DEFAULT")
    out.append(
        """
        CREATE TABLE audit_chain_heads (
            tenant_id uuid PRIMARY KEY,
            seq bigint NOT NULL DEFAULT 0,
            hash bytea NOT NULL DEFAULT '\\x0000000000000000000000000000000000000000000000000000000000000000',
            anchor_seq bigint NOT NULL DEFAULT 0,
            anchor_hash bytea NOT NULL
                DEFAULT '\\x0000000000000000000000000000000000000000000000000000000000000000'
        )
        """
    )
    for table in ("audit_records", "audit_chain_heads"):
        out.append(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        out.append(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        out.append(f"CREATE POLICY {table}_owner_all ON {table} FOR ALL TO CURRENT_USER USING (true) WITH CHECK (true)")
    match = f"tenant_id = {CURRENT_TENANT}"
    # Append-only: the application role reads and appends records, nothing else (no UPDATE/DELETE policy
    # and no such grant). It moves its chain's head forward.
    out.append(f"CREATE POLICY audit_records_tenant_select ON audit_records FOR SELECT TO {role} USING ({match})")
    out.append(f"CREATE POLICY audit_records_tenant_insert ON audit_records FOR INSERT TO {role} WITH CHECK ({match})")
    out.append(f"GRANT SELECT, INSERT ON audit_records TO {role}")
    heads = "audit_chain_heads"
    out.append(f"CREATE POLICY {heads}_tenant_select ON {heads} FOR SELECT TO {role} USING ({match})")
    out.append(f"CREATE POLICY {heads}_tenant_insert ON {heads} FOR INSERT TO {role} WITH CHECK ({match})")
    out.append(
        f"CREATE POLICY {heads}_tenant_update ON {heads} FOR UPDATE TO {role} USING ({match}) WITH CHECK ({match})"
    )
    out.append(f"GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO {role}")
    out.append(
        f"""
        CREATE FUNCTION tenantry_audit_canonical({_PARAMS}) RETURNS text
        LANGUAGE sql STABLE AS $$
            SELECT {_CANONICAL}
        $$
        """
    )
    out.append(
        f"""
        CREATE FUNCTION tenantry_audit_hash(r audit_records) RETURNS bytea
        LANGUAGE sql STABLE{pin} AS $$
            SELECT sha256(r.prev_hash || sha256(convert_to(tenantry_audit_canonical({_ROW_ARGS}), 'UTF8')))
        $$
        """
    )
    # The chain as a running aggregate: each row's hash covers the one before it (`head` seeds it).
    out.append(
        """
        CREATE FUNCTION tenantry_audit_link(running bytea, head bytea, digest bytea) RETURNS bytea
        LANGUAGE sql IMMUTABLE AS $$ SELECT sha256(coalesce(running, head) || digest) $$
        """
    )
    out.append("CREATE AGGREGATE tenantry_audit_chain(bytea, bytea) (SFUNC = tenantry_audit_link, STYPE = bytea)")
    out.append(
        f"""
        CREATE FUNCTION tenantry_record_audit(
            tenants uuid[], counts integer[], docs json[], fresh boolean DEFAULT false
        ) RETURNS integer LANGUAGE plpgsql SECURITY INVOKER{pin} AS $$
        DECLARE
            first integer := 1;
            total integer := 0;
            head_seq bigint;
            head_hash bytea;
            stored uuid[];
            n integer;
            last_seq bigint;
            last_hash bytea;
        BEGIN
            IF cardinality(tenants) <> cardinality(counts)
               OR (SELECT coalesce(sum(c), 0) FROM unnest(counts) AS c) <> cardinality(docs)
               OR EXISTS (SELECT FROM unnest(counts) AS c WHERE c IS NULL OR c < 1) THEN
                RAISE EXCEPTION 'tenants, counts and docs do not line up' USING ERRCODE = '22023';
            END IF;
            FOR i IN 1 .. cardinality(tenants) LOOP
                PERFORM set_config('{TENANT_SETTING}', tenants[i]::text, true);
                INSERT INTO audit_chain_heads (tenant_id) VALUES (tenants[i]) ON CONFLICT (tenant_id) DO NOTHING;
                SELECT h.seq, h.hash INTO head_seq, head_hash
                FROM audit_chain_heads h WHERE h.tenant_id = tenants[i] FOR UPDATE;
                -- Those already stored (a replayed entry), found by id in one index scan; not looked for
                -- in entries the drain read for the first time (`fresh`), which cannot have been.
                stored := '{{}}';
                IF NOT fresh THEN
                    SELECT coalesce(array_agg(a.id), '{{}}') INTO stored FROM audit_records a
                    WHERE a.tenant_id = tenants[i] AND a.id = ANY (
                        SELECT (u.doc ->> 'id')::uuid FROM unnest(docs[first : first + counts[i] - 1]) AS u(doc));
                END IF;
                -- The tenant's other records in stream order, numbered on from the head, each hashed
                -- (set-based), chained (a running aggregate) and stored, in one statement.
                WITH x AS (
                    SELECT tenants[i] AS tenant_id, to_timestamp(d.at / 1000000.0::double precision) AS at,
                           head_seq + row_number() OVER (ORDER BY u.n) AS seq, {DOC_COLUMNS}
                    FROM unnest(docs[first : first + counts[i] - 1]) WITH ORDINALITY AS u(doc, n),
                         LATERAL json_to_record(u.doc) AS {DOC_RECORD}
                    WHERE d.id <> ALL (stored)
                ), chained AS (
                    SELECT x.*, tenantry_audit_chain(
                        head_hash, sha256(convert_to(tenantry_audit_canonical({_X_ARGS}), 'UTF8'))
                    ) OVER (ORDER BY x.seq) AS hash
                    FROM x
                ), ins AS (
                    INSERT INTO audit_records ({_NAMES}, prev_hash, hash)
                    SELECT {_X_COLUMNS}, coalesce(lag(c.hash) OVER (ORDER BY c.seq), head_hash), c.hash
                    FROM chained c
                    RETURNING seq, hash
                )
                SELECT count(*), max(ins.seq), (array_agg(ins.hash ORDER BY ins.seq DESC))[1]
                INTO n, last_seq, last_hash FROM ins;
                IF n > 0 THEN
                    UPDATE audit_chain_heads SET seq = last_seq, hash = last_hash WHERE tenant_id = tenants[i];
                    total := total + n;
                END IF;
                first := first + counts[i];
            END LOOP;
            PERFORM set_config('{TENANT_SETTING}', '', true);
            RETURN total;
        END
        $$
        """
    )
    out.append("REVOKE ALL ON FUNCTION tenantry_record_audit(uuid[], integer[], json[], boolean) FROM PUBLIC")
    out.append(f"GRANT EXECUTE ON FUNCTION tenantry_record_audit(uuid[], integer[], json[], boolean) TO {role}")
    out.append(
        """
        CREATE FUNCTION tenantry_audit_partitions(ahead integer, keep_months integer) RETURNS text[]
        LANGUAGE plpgsql"""
        + pin
        + """ AS $$
        DECLARE
            this_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
            month date;
            name text;
            done text[] := '{}';
            part record;
            lo timestamptz;
            hi timestamptz;
            kept bigint;
            staged boolean := false;
        BEGIN
            FOR k IN 0 .. greatest(ahead, 0) LOOP
                month := (this_month + make_interval(months => k))::date;
                name := format('audit_records_y%sm%s', to_char(month, 'YYYY'), to_char(month, 'MM'));
                lo := month::timestamp AT TIME ZONE 'UTC';
                hi := (month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
                IF to_regclass(name) IS NULL THEN
                    -- Records the default partition took for this month (a clock far ahead) move into it:
                    -- the partition cannot be made while the default holds rows of its range.
                    IF NOT staged THEN
                        CREATE TEMP TABLE audit_moving (LIKE audit_records) ON COMMIT DROP;
                        staged := true;
                    END IF;
                    WITH moved AS (DELETE FROM audit_records_default WHERE at >= lo AND at < hi RETURNING *)
                    INSERT INTO audit_moving SELECT * FROM moved;
                    GET DIAGNOSTICS kept = ROW_COUNT;
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF audit_records FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
                    INSERT INTO audit_records SELECT * FROM audit_moving;
                    DELETE FROM audit_moving;
                    done := done || ('created ' || name
                        || CASE WHEN kept > 0 THEN format(' (%s records moved in)', kept) ELSE '' END);
                END IF;
            END LOOP;
            IF keep_months > 0 THEN
                FOR part IN
                    SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                    WHERE i.inhparent = 'audit_records'::regclass AND c.relname ~ '^audit_records_y[0-9]{4}m[0-9]{2}$'
                      AND to_date(substr(c.relname, 16, 4) || substr(c.relname, 21, 2), 'YYYYMM')
                          < (this_month - make_interval(months => keep_months - 1))::date
                    ORDER BY c.relname
                LOOP
                    -- Where each tenant's chain now starts: its last record in the partition going away.
                    EXECUTE format(
                        'UPDATE audit_chain_heads h SET anchor_seq = l.seq, anchor_hash = l.hash
                         FROM (SELECT DISTINCT ON (tenant_id) tenant_id, seq, hash FROM %I
                               ORDER BY tenant_id, seq DESC) l
                         WHERE h.tenant_id = l.tenant_id AND l.seq > h.anchor_seq', part.relname);
                    EXECUTE format('DROP TABLE %I', part.relname);
                    done := done || ('dropped ' || part.relname);
                END LOOP;
            END IF;
            RETURN done;
        END
        $$
        """
    )
    out.append("REVOKE ALL ON FUNCTION tenantry_audit_partitions(integer, integer) FROM PUBLIC")
    out.append("SELECT tenantry_audit_partitions(2, 0)")
    return out


# 0010's downgrade.
DROP_STATEMENTS = (
    "DROP FUNCTION tenantry_audit_partitions(integer, integer)",
    "DROP FUNCTION tenantry_record_audit(uuid[], integer[], json[], boolean)",
    "DROP AGGREGATE tenantry_audit_chain(bytea, bytea)",
    "DROP FUNCTION tenantry_audit_link(bytea, bytea, bytea)",
    "DROP FUNCTION tenantry_audit_hash(audit_records)",
    f"DROP FUNCTION tenantry_audit_canonical({', '.join(kind for _, kind in _FIELDS)})",
    "DROP TABLE audit_chain_heads",
    "DROP TABLE audit_records",
)


# Migration 0019 and tier revision 3: the trail's rare records, indexed alone. A filter on refusals or on
# an outcome other than `ok` (what a security review asks for: "what was refused", "what was killed")
# matched so few records that it read the whole trail to fill a page (207 ms at 200,000 records). These
# partial indexes hold only those records, so an admitted call's insert does not touch them (the
# predicate is checked, nothing is written); the page query's parameters are planned as constants
# (custom plans), so the predicates are proven and the indexes used.
UNUSUAL_INDEXES = (
    "CREATE INDEX audit_records_refused ON audit_records (tenant_id, at, seq) WHERE decision = 'refused'",
    "CREATE INDEX audit_records_unusual ON audit_records (tenant_id, outcome, at, seq) WHERE outcome <> 'ok'",
)
