"""A throwaway Redis Cluster on loopback: N masters, no replicas, for tests and benchmarks.

Each node is `redis-server --cluster-enabled yes` on two free ports (clients, cluster bus) in a
directory of its own under a temporary one, without persistence; `redis-cli --cluster create`
assigns the slots in equal ranges. `stop()` ends the processes and removes the directory.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tenantry.dev.process import DevServiceError, poll, run_command, wait_until_answering

__all__ = ["LocalCluster", "cluster_programs", "start_local_cluster"]

HOST = "127.0.0.1"


def cluster_programs() -> tuple[str, str] | None:
    """The paths of `redis-server` and `redis-cli`, or None when either is missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LocalCluster:
    ports: list[int]
    directory: Path
    cli: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A URL of the first node (a cluster client finds the others)."""
        return f"redis://{HOST}:{self.ports[0]}/0"

    def redis_cli(self, port: int, *args: str) -> str:
        """`redis-cli -p port args...`'s output (a failure raises DevServiceError)."""
        result = subprocess.run(
            [self.cli, "-h", HOST, "-p", str(port), *args], capture_output=True, text=True, timeout=10, check=False
        )
        if result.returncode != 0:
            raise DevServiceError(f"redis-cli {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_local_cluster(masters: int = 3, *, timeout: float = 30.0) -> LocalCluster:
    """Start `masters` nodes, join them into one cluster with every slot assigned, and wait until each
    node says the cluster is ok. Raises DevServiceError (and leaves nothing running) if it cannot."""
    programs = cluster_programs()
    if programs is None:
        raise DevServiceError("redis-server and redis-cli are needed for a Redis Cluster (Debian: redis-server)")
    server, cli = programs
    directory = Path(tempfile.mkdtemp(prefix="tenantry-redis-cluster-"))
    cluster = LocalCluster([], directory, cli)
    try:
        for i in range(masters):
            port, bus = _free_port(), _free_port()
            node_dir = directory / str(i)
            node_dir.mkdir()
            argv = [server, "--port", str(port), "--cluster-port", str(bus), "--bind", HOST]
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--dir", str(node_dir)]
            argv += ["--save", "", "--appendonly", "no", "--logfile", "redis.log"]
            cluster.processes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL))
            cluster.ports.append(port)
        for i, port in enumerate(cluster.ports):
            wait_until_answering(HOST, port, timeout, what="a Redis Cluster node", log=directory / str(i) / "redis.log")
        nodes = [f"{HOST}:{port}" for port in cluster.ports]
        run_command([cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"], timeout=timeout)
        deadline = time.monotonic() + timeout

        def ready() -> bool:
            return all("cluster_state:ok" in cluster.redis_cli(port, "CLUSTER", "INFO") for port in cluster.ports)

        if not poll(ready, deadline):
            raise DevServiceError(f"the Redis Cluster at {nodes} did not reach cluster_state:ok within {timeout:.0f} s")
    except BaseException:
        with contextlib.suppress(Exception):
            cluster.stop()
        raise
    return cluster
