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
that ratio is over twice the tolerance: an overload's onset). The interval is 50 ms, not CoDel's 100 ms
(sized for network round trips; a bid takes a few ms). Measured with the real model on one worker, the
three alternating on one Triton, three rounds: at 60, 75 and 90% of the worker's capacity (4 s each,
about 2,000 bids a step), 25 ms shed 429 bids over the nine steps (up to 9% of a 90% step), 50 ms 63 and
100 ms 4; at 3x capacity the admitted p99 was 1.81-1.96x the unloaded one with 25 ms, 1.92-2.29x with
50 ms, 2.34-3.74x with 100 ms. Shedding a tenth of the bids of a busy hour costs a bidder more than two
milliseconds of p99 in an overload, so 50 ms; `bid_concurrency_interval_ms=25` takes the other side.

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

Also measured near capacity and at 3x, and not taken (each alternated with this rule on one Triton; the
sheds near capacity come from intervals that really are slow on a box whose CPU is shared, so each change
either shed as much or let more latency through at 3x):
  * no cut on an interval with fewer than 3 (or 5) bids judged;
  * growing back half-way to the limit before the last cut on each clean interval (TCP's fast recovery);
  * a short wait for a slot instead of an instant 503 (2 or 4 ms, newest first once waiters pile up, as
    Facebook's adaptive LIFO): as many sheds, and the sheds' own p99 rose to 11-24 ms;
  * holding the limit while the process got little CPU (a neighbour's stall, not our queue): the
    gateway's CPU share in the intervals that cut was 0.4-0.8 at two thirds of capacity and 0.5-0.9 at
    3x: no line to draw between them.

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
        interval_s: float = 0.05,
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
