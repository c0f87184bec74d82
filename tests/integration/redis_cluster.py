"""A real Redis Cluster from Debian's redis-server: three primaries and three replicas on free loopback ports
(client and cluster-bus ports both chosen free), built with `redis-cli --cluster create`, torn down after.

Tuned for tests: a 1 s node timeout (a killed primary's replica takes over in about two seconds) and no
diskless-sync delay (replicas are in sync a moment after creation, not five seconds later)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis

from gateway.local_triton import free_port
from tests.integration.redis_server import REDIS_SERVER, require_redis_server

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
NODE_TIMEOUT_MS = 1000


def require_cluster_tools() -> None:
    """redis-server 7+ (cluster-port, allow-cross-slot-keys) and redis-cli (Debian's redis-tools)."""
    require_redis_server()
    if not Path(REDIS_CLI).exists():
        pytest.fail(f"redis-cli not found at {REDIS_CLI}: `make system-deps` installs it (redis-tools)")
    version = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"v=(\d+)\.", version)
    if found is None or int(found[1]) < 7:
        pytest.fail(f"Redis Cluster tests need redis-server 7 or later, found: {version.strip()}")


def command(client: redis.Redis, *args: str) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped in redis-py


@dataclass
class ClusterNode:
    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--cluster-port", str(self.bus_port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{self.port}.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--cluster-replica-validity-factor", "0",  # a replica may always take over
            "--repl-diskless-sync-delay", "0",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", f"redis-{self.port}.log",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.process.wait(timeout=10)


def _distinct_free_ports(count: int, exclude: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """`count` free loopback ports, none repeated and none in `exclude` (a node needs two of its own)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports and port not in exclude:
            ports.append(port)
    return ports


class RedisCluster:
    """Six nodes, three primaries with one replica each. `url` is what BIDGW_REDIS_URL takes."""

    def __init__(self, primaries: int = 3, replicas: int = 1) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="bidgw-cluster-"))
        self.replicas = replicas
        ports = _distinct_free_ports(2 * primaries * (1 + replicas))
        self.nodes = [ClusterNode(ports[2 * k], ports[2 * k + 1], self._dir) for k in range(len(ports) // 2)]

    @property
    def url(self) -> str:
        # Two seeds: discovery works with either one gone.
        return "redis+cluster://" + ",".join(node.name for node in self.nodes[:2])

    def start(self, timeout_s: float = 30.0) -> None:
        require_cluster_tools()
        for node in self.nodes:
            node.start()
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            self._start_or_move(node, deadline)
        create = [REDIS_CLI, "--cluster", "create", *(n.name for n in self.nodes),
                  "--cluster-replicas", str(self.replicas), "--cluster-yes"]  # fmt: skip
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        self.wait_healthy(deadline - time.monotonic())

    def _start_or_move(self, node: ClusterNode, deadline: float, attempts: int = 3) -> None:
        """Waits for `node` to answer; when its process exited instead (a port taken between choosing it
        and binding it: seen once in CI as "did not start"), starts it again on new free ports."""
        for _ in range(attempts):
            # It answers, or its process is gone: either ends the wait.
            self._wait(
                lambda: not node.alive() or node.client().ping(), deadline, f"node {node.name} did not start"
            )
            if node.alive():
                return
            taken = {port for other in self.nodes for port in (other.port, other.bus_port)}
            node.port, node.bus_port = _distinct_free_ports(2, exclude=taken)
            node.start()
        raise RuntimeError(
            f"node {node.name} did not start in {attempts} attempts (see its log in {self._dir})"
        )

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Every live node says cluster_state:ok and every replica's link to its primary is up."""
        deadline = time.monotonic() + timeout_s

        def healthy() -> bool:
            for node in self.nodes:
                if not node.alive():
                    continue
                client = node.client()
                if "cluster_state:ok" not in command(client, "CLUSTER", "INFO"):
                    return False
                replication = client.info("replication")
                if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                    return False
            return True

        self._wait(healthy, deadline, "the cluster did not become healthy")

    @staticmethod
    def _wait(check: Callable[[], object], deadline: float, message: str) -> None:
        while True:
            try:
                if check():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(message)
            time.sleep(0.05)

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def slot_map(self) -> dict[int, str]:
        """slot -> primary "host:port", as a live node sees it now."""
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                reply = command(node.client(), "CLUSTER", "SLOTS")
            except (redis.RedisError, OSError):
                continue
            slots: dict[int, str] = {}
            for entry in reply:
                primary = f"{entry[2][0] or '127.0.0.1'}:{entry[2][1]}"
                slots.update(dict.fromkeys(range(int(entry[0]), int(entry[1]) + 1), primary))
            return slots
        raise RuntimeError("no live node answers CLUSTER SLOTS")

    def primaries(self) -> list[str]:
        return sorted(set(self.slot_map().values()))

    def primary_of_slot(self, slot: int) -> str:
        return self.slot_map()[slot]

    def role(self, name: str) -> str:
        return str(self.node(name).client().info("replication")["role"])

    def kill(self, name: str) -> None:
        """SIGKILL: a crashed primary (its unreplicated writes die with it)."""
        self.node(name).signal(signal.SIGKILL)

    def wait_for_new_primary(self, old: str, slot: int, timeout_s: float = 20.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                primary = self.primary_of_slot(slot)
                if primary != old:
                    return primary
            except (RuntimeError, KeyError):
                # No live node answered, or the one that did lists no primary for the slot: mid-failover a
                # node can leave the failed primary's range out of CLUSTER SLOTS (seen once in CI).
                pass
            time.sleep(0.02)
        raise RuntimeError(f"no replica took over slot {slot} from {old}")

    def command_counts(self, name: str) -> dict[str, int]:
        """INFO commandstats of one node: calls per command name (lower case)."""
        stats = self.node(name).client().info("commandstats")
        return {key.removeprefix("cmdstat_"): int(value["calls"]) for key, value in stats.items()}

    def reads_processed(self, name: str) -> int:
        """INFO stats total_reads_processed: socket reads the node served (about one per round trip)."""
        return int(self.node(name).client().info("stats")["total_reads_processed"])

    def flush(self) -> None:
        for name in self.primaries():
            self.node(name).client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.signal(signal.SIGTERM)

    def __enter__(self) -> RedisCluster:
        try:
            self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
