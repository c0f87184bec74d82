"""A lean open-loop load generator: raw HTTP/1.1 keep-alive over asyncio protocols, precomputed bytes.

Open loop: arrivals follow a Poisson process at the offered rate whatever the answers, and every
latency is measured from the arrival's *scheduled* instant, so a server that falls behind is charged for
the queue it causes (no coordinated omission). An arrival takes an idle keep-alive connection, opens a new
one up to `max_connections`, else waits in the generator's backlog (still on the clock).

The per-request cost is kept small on purpose (the generator shares 2 cores with the systems it
measures): no HTTP library, no task per request, no body parsing; a response is framed by its
Content-Length (uvicorn always sends one) and only the status code is read.

`run_http_step` drives a server; `run_call_step` drives any coroutine per arrival (the direct-Triton arm).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

__all__ = ["StepSamples", "http_request_bytes", "run_call_step", "run_http_step"]


def http_request_bytes(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


@dataclass(slots=True)
class StepSamples:
    """What one step at one offered rate observed."""

    offered_rate: float
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)  # successful answers only
    errors: int = 0  # non-2xx status or a transport failure
    error_kinds: dict[str, int] = field(default_factory=dict)
    # Latency of every answered error by kind (e.g. "http_503": how fast shed requests were refused).
    error_latencies_s: dict[str, list[float]] = field(default_factory=dict)
    unfinished: int = 0  # still unanswered when the step's drain time ran out
    elapsed_s: float = 0.0  # from the first arrival to the last answer (or the drain cut-off)
    max_connections_used: int = 0

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request in flight at a time."""

    def __init__(self, owner: _HttpDriver) -> None:
        self._owner = owner
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._scheduled = 0.0
        self._need = -1  # bytes of the whole response once the head is parsed; -1 while unknown
        self._status = 0
        self.busy = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, payload: bytes, scheduled: float) -> None:
        assert self._transport is not None
        self.busy = True
        self._scheduled = scheduled
        self._need = -1
        self._buffer.clear()
        self._transport.write(payload)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._need < 0:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(buffer[:head_end]).lower()
            self._status = int(head[9:12])
            at = head.find(b"content-length:")
            if at < 0:  # unframed answer: count it and drop the connection
                self._finish(ok=False, kind="no_content_length")
                self.close()
                return
            line_end = head.find(b"\r\n", at)
            length = int(head[at + 15 : line_end if line_end >= 0 else len(head)])
            self._need = head_end + 4 + length
        if len(buffer) >= self._need:
            status = self._status
            self._finish(ok=200 <= status < 300, kind=f"http_{status}")

    def _finish(self, *, ok: bool, kind: str) -> None:
        self.busy = False
        self._owner.completed(self, self._scheduled, ok, kind)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - counted by kind
        self.closed = True
        if self.busy:
            self.busy = False
            self._owner.completed(self, self._scheduled, False, "connection_lost")
        self._owner.lost(self)

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()


class _HttpDriver:
    def __init__(
        self, host: str, port: int, payloads: Sequence[bytes], samples: StepSamples, max_connections: int
    ) -> None:
        self._host, self._port = host, port
        self._payloads = payloads
        self._next = 0
        self.samples = samples
        self._max_connections = max_connections
        self.idle: list[_Connection] = []
        self.all: set[_Connection] = set()
        self._opening = 0
        self.backlog: deque[float] = deque()  # scheduled instants of arrivals with no connection yet
        self.outstanding = 0
        self.drained = asyncio.Event()

    async def open(self, count: int) -> None:
        await asyncio.gather(*(self._open_one() for _ in range(count)))

    async def _open_one(self) -> None:
        loop = asyncio.get_running_loop()
        self._opening += 1
        try:
            _, connection = await loop.create_connection(lambda: _Connection(self), self._host, self._port)
        except OSError as exc:
            self._opening -= 1
            self.samples.error(f"connect_{type(exc).__name__}")
            if self.backlog:  # the arrival this connection was for is lost, not waited for forever
                self.backlog.popleft()
                self._settle()
            return
        self._opening -= 1
        self.all.add(connection)
        self.samples.max_connections_used = max(self.samples.max_connections_used, len(self.all))
        self._dispatch(connection)

    def _payload(self) -> bytes:
        payload = self._payloads[self._next]
        self._next = (self._next + 1) % len(self._payloads)
        return payload

    def arrive(self, scheduled: float) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(self._payload(), scheduled)
            return
        self.backlog.append(scheduled)
        if len(self.all) + self._opening < self._max_connections:
            asyncio.get_running_loop().create_task(self._open_one())

    def _dispatch(self, connection: _Connection) -> None:
        if connection.closed:
            return
        if self.backlog:
            connection.send(self._payload(), self.backlog.popleft())
        else:
            self.idle.append(connection)

    def completed(self, connection: _Connection, scheduled: float, ok: bool, kind: str) -> None:
        latency = time.perf_counter() - scheduled
        if ok:
            self.samples.latencies_s.append(latency)
        else:
            self.samples.error(kind)
            self.samples.error_latencies_s.setdefault(kind, []).append(latency)
        self._settle()
        self._dispatch(connection)

    def _settle(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.drained.set()

    def lost(self, connection: _Connection) -> None:
        self.all.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)

    def close(self) -> None:
        for connection in list(self.all):
            connection.close()


def _arrivals(rate: float, duration_s: float, seed: int) -> list[float]:
    """Poisson arrival offsets (seconds from the start) for `duration_s` at `rate` per second."""
    rng = random.Random(seed)
    offsets, t = [], rng.expovariate(rate)
    while t < duration_s:
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


async def _schedule(offsets: list[float], arrive: Callable[[float], None]) -> float:
    """Calls `arrive(scheduled_instant)` for each offset once its instant has come; returns the start."""
    start = time.perf_counter() + 0.005
    index, total = 0, len(offsets)
    while index < total:
        now = time.perf_counter()
        while index < total and start + offsets[index] <= now:
            arrive(start + offsets[index])
            index += 1
        if index < total:
            await asyncio.sleep(max(0.0, start + offsets[index] - time.perf_counter()))
    return start


async def run_http_step(
    host: str,
    port: int,
    payloads: Sequence[bytes],
    *,
    rate: float,
    duration_s: float,
    seed: int = 0,
    max_connections: int = 256,
    warm_connections: int = 16,
    drain_s: float = 5.0,
) -> StepSamples:
    """Offer `rate` requests/s (Poisson) for `duration_s` to host:port, cycling through `payloads`."""
    samples = StepSamples(offered_rate=rate, duration_s=duration_s)
    driver = _HttpDriver(host, port, payloads, samples, max_connections)
    await driver.open(min(warm_connections, max_connections))
    try:
        start = await _schedule(_arrivals(rate, duration_s, seed), driver.arrive)
        if driver.outstanding:
            driver.drained.clear()
            try:
                await asyncio.wait_for(driver.drained.wait(), drain_s)
            except TimeoutError:
                samples.unfinished = driver.outstanding
        samples.elapsed_s = time.perf_counter() - start
    finally:
        driver.close()
    return samples


async def run_call_step(
    call: Callable[[int], Awaitable[bool]],
    *,
    rate: float,
    duration_s: float,
    seed: int = 0,
    max_outstanding: int = 256,
    drain_s: float = 5.0,
) -> StepSamples:
    """Open loop over `call(i)` (True = success); arrivals beyond `max_outstanding` wait in a backlog."""
    samples = StepSamples(offered_rate=rate, duration_s=duration_s)
    backlog: deque[float] = deque()
    state = {"next": 0, "running": 0, "outstanding": 0}
    drained = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        while True:
            index = state["next"]
            state["next"] += 1
            try:
                ok = await call(index)
            except Exception as exc:  # noqa: BLE001 - the generator counts any failure by its type
                samples.error(type(exc).__name__)
            else:
                if ok:
                    samples.latencies_s.append(time.perf_counter() - scheduled)
                else:
                    samples.error("failed")
            state["outstanding"] -= 1
            if not backlog:
                break
            scheduled = backlog.popleft()
        state["running"] -= 1
        if state["outstanding"] == 0:
            drained.set()

    def arrive(scheduled: float) -> None:
        state["outstanding"] += 1
        if state["running"] >= max_outstanding:
            backlog.append(scheduled)
            return
        state["running"] += 1
        task = loop.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    start = await _schedule(_arrivals(rate, duration_s, seed), arrive)
    if state["outstanding"]:
        drained.clear()
        try:
            await asyncio.wait_for(drained.wait(), drain_s)
        except TimeoutError:
            samples.unfinished = state["outstanding"]
            for task in tasks:
                task.cancel()
    samples.elapsed_s = time.perf_counter() - start
    samples.max_connections_used = max_outstanding
    return samples
