"""PgBouncer (the distribution's, 1.18) in transaction pooling mode in front of a database, on a free
loopback port in a temporary directory, for the tests of this package and `bench/bench_pgbouncer.py`."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from tenantry.settings import Settings
from tests.conftest import free_port

# Where Debian's package puts it (scripts/setup.sh installs it with the test extra).
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
# PgBouncer refuses to run as root; as root, it is started as this user instead.
UNPRIVILEGED = "nobody"


class PgBouncerMissing(RuntimeError):
    """The program is not on this machine."""


@dataclass(frozen=True)
class PgBouncer:
    port: int
    passwords: dict[str, str]  # role -> the password PgBouncer asks of it (its userlist)
    log: Path
    pid: int

    def url(self, direct_url: str, role: str) -> str:
        """`direct_url` (a SQLAlchemy URL) as `role` through this PgBouncer."""
        parts = make_url(direct_url).set(host="127.0.0.1", port=self.port, username=role)
        return parts.set(password=self.passwords[role]).render_as_string(hide_password=False)


def _ready(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def _config(home: Path, target: URL, port: int, pool_size: int) -> Path:
    config = home / "pgbouncer.ini"
    config.write_text(
        f"""[databases]
{target.database} = host={target.host or "127.0.0.1"} port={target.port or 5432} dbname={target.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {home / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
logfile = {home / "pgbouncer.log"}
"""
    )
    return config


def _start(home: Path, target: URL, pool_size: int) -> tuple[subprocess.Popen[str], int]:
    """PgBouncer listening on a free port; a port taken between the probe and the bind is tried again."""
    waiting = threading.Event()
    for _attempt in range(3):
        port = free_port()
        config = _config(home, target, port, pool_size)
        command = [PGBOUNCER, "-q"]
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED)
            for path in (home, *home.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
            command += ["-u", UNPRIVILEGED]
        process = subprocess.Popen([*command, str(config)], stderr=subprocess.PIPE, text=True)
        for _ in range(500):  # bounded: at most 5 s
            if process.poll() is not None:
                break
            if _ready(port):
                return process, port
            waiting.wait(0.01)
        _stop(process)
    log = home / "pgbouncer.log"
    raise RuntimeError(f"pgbouncer did not start: {log.read_text()[-2000:] if log.exists() else 'no log'}")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr is not None:
        process.stderr.close()


@contextmanager
def run_pgbouncer(direct_url: str, roles: list[str], *, pool_size: int = 4) -> Iterator[PgBouncer]:
    """PgBouncer 1.18 (the distribution's) in transaction pooling mode in front of the database of
    `direct_url`, the `roles` logging in with passwords of its userlist (scram-sha-256); every role gets
    `pool_size` server connections. Stopped and its directory removed on exit."""
    if not os.access(PGBOUNCER, os.X_OK):
        raise PgBouncerMissing(
            "pgbouncer is not installed (Debian package pgbouncer; `scripts/setup.sh --test` installs it)"
        )
    passwords = {role: secrets.token_hex(12) for role in roles}
    with tempfile.TemporaryDirectory(prefix="tenantry-pgbouncer-") as tmp:
        home = Path(tmp)
        (home / "userlist.txt").write_text("".join(f'"{role}" "{pw}"\n' for role, pw in passwords.items()))
        process, port = _start(home, make_url(direct_url), pool_size)
        try:
            yield PgBouncer(port, passwords, home / "pgbouncer.log", process.pid)
        finally:
            _stop(process)


def through(settings: Settings, bouncer: PgBouncer) -> Settings:
    """`settings` with both roles' pools through `bouncer`, LISTEN and migrations straight to PostgreSQL."""
    direct = settings.database_url
    owner = make_url(direct).username or "postgres"
    return settings.model_copy(
        update={
            "database_url": bouncer.url(direct, owner),
            "database_password": bouncer.passwords[owner],
            "db_app_password": bouncer.passwords[settings.db_app_role],
            "db_transaction_pooler": True,
            # Direct: PostgreSQL itself trusts loopback here, so no password is needed on this URL.
            "database_direct_url": direct,
        }
    )
