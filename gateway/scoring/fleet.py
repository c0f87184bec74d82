"""Spread Triton calls over every server of the fleet, follow the fleet as it changes, skip dead servers.

Why not one gRPC channel to a Service: kube-proxy balances connections, not calls, so a worker's one
long-lived HTTP/2 channel pins it to one Triton pod for life, and pods added by the autoscaler never get
its traffic. gRPC's own answer (round_robin over a dns:/// name) re-resolves only when a connection drops
(gRFC A9: servers are meant to cap connection age), so here the gateway keeps one channel per server
address itself and:

  * picks, per call, the healthy server with the fewest rows outstanding from this worker (ties in
    rotation). Rows, not calls: Triton's cost grows with rows, and least-outstanding steers away from a
    slow server by itself, since its calls stay outstanding longer (Envoy's least_request does the same);
  * re-resolves the name every `resolve_interval_s` (with jitter, so a fleet of gateways does not ask the
    DNS server in step): new addresses join at once, vanished ones get no new call and are closed once
    their calls finish. A failed or empty resolution keeps the addresses it had;
  * ejects a server on a connection failure (gRPC UNAVAILABLE: the request never ran there), sending that
    call once more to another server if one is healthy, so one dead pod among three costs retries, not
    failed bids, and never opens the circuit breaker above; and after `eject_after_silent` calls in a
    row that it left unanswered to the deadline (a hung server), unless it is the last healthy one;
  * probes ejected servers every `probe_interval_s` (is the model ready?) and readmits them when it is.

Scorer semantics are the single server's: ScoringTimeout when the deadline passes, ScoringUnavailable when
no server can answer (none healthy: fail at once, the caller falls back), never a third-party exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from gateway.core.ports import Scores
from gateway.errors import (
    DiscoveryError,
    ScoringNoAnswer,
    ScoringTimeout,
    ScoringUnavailable,
    ScoringUnreachable,
)
from gateway.scoring.resolver import resolve
from gateway.scoring.targets import DnsName, TritonTarget

log = logging.getLogger(__name__)


class ServerScorer(Protocol):
    """One Triton server: `gateway.scoring.triton.TritonScorer` on one address."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores: ...

    async def ready(self) -> bool: ...


Resolver = Callable[[DnsName, float], Awaitable[tuple[str, ...]]]


@dataclass(slots=True)
class FleetStats:
    """Monotonic counters and current sizes, exported by the metrics layer."""

    retries: int = 0  # calls sent again to another server after the first was unreachable
    ejections: int = 0
    readmissions: int = 0
    resolutions: int = 0
    resolution_failures: int = 0  # the fleet kept the addresses it had
    joined: int = 0  # addresses added by a resolution
    left: int = 0  # addresses a resolution no longer returned
    healthy: int = 0
    ejected: int = 0


@dataclass(slots=True, eq=False)
class Server:
    address: str
    scorer: ServerScorer
    outstanding_rows: int = 0
    healthy: bool = True
    silent_calls: int = 0  # consecutive calls it never answered
    removed: bool = False  # gone from the name: no new calls; closed once the last one returns


class TritonFleet:
    """`ports.Scorer` over every server behind a `TritonTarget`. `await start()` inside the event loop;
    `aclose()` closes every channel."""

    def __init__(
        self,
        target: TritonTarget,
        connect: Callable[[str], ServerScorer],
        *,
        resolve_interval_s: float = 10.0,
        probe_interval_s: float = 0.5,
        eject_after_silent: int = 3,
        resolve_timeout_s: float = 2.0,
        resolver: Resolver = resolve,
    ) -> None:
        if resolve_interval_s <= 0 or probe_interval_s <= 0 or eject_after_silent < 1:
            raise ValueError("intervals must be > 0 and eject_after_silent >= 1")
        self.target = target
        self._connect = connect
        self._resolve_interval_s = resolve_interval_s
        self._probe_interval_s = probe_interval_s
        self._eject_after_silent = eject_after_silent
        self._resolve_timeout_s = resolve_timeout_s
        self._resolver = resolver
        self._servers: dict[str, Server] = {}
        self._healthy: list[Server] = []  # rebuilt on every state change (rare); read on every call
        self._cursor = 0
        self._maintenance: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.stats = FleetStats()

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self._servers.values() if not s.removed]

    @property
    def healthy_addresses(self) -> list[str]:
        return [s.address for s in self._healthy]

    async def start(self) -> None:
        if self._maintenance is not None:
            return
        if self.target.name is None:
            await self._update(self.target.addresses)
        else:
            # A gateway starts, and bids on fallback, while the name does not resolve yet.
            await self.refresh()
        self._maintenance = asyncio.create_task(self._maintain(), name="triton-fleet")

    async def aclose(self) -> None:
        task, self._maintenance = self._maintenance, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        servers, self._servers = list(self._servers.values()), {}
        self._rebuild()
        await asyncio.gather(*(s.scorer.aclose() for s in servers), *self._closing)

    # ------------------------------------------------------------------------------------------ Scorer

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores:
        rows = int(cat_ids.shape[0])
        server = self._pick(None)
        if server is None:
            known = len(self._servers)
            raise ScoringUnavailable(
                f"no healthy Triton server for {self.target.text}: "
                + (f"all {known} ejected, probing them" if known else "no address resolved yet")
            )
        try:
            return await self._call(server, rows, cat_ids, dense, deadline)
        except ScoringUnreachable:
            # It never ran there: another server may still answer in time.
            other = self._pick(server)
            if other is None or deadline <= time.monotonic():
                raise
            self.stats.retries += 1
            return await self._call(other, rows, cat_ids, dense, deadline)

    async def ready(self) -> bool:
        """Whether some server reports the model ready (asks the healthy ones; False when none is)."""
        if not self._healthy:
            return False
        answers = await asyncio.gather(*(s.scorer.ready() for s in self._healthy))
        return any(answers)

    # -------------------------------------------------------------------------------- one server call

    def _pick(self, exclude: Server | None) -> Server | None:
        """The healthy server with the fewest outstanding rows, the scan starting one further each time."""
        healthy = self._healthy
        count = len(healthy)
        best: Server | None = None
        if count:
            start = self._cursor = (self._cursor + 1) % count
            for i in range(count):
                server = healthy[(start + i) % count]
                if server is exclude:
                    continue
                if best is None or server.outstanding_rows < best.outstanding_rows:
                    best = server
        return best

    async def _call(
        self,
        server: Server,
        rows: int,
        cat_ids: npt.NDArray[np.int64],
        dense: npt.NDArray[np.float32],
        deadline: float,
    ) -> Scores:
        if deadline <= time.monotonic():
            raise ScoringTimeout(f"deadline passed before calling {server.address}")
        server.outstanding_rows += rows
        try:
            scores = await server.scorer.score(cat_ids, dense, deadline)
        except ScoringUnreachable as exc:
            self._eject(server, str(exc))
            raise
        except ScoringNoAnswer:
            server.silent_calls += 1
            if server.silent_calls >= self._eject_after_silent and len(self._healthy) > 1:
                self._eject(server, f"{server.silent_calls} calls in a row unanswered")
            raise
        finally:
            server.outstanding_rows -= rows
            if server.removed and server.outstanding_rows == 0:
                self._close_later(server)
        server.silent_calls = 0
        return scores

    def _eject(self, server: Server, reason: str) -> None:
        if not server.healthy:
            return
        server.healthy = False
        self.stats.ejections += 1
        self._rebuild()
        log.warning("triton %s ejected (%s); %d healthy left", server.address, reason, len(self._healthy))

    # ------------------------------------------------------------------------------------ maintenance

    async def refresh(self) -> None:
        """Resolve the name now and follow its answer; a failure keeps the current servers."""
        name = self.target.name
        if name is None:
            return
        self.stats.resolutions += 1
        try:
            addresses = await self._resolver(name, self._resolve_timeout_s)
        except DiscoveryError as exc:
            self.stats.resolution_failures += 1
            log.warning("keeping %d Triton servers: %s", len(self.addresses), exc)
            return
        await self._update(addresses)

    async def _update(self, addresses: tuple[str, ...]) -> None:
        wanted = set(addresses)
        for address in addresses:
            server = self._servers.get(address)
            if server is not None and not server.removed:
                continue
            scorer = self._connect(address)
            await scorer.start()
            # A new address is trusted until a call fails (a headless Service lists only ready pods).
            self._servers[address] = Server(address, scorer)
            self.stats.joined += 1
            log.info("triton %s joined", address)
        for server in list(self._servers.values()):
            if server.address not in wanted and not server.removed:
                server.removed, server.healthy = True, False
                self.stats.left += 1
                log.info(
                    "triton %s left the name; closing after %d rows", server.address, server.outstanding_rows
                )
                if server.outstanding_rows == 0:
                    self._close_later(server)
        self._rebuild()

    def _close_later(self, server: Server) -> None:
        if self._servers.get(server.address) is server:
            del self._servers[server.address]
        task = asyncio.get_running_loop().create_task(server.scorer.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _maintain(self) -> None:
        next_resolve = self._next_resolve()
        while True:
            await asyncio.sleep(self._probe_interval_s)
            if self.target.name is not None and time.monotonic() >= next_resolve:
                await self.refresh()
                next_resolve = self._next_resolve()
            await self._probe_ejected()

    def _next_resolve(self) -> float:
        return time.monotonic() + self._resolve_interval_s * random.uniform(0.9, 1.0)

    async def _probe_ejected(self) -> None:
        ejected = [s for s in self._servers.values() if not s.healthy and not s.removed]
        if not ejected:
            return
        answers = await asyncio.gather(*(s.scorer.ready() for s in ejected))
        readmitted = [s for s, ok in zip(ejected, answers, strict=True) if ok and not s.removed]
        for server in readmitted:
            server.healthy, server.silent_calls = True, 0
            self.stats.readmissions += 1
            log.info("triton %s readmitted: model ready", server.address)
        if readmitted:
            self._rebuild()

    def _rebuild(self) -> None:
        self._healthy = [s for s in self._servers.values() if s.healthy]
        self.stats.healthy = len(self._healthy)
        self.stats.ejected = sum(1 for s in self._servers.values() if not s.healthy and not s.removed)
