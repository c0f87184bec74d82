"""BidConcurrencyLimit on made-up samples: a fake clock, latencies chosen by the test."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.bid_limit import BidConcurrencyLimit

MS = 0.001
NO_LOAD_S = 2 * MS  # a 50-candidate bid alone


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: FakeClock, **options: Any) -> BidConcurrencyLimit:
    settings: dict[str, Any] = {"min_limit": 4, "max_limit": 64, "burst": 16, "interval_s": 0.025}
    return BidConcurrencyLimit(clock=clock, **(settings | options))


def interval(lim: BidConcurrencyLimit, clock: FakeClock, samples: list[tuple[float, int]]) -> int:
    """One 25 ms interval's bids, (latency, in flight at start) each, 50 candidates; returns the limit
    once the next interval's first bid (like this one's last) has closed it."""
    for latency, inflight in samples:
        lim.on_done(latency, 50, inflight)
    clock.now += 0.026
    latency, inflight = samples[-1]
    return lim.on_done(latency, 50, inflight)


def baseline(lim: BidConcurrencyLimit, clock: FakeClock) -> None:
    """A bid alone, in an interval of its own (closed by the next call)."""
    lim.on_done(NO_LOAD_S, 50, 1)
    clock.now += 0.026


def test_starts_at_the_ceiling() -> None:
    assert limiter(FakeClock()).limit == 64


def test_low_use_brings_the_limit_to_a_few_times_the_use_but_not_under_the_burst_floor() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    assert interval(lim, clock, [(NO_LOAD_S, 1), (NO_LOAD_S, 2)]) == 16  # 4 x 2 is under the burst floor
    lim = limiter(clock, burst=4)
    assert interval(lim, clock, [(NO_LOAD_S, 1), (NO_LOAD_S, 3)]) == 12  # 4 x the 3 in flight


def test_a_burst_with_some_fast_bids_is_not_a_standing_queue() -> None:
    clock = FakeClock()
    lim = limiter(clock, burst=4)
    baseline(lim, clock)  # its interval was app limited: the limit comes down to 4 x 1
    assert interval(lim, clock, [(NO_LOAD_S, 3)]) == 5  # in use, unqueued: grows
    # 8 in flight, most bids slow, one as fast as alone: a burst, the limit still grows ...
    assert interval(lim, clock, [(NO_LOAD_S * 1.2, 8)] + [(NO_LOAD_S * 6, 8)] * 7) == 6
    # ... while the same interval without its fast bid is a standing queue.
    assert interval(lim, clock, [(NO_LOAD_S * 6, 8)] * 7) == 4


def test_a_standing_queue_cuts_the_limit_by_its_gradient_at_most_to_a_quarter_per_interval() -> None:
    clock = FakeClock()
    lim = limiter(clock, burst=64)  # no app-limited cut: the test starts from the ceiling
    baseline(lim, clock)
    # The fastest bid at 5x the no-load latency: gradient 2/5.
    assert interval(lim, clock, [(NO_LOAD_S * 5, 40)] * 20) == 25
    assert lim.standing_queues == 1
    lim = limiter(clock, burst=64)
    baseline(lim, clock)
    # At 10x: 2/10, floored at a quarter.
    assert interval(lim, clock, [(NO_LOAD_S * 10, 40)] * 20) == 16


def test_the_floor_holds_under_any_queue() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    baseline(lim, clock)
    limits = [interval(lim, clock, [(NO_LOAD_S * 50, 64)] * 10) for _ in range(20)]
    assert limits[0] == 4  # the baseline's interval (app limited) cut it to the burst floor, 16, then x0.25
    assert set(limits[1:]) == {4}


def test_a_bigger_bid_is_not_read_as_a_queue() -> None:
    clock = FakeClock()
    lim = limiter(clock, burst=4)
    baseline(lim, clock)  # 50 candidates in 2 ms
    assert interval(lim, clock, [(NO_LOAD_S, 3)]) == 5
    # 150 candidates in 5 ms, 8 in flight: slower than a 50-candidate bid alone, not slower than three.
    for _ in range(3):
        lim.on_done(NO_LOAD_S * 2.5, 150, 8)
    clock.now += 0.026
    assert lim.on_done(NO_LOAD_S * 2.5, 150, 8) == 6


def test_without_a_baseline_latency_decides_nothing() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    assert interval(lim, clock, [(NO_LOAD_S * 50, 64)] * 10) == 64  # in use, no baseline: may grow (capped)
    assert lim.standing_queues == 0


@pytest.mark.parametrize(
    "options",
    [
        {"min_limit": 0},
        {"min_limit": 65},
        {"tolerance": 0.9},
        {"interval_s": 0.0},
        {"headroom": 1.5},
        {"window_s": 0.0},
    ],
)
def test_rejects_nonsense_settings(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        limiter(FakeClock(), **options)


@given(
    st.lists(
        st.tuples(
            st.floats(1e-6, 1.0, allow_nan=False), st.integers(0, 500), st.integers(1, 80), st.booleans()
        ),
        max_size=300,
    ),
    st.integers(1, 8),
)
def test_any_sequence_keeps_the_limit_within_bounds(
    samples: list[tuple[float, int, int, bool]], floor: int
) -> None:
    clock = FakeClock()
    lim = limiter(clock, min_limit=floor, max_limit=floor + 40)
    for latency, rows, inflight, next_interval in samples:
        if next_interval:
            clock.now += 0.03
        assert floor <= lim.on_done(latency, rows, inflight) <= floor + 40


def test_an_onset_is_judged_after_a_quarter_interval_a_mild_queue_only_at_its_end() -> None:
    clock = FakeClock()
    lim = limiter(clock, burst=64)
    baseline(lim, clock)
    lim.on_done(NO_LOAD_S * 10, 50, 40)  # opens an interval: every bid 10x, over twice the tolerance
    clock.now += 0.007  # a quarter of 25 ms later
    assert lim.on_done(NO_LOAD_S * 10, 50, 40) == 16  # cut at once
    lim = limiter(clock, burst=64)
    baseline(lim, clock)
    lim.on_done(NO_LOAD_S * 3, 50, 40)  # 3x: a standing queue if it lasts, not an onset
    clock.now += 0.007
    assert lim.on_done(NO_LOAD_S * 3, 50, 40) == 64
    clock.now += 0.02
    assert lim.on_done(NO_LOAD_S * 3, 50, 40) == 42  # at the interval's end: x 2/3


def test_after_two_idle_windows_the_old_peak_no_longer_holds_the_limit_up() -> None:
    clock = FakeClock()
    lim = limiter(clock, burst=4, window_s=1.0)
    # A busy spell of 8 bids in flight (app limited: 4 x 8), then a quiet bid a window later.
    assert interval(lim, clock, [(NO_LOAD_S, 8)] * 4) == 32
    clock.now += 1.0
    assert interval(lim, clock, [(NO_LOAD_S, 1)]) == 32  # the peak of 8 is one window old: still counts
    lim = limiter(clock, burst=4, window_s=1.0)
    interval(lim, clock, [(NO_LOAD_S, 8)] * 4)
    clock.now += 2.5  # idle for over two windows
    assert interval(lim, clock, [(NO_LOAD_S, 1)]) == 4  # 4 x the one bid in flight since
