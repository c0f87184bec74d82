"""How many upstream scoring calls may be in flight at once, learnt from their latency.

The micro-batcher sends a queued bid at once while fewer than `limit` calls are in flight, and otherwise
lets bids queue until a call returns, when they all leave in one call. So the limit decides the batch size:
high, bids go alone (lowest latency, most calls); low, they merge (fewest calls, each paid once on both
sides). The right limit keeps Triton just busy: calls beyond what it can work on only wait in its queue,
where they cannot merge, instead of in ours, where they can.

The signal is queueing seen as latency, as in TCP Vegas and Netflix's concurrency-limits: VegasLimit
(`queue_use = limit * (1 - RTTnoLoad / RTTactual)`, RTTnoLoad the minimum seen, re-probed now and then),
Gradient2Limit (`gradient = clamp(tolerance * rtt_baseline / rtt, 0.5, 1.0)`, rttTolerance 1.5, smoothing
0.2) and AIMDLimit (a drop multiplies the limit by a backoff ratio). Vegas and Gradient2 leave the limit
alone while fewer than half of it is in use ("app limited"); AIMD only does not grow it then.

What differs here: a call's rows vary with the load, and its latency grows with its rows (a fixed cost per
call plus a cost per row), so a bigger batch must not be read as congestion. The no-load latency is
therefore kept per row count: the fastest call per log2 bucket of rows, counting only calls that started
with no more than `min_limit` in flight (at the default floor of 1: alone, behind none of ours). For a
call of `rows` rows,
  no_load(rows) = min_j( latency_j * max(1, rows / rows_j) )
is an upper bound under that cost model (fewer rows never cost more; more rows cost at most in
proportion), so the growth of a batch alone never lowers the limit. It is a loose bound for a batch size
never seen unqueued, and under load the batch sizes are exactly those: so when a limit-bound call has no
minimum for its bucket, the limiter probes, as BBR's ProbeRTT does (and VegasLimit's periodic re-probe of
RTTnoLoad, but drained first so the new minimum holds no queue): the limit drops to `min_limit` until one
call that started alone returns, which measures the current batch size unqueued, then comes back. A probe
costs the bids queued meanwhile up to one call's wait, during which they merge; it happens at most once
per `probe_gap` calls. Minima expire after one to two `window_s`, so a lasting change of the model or the
hardware becomes the new baseline.

The rule, per call (the constants are scaled to the handful of calls one worker keeps in flight, where
Vegas's integer queue thresholds of 3 and 6 would never fire):
  * failed (refused, unreachable, or timed out with a budget that an unqueued call would have met with
    room to spare): limit *= backoff (AIMD's multiplicative decrease); a timeout on a budget shorter
    than that carries no signal (see `on_drop`);
  * fewer than half the limit in flight when the call started: no change (app limited);
  * latency / no_load > tolerance (a queue is building): limit *= 1 - smoothing * (1 - gradient), with
    gradient = max(0.5, tolerance * no_load / latency) (Gradient2's gradient and smoothing);
  * otherwise: limit += 1 / limit (one more call per limit's worth of calls, TCP's congestion avoidance).
The limit is a float within [min_limit, max_limit]; callers use its integer part. The tolerance defaults to
2.5 rather than Gradient2's 1.5 because the baseline is a minimum, not Gradient2's long-term average: a
typical unqueued call already sits above it. A call that finds k calls of its size ahead in one queue
takes about k + 1 times the no-load time, so 2.5 holds one to two calls waiting: Triton always has the
next call ready while the gateway turns the last one around, and anything more would only wait there.
(Against the local Triton under overload, 2.0 often sat at one call in flight and served fewer bids
than the fixed limit did; noisy runs on a shared box, but the direction held.)

Pure: no asyncio, no I/O, the clock is injected; not thread-safe (one event loop owns it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from gateway.scoring.latency_floors import LatencyFloors

# A latency below this is clock noise, not a measurement (monotonic clocks tick in tens of nanoseconds).
_MIN_LATENCY_S: Final = 1e-6


class AdaptiveConcurrencyLimit:
    """The current limit on in-flight upstream calls, from (latency, rows, in-flight) samples and failures."""

    def __init__(
        self,
        *,
        min_limit: int = 1,
        max_limit: int = 4,
        initial_limit: float | None = None,
        tolerance: float = 2.5,
        smoothing: float = 0.2,
        backoff: float = 0.75,
        window_s: float = 10.0,
        probe_gap: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit} and {max_limit}")
        if tolerance < 1.0:
            raise ValueError(f"tolerance must be >= 1.0, got {tolerance}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if not 0.5 <= backoff < 1.0:
            raise ValueError(f"backoff must be in [0.5, 1), got {backoff}")
        if probe_gap < 0:
            raise ValueError(f"probe_gap must be >= 0, got {probe_gap}")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.tolerance = tolerance
        self.smoothing = smoothing
        self.backoff = backoff
        self.window_s = window_s
        self.probe_gap = probe_gap
        self._clock = clock
        # Starts at the ceiling: until latency says otherwise, the batcher behaves as with a fixed limit.
        start = max_limit if initial_limit is None else initial_limit
        self._estimate = float(min(max_limit, max(min_limit, start)))
        self._floors = LatencyFloors(window_s, clock())
        self._probing = False
        self._since_probe = probe_gap  # the first unknown batch size may be probed at once

    @property
    def limit(self) -> int:
        return self.min_limit if self._probing else int(self._estimate)

    @property
    def estimate(self) -> float:
        """The limit before rounding down, and outside probes."""
        return self._estimate

    @property
    def probing(self) -> bool:
        return self._probing

    def no_load_latency(self, rows: int) -> float | None:
        """Upper bound of an unqueued call's latency for `rows` rows, or None before any unqueued call."""
        return self._floors.no_load_latency(rows)

    def on_success(self, latency_s: float, rows: int, inflight: int) -> int:
        """A call of `rows` rows returned after `latency_s`; `inflight` calls (itself included) were out
        when it started. Returns the new limit."""
        self._rotate()
        latency_s = max(latency_s, _MIN_LATENCY_S)
        rows = max(rows, 1)
        unqueued = inflight <= self.min_limit
        if unqueued:
            self._floors.record(latency_s, rows)
        if self._probing:
            if unqueued:
                self._probing = False
                self._since_probe = 0
            return self.limit
        self._since_probe += 1
        estimate = self._estimate
        if 2 * inflight < estimate:
            # App limited: the limit is not what holds the calls back, so their latency says nothing
            # about it (a slow call here is noise, or another worker's load); and growing a limit nobody
            # reaches would only let the next burst overshoot.
            return self.limit
        if not unqueued and not self._floors.known(rows) and self._since_probe >= self.probe_gap:
            self._probing = True
            return self.limit
        no_load = self.no_load_latency(rows)
        if no_load is None:
            return self.limit
        ratio = latency_s / no_load
        if ratio > self.tolerance:
            gradient = max(0.5, self.tolerance / ratio)
            estimate *= 1.0 - self.smoothing * (1.0 - gradient)
        else:
            estimate += 1.0 / estimate
        self._estimate = min(self.max_limit, max(self.min_limit, estimate))
        return self.limit

    def on_drop(self, *, budget_s: float | None = None, rows: int = 1) -> int:
        """A call of `rows` rows failed: refused or unreachable, or (`budget_s`) it ran out of the time its
        deadline gave it. Returns the new limit.

        A timeout is a latency known only to exceed `budget_s`. It is a drop when an unqueued call of its
        size would have finished well within that (budget > tolerance * no_load: only a queue explains
        it). Otherwise the deadline was too short for any answer, which says nothing about queueing: under
        overload the bids merged into a call carry the oldest one's deadline, and cutting the limit for
        them merges more, older bids into the next call, which then times out too."""
        self._rotate()
        if budget_s is not None:
            no_load = self.no_load_latency(max(rows, 1))
            if no_load is None or budget_s <= self.tolerance * no_load:
                return self.limit
        self._estimate = max(self.min_limit, self._estimate * self.backoff)
        return self.limit

    def _rotate(self) -> None:
        self._floors.rotate(self._clock())
