"""Redis as shards: one standalone server, or the primaries of a Redis Cluster, each a plain client.

`BIDGW_REDIS_URL` picks the mode by scheme:
  redis://host:port/db, rediss://..., unix://...      one server (every key on one shard)
  redis+cluster://[user:password@]host:port[,host:port...]   a Redis Cluster (rediss+cluster:// for TLS),
      e.g. Memorystore for Redis Cluster's discovery endpoint; the listed nodes are only where discovery
      starts, the slot map comes from CLUSTER SLOTS.

Why not redis-py's RedisCluster: a bid must make at most one round trip per shard, all shards at once, and
never wait past its deadline. RedisCluster retries failed commands after re-reading the topology and
sleeping (0.25 s per attempt), sends every pipeline through per-command routing and policy resolution, and
cannot say which node a failure came from. Here callers group their commands by slot and by shard
(`slot`, `shard_for_slot`), a shard's commands go out as one pipeline on that node's own pooled connection
(`execute`, `execute_many`), and a failure stays with its shard: the caller uses its store-failure path
for what that shard held, and the topology is re-read in the background (`_suspect`), at most every
`refresh_interval_s`, until CLUSTER SLOTS names the promoted replica. A bid never waits for that.

Scripts are sent by SHA (EVALSHA); a node that does not know one (restarted, or a replica just promoted:
script caches are not replicated) answers NOSCRIPT, and the script is loaded and those commands re-run on
the same call, once.

Every failure leaves this module as StoreError; per-command Redis errors (MOVED, a script's error) come
back in the results list for the caller to judge.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from gateway.errors import StoreError

__all__ = [
    "CLUSTER_SCHEMES",
    "SHARD_LATENCY_BUCKETS_S",
    "Command",
    "RedisShards",
    "RedisTarget",
    "Script",
    "Shard",
    "ShardStats",
    "parse_redis_url",
    "redis_call",
    "run_on_shards",
]

log = logging.getLogger(__name__)

SLOTS: Final = 16_384
CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
SHARD_LATENCY_BUCKETS_S: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
# Errors that mean "this slot is not (or no longer) served here": the slot map is stale.
_TOPOLOGY_ERRORS: Final = (AskError, ClusterDownError, TryAgainError, ReadOnlyError)

Command = tuple[Any, ...]
_T = TypeVar("_T")


async def redis_call(awaitable: Awaitable[_T], deadline: float, what: str) -> _T:
    """Await one Redis exchange until `deadline` (time.monotonic); every failure becomes StoreError."""
    timeout = deadline - time.monotonic()
    if timeout <= 0:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()  # never started: nothing was sent
        raise StoreError(f"redis {what}: no time left in the request's budget")
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError as exc:
        raise StoreError(f"redis {what}: no answer within {timeout * 1000:.1f} ms") from exc
    except (RedisError, OSError) as exc:
        raise StoreError(f"redis {what} failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script sent by SHA1; `RedisShards.register` makes NOSCRIPT recoverable."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode(), usedforsecurity=False).hexdigest())

    def command(self, keys: Sequence[str], args: Sequence[Any] = ()) -> Command:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a BIDGW_REDIS_URL names: one server (`url` as redis-py reads it) or a cluster's seed nodes."""

    cluster: bool
    url: str
    seeds: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_redis_url(url: str) -> RedisTarget:
    """Raises ValueError naming what is wrong; the settings turn it into a start-up error."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss", "unix"):
        return RedisTarget(cluster=False, url=url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(
            f"redis_url {url!r}: the scheme must be redis://, rediss://, unix:// (one server) or "
            "redis+cluster://, rediss+cluster:// (a Redis Cluster)"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"redis_url {url!r}: a Redis Cluster has only database 0")
    seeds = tuple(_host_port(url, item) for item in hosts.split(",") if item.strip())
    if not seeds:
        raise ValueError(f"redis_url {url!r}: name at least one cluster node as host:port")
    return RedisTarget(
        cluster=True,
        url=url,
        seeds=seeds,
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=parts.scheme == "rediss+cluster",
    )


def _host_port(url: str, item: str) -> tuple[str, int]:
    host, _, port = item.strip().rpartition(":")
    host = host.strip("[]")  # [::1]:7000
    if not host or not port.isdigit() or not 0 < int(port) < 65_536:
        raise ValueError(f"redis_url {url!r}: {item.strip()!r} is not host:port")
    return host, int(port)


class ShardStats:
    """Round trips to one shard since start: plain counts, exported per shard by the metrics layer."""

    __slots__ = ("errors", "latency_counts", "latency_sum", "round_trips")

    def __init__(self) -> None:
        self.round_trips = 0
        self.errors = 0  # round trips that failed or timed out (the caller used its failure path)
        self.latency_counts = [0] * (len(SHARD_LATENCY_BUCKETS_S) + 1)  # non-cumulative, last = +Inf
        self.latency_sum = 0.0

    def observe(self, seconds: float) -> None:
        self.round_trips += 1
        self.latency_counts[bisect.bisect_left(SHARD_LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum += seconds


class Shard:
    """One Redis server (a cluster primary, or the standalone server) and its connection pool."""

    __slots__ = ("client", "name", "replicas", "scripts_loaded", "stats")

    def __init__(self, name: str, client: Redis) -> None:
        self.name = name
        self.client = client
        self.stats = ShardStats()
        self.replicas: int | None = None  # live replicas at the last slot map read; None: not a cluster
        self.scripts_loaded = False

    def __repr__(self) -> str:
        return f"Shard({self.name})"


class RedisShards:
    """The shards of one Redis deployment; build with `from_url` (no I/O) or `standalone`."""

    def __init__(
        self,
        *,
        cluster: bool,
        standalone: Shard | None = None,
        target: RedisTarget | None = None,
        pool_options: dict[str, Any] | None = None,
        refresh_interval_s: float = 0.1,
        discovery_timeout_s: float = 0.5,
        max_map_age_s: float = 5.0,
    ) -> None:
        if cluster == (standalone is not None):
            raise ValueError("a cluster has no standalone shard, and a standalone deployment needs one")
        self.cluster = cluster
        self._standalone = standalone
        self._target = target
        self._pool_options = pool_options or {}
        self._refresh_interval_s = refresh_interval_s
        self._discovery_timeout_s = discovery_timeout_s
        self._max_map_age_s = max_map_age_s  # re-read now and then even when all is well: new replicas
        self._nodes: dict[str, Shard] = {}  # every node met, by "host:port" (clients kept for reuse)
        self._slots: list[Shard] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._deferred: asyncio.TimerHandle | None = None
        self._last_refresh = -float("inf")
        self._scripts: dict[str, str] = {}
        self.topology_refreshes = 0  # successful slot map reads (tests and metrics)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout_s: float,
        connect_timeout_s: float = 0.5,
        max_connections: int = 64,
        refresh_interval_s: float = 0.1,
    ) -> RedisShards:
        """Shards for a BIDGW_REDIS_URL (ValueError for a bad one). Connections open on first use."""
        target = parse_redis_url(url)
        options: dict[str, Any] = {
            "max_connections": max_connections,
            "timeout": None,  # waiting for a pooled connection is bounded by each call's deadline instead
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": connect_timeout_s,
            "retry": Retry(NoBackoff(), 0),  # a retry would spend budget the bid no longer has
        }
        if not target.cluster:
            client = Redis(connection_pool=BlockingConnectionPool.from_url(url, **options))
            return cls(cluster=False, standalone=Shard(_standalone_name(url), client))
        if target.username is not None:
            options["username"] = target.username
        if target.password is not None:
            options["password"] = target.password
        if target.tls:
            options["connection_class"] = SSLConnection
        return cls(
            cluster=True,
            target=target,
            pool_options=options,
            refresh_interval_s=refresh_interval_s,
            discovery_timeout_s=max(connect_timeout_s, socket_timeout_s),
        )

    @classmethod
    def standalone(cls, client: Redis, name: str = "standalone") -> RedisShards:
        """One server behind an existing client (tests, tools)."""
        return cls(cluster=False, standalone=Shard(name, client))

    # --------------------------------------------------------------------------------------- routing

    @staticmethod
    def slot(key: str) -> int:
        return key_slot(key.encode())

    @property
    def known(self) -> bool:
        """Whether keys can be routed now (always, standalone; once the slot map was read, a cluster)."""
        return not self.cluster or self._slots is not None

    def shard_for_slot(self, slot: int) -> Shard:
        """The shard serving `slot`; only once `known` (call `discover` first)."""
        if self._standalone is not None:
            return self._standalone
        assert self._slots is not None, "discover() the cluster first"
        return self._slots[slot]

    def shard_for_key(self, key: str) -> Shard:
        return self._standalone if self._standalone is not None else self.shard_for_slot(self.slot(key))

    def shards(self) -> list[Shard]:
        """The primaries serving slots now (the one server, standalone)."""
        if self._standalone is not None:
            return [self._standalone]
        return list(dict.fromkeys(self._slots)) if self._slots is not None else []

    def all_nodes(self) -> list[Shard]:
        """Every node ever met (for metrics: a shard that failed over keeps its counts)."""
        return [self._standalone] if self._standalone is not None else list(self._nodes.values())

    async def discover(self, deadline: float) -> None:
        """Read the slot map if none is known yet (once, shared by concurrent callers), within `deadline`.
        Raises StoreError when no node answered in time."""
        if self.known:
            if self.cluster and time.monotonic() - self._last_refresh > self._max_map_age_s:
                self._start_refresh(force=True)  # in the background: this caller goes on with the old map
            return
        task = self._start_refresh(force=True)
        remaining = deadline - time.monotonic()
        if remaining > 0:
            # shield: a bid running out of time must not cancel the discovery other bids are waiting on
            await asyncio.wait([asyncio.shield(task)], timeout=remaining)
        if not self.known:
            raise StoreError("redis cluster: no node answered CLUSTER SLOTS yet")

    async def refresh(self, deadline: float) -> bool:
        """Re-read the slot map now (or join the read under way), within `deadline`; whether one is known.
        For callers that can wait out a failover (win notices); bids never call this."""
        if not self.cluster:
            return True
        task = self._start_refresh(force=True)
        remaining = deadline - time.monotonic()
        if remaining > 0:
            await asyncio.wait([asyncio.shield(task)], timeout=remaining)
        return self.known

    def register(self, script: Script) -> Script:
        self._scripts[script.sha] = script.text
        return script

    async def warm_up(self, attempts: int = 10, pause_s: float = 1.0) -> bool:
        """Open a connection to every primary and load the scripts there, before bids need them; whether
        that happened. Run in the background at start (a gateway still starts while Redis is down).

        Why: otherwise the first bids of a new worker pay the TCP connect, the NOSCRIPT reply and SCRIPT
        LOAD inside a bid's 10 ms Redis budget; on a busy host the budget hold then fails and a catalog bid
        (billable only with its record) is answered no-bid (measured on a 2-core host: the first bid of a
        fresh gateway, 1 run in 5-8 of test_catalog_bidding's exchange loop). Bounded: `attempts` tries,
        `pause_s` apart."""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(pause_s)
            with contextlib.suppress(StoreError):
                # A cluster's slot map names its primaries (standalone: known already, no I/O).
                await self.discover(time.monotonic() + self._discovery_timeout_s)
            primaries = self.shards()
            await self._load_scripts(primaries)
            if primaries and all(shard.scripts_loaded for shard in primaries):
                return True
        return False

    # ------------------------------------------------------------------------------------- execution

    async def execute(
        self, shard: Shard, commands: Sequence[Command], deadline: float, what: str
    ) -> list[Any]:
        """One round trip: `commands` pipelined on one of `shard`'s connections, in order. Returns each
        command's reply or its ResponseError; raises StoreError when the exchange fails or runs late."""
        started = time.perf_counter()
        try:
            results = await redis_call(self._send(shard, commands), deadline, f"{what} on {shard.name}")
        except StoreError:
            shard.stats.errors += 1
            self._suspect()
            raise
        shard.stats.observe(time.perf_counter() - started)
        if self.cluster and any(_stale_map(r) for r in results):
            self._suspect()
        return results

    async def execute_many(
        self, groups: dict[Shard, list[Command]], deadline: float, what: str
    ) -> list[tuple[Shard, list[Any] | StoreError]]:
        """`execute` on every shard in `groups` at once; each shard's results or its StoreError."""
        if len(groups) == 1:
            [(shard, commands)] = groups.items()
            return [(shard, await self._settle(shard, commands, deadline, what))]
        settled = await asyncio.gather(
            *(self._settle(shard, commands, deadline, what) for shard, commands in groups.items())
        )
        return list(zip(groups, settled, strict=True))

    async def _settle(
        self, shard: Shard, commands: Sequence[Command], deadline: float, what: str
    ) -> list[Any] | StoreError:
        try:
            return await self.execute(shard, commands, deadline, what)
        except StoreError as exc:
            return exc

    async def _send(self, shard: Shard, commands: Sequence[Command]) -> list[Any]:
        results = await _exchange(shard.client, commands)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # A node that never saw the script (restarted, promoted): load it, re-run those commands.
            for sha in dict.fromkeys(commands[i][1] for i in missing):
                [loaded] = await _exchange(shard.client, [("SCRIPT", "LOAD", self._scripts[sha])])
                if isinstance(loaded, ResponseError):
                    raise loaded
            rerun = await _exchange(shard.client, [commands[i] for i in missing])
            for i, result in zip(missing, rerun, strict=True):
                results[i] = result
        return results

    async def aclose(self) -> None:
        if self._deferred is not None:
            self._deferred.cancel()
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        for shard in self.all_nodes():
            await shard.client.aclose()

    # -------------------------------------------------------------------------------------- topology

    def _suspect(self) -> None:
        """A shard failed or redirected: re-read the slot map soon (in the background, rate-limited)."""
        if self.cluster:
            self._start_refresh(force=False)

    def _start_refresh(self, *, force: bool) -> asyncio.Task[None]:
        running = self._refresh
        if running is not None and not running.done():
            return running
        wait = self._last_refresh + self._refresh_interval_s - time.monotonic()
        if not force and wait > 0 and running is not None:
            # Read recently: read again once the interval is over, failure or not (a failure seen now
            # must not wait for the next one to be noticed).
            if self._deferred is None:
                self._deferred = asyncio.get_running_loop().call_later(wait, self._refresh_deferred)
            return running
        self._last_refresh = time.monotonic()
        self._refresh = asyncio.get_running_loop().create_task(self._read_slot_map())
        return self._refresh

    def _refresh_deferred(self) -> None:
        self._deferred = None
        self._start_refresh(force=True)

    async def _read_slot_map(self) -> None:
        assert self._target is not None
        # Known primaries first, then the configured seeds (the discovery endpoint).
        candidates = [*(s.name for s in self.shards()), *(f"{h}:{p}" for h, p in self._target.seeds)]
        for name in dict.fromkeys(candidates):
            node = self._node(name)
            try:
                async with asyncio.timeout(self._discovery_timeout_s):
                    [reply] = await _exchange(node.client, [("CLUSTER", "SLOTS")])
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("CLUSTER SLOTS from %s failed: %s", name, exc)
                continue
            try:
                slots = self._slot_map(reply, name)
            except (TypeError, ValueError, IndexError) as exc:
                log.warning("CLUSTER SLOTS from %s did not parse: %s", name, exc)
                continue
            if slots is not None:
                await self._load_scripts(dict.fromkeys(slots))
                changed = self._slots is None or any(
                    a is not b for a, b in zip(self._slots, slots, strict=True)
                )
                self._slots = slots
                self.topology_refreshes += 1
                if changed:
                    log.info("redis cluster slot map: %s", ", ".join(s.name for s in self.shards()))
                return
        log.warning("redis cluster: no node answered CLUSTER SLOTS; keeping the previous slot map")

    async def _load_scripts(self, primaries: Iterable[Shard]) -> None:
        """SCRIPT LOAD every registered script on primaries that may lack them (new, or just promoted: script
        caches are not replicated), so no bid pays the NOSCRIPT round trips. Best effort: NOSCRIPT still
        recovers on the bid's own call."""
        for shard in primaries:
            if shard.scripts_loaded or not self._scripts:
                continue
            try:
                async with asyncio.timeout(self._discovery_timeout_s):
                    loaded = await _exchange(
                        shard.client, [("SCRIPT", "LOAD", t) for t in self._scripts.values()]
                    )
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("SCRIPT LOAD on %s failed: %s", shard.name, exc)
                continue
            shard.scripts_loaded = not any(isinstance(r, ResponseError) for r in loaded)

    def _slot_map(self, reply: Any, asked: str) -> list[Shard] | None:
        """CLUSTER SLOTS (RESP2: [start, end, [host, port, id, ...], replicas...]) as slot -> primary;
        None while some slot is not served (a cluster still forming or failing over)."""
        slots: list[Shard | None] = [None] * SLOTS
        previous = set(self._slots or ())
        for entry in reply:
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]
            host = _text(primary[0]) or asked.rpartition(":")[0]  # "" means: the node we asked
            node = self._node(f"{host}:{int(primary[1])}")
            node.replicas = len(entry) - 3  # Redis lists a primary's replicas after it, failed ones left out
            if node not in previous:
                node.scripts_loaded = False  # a primary now that may have been a replica: load them again
            slots[start : end + 1] = [node] * (end - start + 1)
        if any(s is None for s in slots):
            return None
        return [s for s in slots if s is not None]

    def _node(self, name: str) -> Shard:
        node = self._nodes.get(name)
        if node is None:
            host, _, port = name.rpartition(":")
            pool = BlockingConnectionPool(host=host, port=int(port), **self._pool_options)
            node = self._nodes[name] = Shard(name, Redis(connection_pool=pool))
        return node


async def _exchange(client: Redis, commands: Sequence[Command]) -> list[Any]:
    """One round trip on one pooled connection: the commands packed by hiredis (C; redis-py's asyncio
    connection packs in Python, ~370 us for a bid's ~200 key names here against 40 us), written at once, and
    the replies read with redis-py's parser, raw (no response callbacks, no retry wrapper; the caller bounds
    the whole exchange by its deadline, socket_timeout each read). A command's error reply comes back as its
    ResponseError; any other failure raises, and redis-py has then disconnected the connection (it
    reconnects on its next use), so no reply is ever read by the wrong caller."""
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # untyped in redis-py
    try:
        packed = b"".join([hiredis.pack_command(command) for command in commands])
        await connection.send_packed_command(packed, check_health=False)
        results: list[Any] = []
        for _ in commands:
            try:
                results.append(await connection.read_response())
            except ResponseError as exc:
                results.append(exc)
        return results
    finally:
        await pool.release(connection)


def _stale_map(result: Any) -> bool:
    """A reply saying our slot map is stale: MOVED (an AskError) and friends, or a script that met a key
    whose slot this node no longer serves (Redis says "non local key")."""
    if isinstance(result, _TOPOLOGY_ERRORS):
        return True
    return isinstance(result, ResponseError) and "non local key" in str(result)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _standalone_name(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


def run_on_shards(url: str, job: Callable[[RedisShards], Awaitable[_T]], *, socket_timeout_s: float) -> _T:
    """A one-shot command's Redis session (seed-redis, migrate-redis, seed-catalog): the shards of `url`
    opened, `job` run on them, and closed whatever happened. Raises what the URL (ValueError) or the job
    (StoreError, ...) raises."""

    async def run() -> _T:
        shards = RedisShards.from_url(url, socket_timeout_s=socket_timeout_s, connect_timeout_s=5.0)
        try:
            return await job(shards)
        finally:
            await shards.aclose()

    return asyncio.run(run())
