"""The no-load latency of a call (or a bid) of a given size: the fastest unqueued one seen lately.

Latency grows with size (a fixed cost per call plus a cost per row), so the fastest unqueued sample is kept
per log2 bucket of rows, and for `rows` rows
  no_load(rows) = min_j( latency_j * max(1, rows / rows_j) )
is an upper bound under that cost model (fewer rows never cost more; more rows cost at most in
proportion), so the growth of a size alone is never read as congestion. Minima expire after one to two
`window_s`, so a lasting change of the model or the hardware becomes the new baseline.

Used by the micro-batcher's limit on Triton calls (`gateway.scoring.limiter`) and the bid admission's limit
on bids in flight (`gateway.api.bid_limit`). Pure: the caller passes the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

# What a window's end did to the samples: none (the window goes on), aged (the current window's samples
# became the previous window's), cleared (two or more idle windows: none are left).
Rotation = Literal["none", "aged", "cleared"]


@dataclass(slots=True)
class _Floor:
    """The fastest unqueued sample seen in one row-count bucket during one window: its latency and rows."""

    latency_s: float
    rows: int


class LatencyFloors:
    """Fastest unqueued latency per size bucket over the last one to two windows."""

    def __init__(self, window_s: float, now: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        # Two windows of minima per bucket: the baseline always covers between one and two windows.
        self._current: dict[int, _Floor] = {}
        self._previous: dict[int, _Floor] = {}
        self._window_started = now

    def no_load_latency(self, rows: int) -> float | None:
        """Upper bound of an unqueued sample's latency for `rows` rows, or None before any."""
        best = math.inf
        for floors in (self._current, self._previous):
            for floor in floors.values():
                best = min(best, floor.latency_s * max(1.0, rows / floor.rows))
        return None if best == math.inf else best

    def known(self, rows: int) -> bool:
        """Whether an unqueued sample of this size bucket is on record."""
        bucket = rows.bit_length()
        return bucket in self._current or bucket in self._previous

    def record(self, latency_s: float, rows: int) -> None:
        """An unqueued sample."""
        bucket = rows.bit_length()
        floor = self._current.get(bucket)
        if floor is None:
            self._current[bucket] = _Floor(latency_s, rows)
        elif latency_s < floor.latency_s:
            floor.latency_s = latency_s
            floor.rows = rows

    def rotate(self, now: float) -> Rotation:
        """Start a new window when the current one is over. Says what became of the old samples, so state
        kept beside the floors (a limiter's in-flight peaks) can age by the same rule."""
        elapsed = now - self._window_started
        if elapsed < self.window_s:
            return "none"
        # After two idle windows nothing of the old minima is left; after one, the current becomes old.
        rotation: Rotation = "aged" if elapsed < 2 * self.window_s else "cleared"
        self._previous = self._current if rotation == "aged" else {}
        self._current = {}
        self._window_started = now
        return rotation
