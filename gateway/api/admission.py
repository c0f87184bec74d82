"""Admission when the gateway's own CPU saturates: the event loop is the queue, so shed on its delay.

Why: the in-flight cap (`max_inflight_bids`) protects latency when Triton is the bottleneck. When this
process's CPU is, requests wait in their sockets and in the event loop's ready queue before the endpoint
ever sees them, and neither the cap nor the bid's deadline counts that wait (measured with the real model
at 3x capacity: admitted p99 136 ms against 4.6 ms unloaded, and 503s answered after 75 ms at p99). That
wait can be measured: a request whose bytes arrived now is served about as late as a timer due now fires,
so the loop's lag (a timer's lateness, sampled every `period_s`) is the queueing delay of new requests.

The rule is CoDel's (Nichols and Jacobson, "Controlling Queue Delay", ACM Queue 2012), on that delay: a
lag above `target_s` that lasts a whole `interval_s` is a standing queue, not a burst; from then until
the lag falls back under the target, new bids are shed (503 before their body is decoded: the cheapest
answer there is), so the queue drains and admitted bids keep their latency. Bursts shorter than the
interval are absorbed, as CoDel absorbs them. The defaults (25 ms for 500 ms) are looser than CoDel's
5 ms / 100 ms for packets: on the shared 2-core test machine a worker descheduled by its neighbours
(Triton, other workers) lags 10-20 ms for a few hundred ms without being overloaded itself, and 10 ms /
100 ms shed there; a quarter of a typical tmax for half a second is a standing queue on any pod.

The wait also counts against the bid's budget: its clock starts at `arrival_estimate()`, the lag it met
before the endpoint ran (or, when the deployment's proxy stamps it and `trust_request_start` is on, the
age from an `X-Request-Start: t=<unix seconds>` header, as nginx's `$msec` and Heroku's router write it).
A bid that already waited most of its tmax then gets a fast no-bid instead of a late answer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

REQUEST_START_HEADER: Final = b"x-request-start"
# A proxy's stamp older than this (or in the future by more than the skew) is a clock problem, not a wait.
_MAX_TRUSTED_AGE_S: Final = 10.0
_MAX_SKEW_S: Final = 0.05


@dataclass(slots=True)
class AdmissionStats:
    shed_by_lag: int = 0  # bids refused because the loop had a standing queue
    standing_queues: int = 0  # times the lag stayed above target for a whole interval
    lag_s: float = 0.0  # the latest lag sample (a gauge)


class LoopLagAdmission:
    """Samples the running loop's lag and decides, per new bid, whether the loop can take it.

    `start()` inside the loop; `stop()` at shutdown. `target_s=0` turns shedding off (the lag is still
    measured and counted against budgets)."""

    def __init__(self, *, target_s: float = 0.025, interval_s: float = 0.5, period_s: float = 0.005) -> None:
        if target_s < 0 or interval_s <= 0 or period_s <= 0:
            raise ValueError("target_s must be >= 0, interval_s and period_s > 0")
        self.target_s = target_s
        self.interval_s = interval_s
        self.period_s = period_s
        self.stats = AdmissionStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._above_since: float | None = None
        self._shedding = False

    @property
    def shedding(self) -> bool:
        return self._shedding

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def admit(self) -> bool:
        """False: shed this bid now (the loop has had a standing queue since at least one interval)."""
        if self._shedding:
            self.stats.shed_by_lag += 1
            return False
        return True

    def arrival_estimate(self, received_at: float, headers: list[tuple[bytes, bytes]] | None = None) -> float:
        """When the bid most likely arrived (time.monotonic()): `received_at` minus the wait before it."""
        waited = self.stats.lag_s
        if headers is not None:
            waited = max(waited, request_start_age(headers))
        return received_at - waited

    # -- the sampler: one timer per period, its lateness is the lag --

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.period_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.observe(max(0.0, now - self._due), now)
        self._schedule()

    def observe(self, lag_s: float, now: float) -> None:
        """One lag sample at loop time `now` (public for tests and for other samplers)."""
        self.stats.lag_s = lag_s
        if self.target_s <= 0 or lag_s < self.target_s:
            self._above_since = None
            self._shedding = False
            return
        if self._above_since is None:
            self._above_since = now
        elif not self._shedding and now - self._above_since >= self.interval_s:
            self._shedding = True
            self.stats.standing_queues += 1


def request_start_age(headers: list[tuple[bytes, bytes]]) -> float:
    """Seconds since a proxy's `X-Request-Start: t=<unix seconds>[.fraction]` (also plain seconds, ms or
    us since the epoch); 0 when absent, malformed or implausible."""
    for name, value in headers:
        if name == REQUEST_START_HEADER:
            return _age(value)
    return 0.0


def _age(value: bytes) -> float:
    text = value.strip().removeprefix(b"t=")
    try:
        stamp = float(text)
    except ValueError:
        return 0.0
    # Seconds, milliseconds or microseconds since the epoch, by magnitude (proxies differ).
    if stamp > 1e14:
        stamp /= 1e6
    elif stamp > 1e11:
        stamp /= 1e3
    age = time.time() - stamp
    if age < -_MAX_SKEW_S or age > _MAX_TRUSTED_AGE_S:
        return 0.0
    return max(age, 0.0)
