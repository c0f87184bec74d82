"""How many bids one worker works on at once, lowered while their latency shows a standing queue.

Why: the fixed in-flight cap (`max_inflight_bids`) protects latency when Triton is the bottleneck. When the
worker's own CPU is, every bid in flight shares the one event loop, so a bid's latency grows with the bids
admitted beside it, and a cap of 64 lets 64 share it (measured with the real model at 3x capacity: admitted
p99 299 ms against 12.8 unloaded, 503s 862 ms at p99). The limit must fall to what the CPU can turn
around, and the excess get a 503 costing a fraction of a bid.

The signal is CoDel's (Nichols and Jacobson, "Controlling Queue Delay", ACM Queue 2012), on bid latency
measured from the bid's estimated arrival (so the wait in the loop counts), relative to the no-load latency
of a bid of its size (`gateway.scoring.latency_floors`, from bids that started with at most `min_limit` in
flight): a burst makes some bids slow, a standing queue makes every bid slow. So per `interval_s` the
limiter takes the *fastest* bid's ratio to its no-load latency (after a quarter interval already, when
that ratio is over twice the tolerance: an overload's onset). The interval is 25 ms, not CoDel's 100 ms
(sized for network round trips; a bid takes a few ms), measured both ways with the real model on one
worker: at 3x capacity, admitted p99 13-18 ms (25 ms) against 17-22 ms (100 ms), unloaded 7-8.6; near
capacity (700-900 bids/s) 100 ms shed nothing where 25 ms shed a few bids of a step (a bench step of
753 bids/s once shed 10%, the next run 5% at 1,054 and none below). The first is what an overloaded
bidder needs; `bid_concurrency_interval_ms=100` trades it for throughput.

  * above `tolerance` (even the best bid queued), the queue is standing: the limit is multiplied by
    `max(0.25, tolerance / ratio)` (Gradient2's gradient, unsmoothed: one decision per interval; a floor
    of a half let an overload's onset run two intervals at twice the limit, measured as its first ~2%
    of admitted bids late);
  * otherwise, when the limit was in use (at least half of it in flight at some bid's start), it grows
    by one;
  * otherwise (app limited) it comes down to `headroom` times the most bids in flight over the last one
    to two `window_s`, but never under `burst`. Why: the limit only falls on latency, which arrives
    only as admitted bids complete; a limit left at a ceiling nobody used lets the first burst of an
    overload admit the whole ceiling at once, and those bids share the CPU and are all late (measured at
    3x capacity with a ceiling of 64: the first ~100 bids answered after 20-107 ms, the rest within 12).

A per-bid rule (the micro-batcher's `gateway.scoring.limiter`, where every Triton call is a sample worth
judging) shed 1.2% of the bids at 400 bids/s, half this worker's capacity: on a CPU-bound worker any two
bids in flight slow each other, so every burst read as congestion.

Pure: no asyncio, no I/O, the clock is injected; not thread-safe (one event loop owns it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.scoring.latency_floors import LatencyFloors


class BidConcurrencyLimit:
    """The current limit on bids in flight in one worker, from (latency, rows, in flight) per bid."""

    def __init__(
        self,
        *,
        min_limit: int = 4,
        max_limit: int = 64,
        tolerance: float = 2.0,
        interval_s: float = 0.025,
        headroom: float = 4.0,
        burst: int = 16,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit} and {max_limit}")
        if tolerance < 1.0:
            raise ValueError(f"tolerance must be >= 1.0, got {tolerance}")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if headroom < 2.0:
            # Below 2 the app-limited rule (fewer than half the limit in use) could never hold.
            raise ValueError(f"headroom must be >= 2, got {headroom}")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.tolerance = tolerance
        self.interval_s = interval_s
        self.headroom = headroom
        self.burst = min(max(burst, min_limit), max_limit)
        self._clock = clock
        now = clock()
        self._floors = LatencyFloors(window_s, now)
        self._estimate = float(max_limit)  # until latency or use says otherwise, the fixed cap
        self._interval_started = now
        self._best_ratio: float | None = None  # the fastest bid of this interval, against its no-load latency
        self._busiest = 0  # the most bids in flight at a bid's start, this interval
        # The same over the latency floors' windows, for the app-limited rule.
        self._peak = 0
        self._previous_peak = 0
        self.standing_queues = 0  # intervals whose fastest bid was still over tolerance (a counter)

    @property
    def limit(self) -> int:
        return int(self._estimate)

    def on_done(self, latency_s: float, rows: int, inflight: int) -> int:
        """A bid of `rows` candidates was decided `latency_s` after it arrived; `inflight` bids (itself
        included) were in flight when it started. Returns the new limit."""
        now = self._clock()
        elapsed = now - self._interval_started
        # A quarter interval in which even the fastest bid took over twice the tolerance is an overload's
        # onset, not a burst: judged at once (with a 100 ms interval, waiting for its end made the first
        # ~6% of the bids admitted at 3x capacity late).
        onset = (
            elapsed >= self.interval_s / 4
            and self._best_ratio is not None
            and self._best_ratio > 2 * self.tolerance
        )
        if elapsed >= self.interval_s or onset:
            self._decide()
            self._interval_started = now
            self._best_ratio = None
            self._busiest = 0
        rotation = self._floors.rotate(now)
        if rotation != "none":
            # The peaks age with the floors: after one window the peak is old, after two idle ones gone.
            self._previous_peak, self._peak = (self._peak if rotation == "aged" else 0), 0
        self._peak = max(self._peak, inflight)
        self._busiest = max(self._busiest, inflight)
        rows = max(rows, 1)
        if inflight <= self.min_limit:
            self._floors.record(latency_s, rows)
        no_load = self._floors.no_load_latency(rows)
        if no_load is not None:
            ratio = latency_s / no_load
            self._best_ratio = ratio if self._best_ratio is None else min(self._best_ratio, ratio)
        return self.limit

    def _decide(self) -> None:
        estimate = self._estimate
        if 2 * self._busiest < estimate:
            # App limited: the limit held nothing back, so latency says nothing about it; keep it within
            # a few times the demonstrated use (and the burst floor).
            used = max(self.burst, self.headroom * max(self._peak, self._previous_peak))
            estimate = min(estimate, used)
        elif self._best_ratio is not None and self._best_ratio > self.tolerance:
            self.standing_queues += 1
            estimate *= max(0.25, self.tolerance / self._best_ratio)
        else:
            estimate += 1.0
        self._estimate = min(self.max_limit, max(self.min_limit, estimate))
