"""AdaptiveConcurrencyLimit on made-up samples: a fake clock, latencies chosen by the test."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.scoring.limiter import AdaptiveConcurrencyLimit

MS = 0.001
FIXED_S = 1.0 * MS  # per call
PER_ROW_S = 0.01 * MS


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def unqueued(rows: int) -> float:
    """An idle server's latency: a fixed cost per call plus a cost per row."""
    return FIXED_S + PER_ROW_S * rows


def limiter(
    *, max_limit: int = 8, clock: FakeClock | None = None, **options: Any
) -> AdaptiveConcurrencyLimit:
    """The limiter with its own defaults, a ceiling of 8 and a fake clock unless the test says otherwise."""
    clock = FakeClock() if clock is None else clock
    return AdaptiveConcurrencyLimit(max_limit=max_limit, clock=clock, **options)


def test_starts_at_the_ceiling_so_it_behaves_as_the_fixed_limit_until_told_otherwise() -> None:
    assert limiter(max_limit=4).limit == 4
    assert limiter(max_limit=4, initial_limit=2.5).limit == 2
    assert limiter(max_limit=4, initial_limit=99).limit == 4


def test_grows_while_latency_stays_at_its_minimum_and_the_limit_is_in_use() -> None:
    lim = limiter(initial_limit=1)
    for _ in range(200):
        lim.on_success(unqueued(50), 50, inflight=lim.limit)
    assert lim.limit == 8


def test_does_not_grow_while_app_limited() -> None:
    lim = limiter(initial_limit=2)
    for _ in range(200):
        lim.on_success(unqueued(50), 50, inflight=1)
    # One call in flight keeps the limit within 2x of it: enough for the next bid to go at once.
    assert lim.limit == 2


def test_shrinks_when_latency_rises_over_its_minimum() -> None:
    lim = limiter(initial_limit=8)
    lim.on_success(unqueued(50), 50, inflight=1)
    for _ in range(50):
        lim.on_success(3 * unqueued(50), 50, inflight=8)
    assert lim.limit == 1


def test_a_bigger_batch_is_not_read_as_congestion() -> None:
    lim = limiter(initial_limit=4, probe_gap=1000)
    lim.on_success(unqueued(50), 50, inflight=1)
    # Batches of 20 bids: 20x the rows, slower by their per-row cost only.
    for _ in range(100):
        lim.on_success(unqueued(1000), 1000, inflight=lim.limit)
    assert lim.limit == 8


def test_an_unknown_batch_size_is_probed_alone_then_judged_against_itself() -> None:
    lim = limiter(initial_limit=4, probe_gap=0)
    lim.on_success(unqueued(50), 50, inflight=1)
    queued = unqueued(1000) + 2 * unqueued(1000)  # two calls ahead in the server's queue
    # The upper bound from 50-row calls (20x) cannot tell this from a slow model: probe instead.
    assert lim.on_success(queued, 1000, inflight=4) == 1
    assert lim.probing
    assert lim.estimate == 4
    # Calls launched before the probe return; they are not alone, so the probe goes on.
    assert lim.on_success(queued, 1000, inflight=4) == 1
    # The first call that started alone measures 1000 rows unqueued, and ends the probe.
    assert lim.on_success(unqueued(1000), 1000, inflight=1) == 4
    assert not lim.probing
    assert lim.no_load_latency(1000) == pytest.approx(unqueued(1000))
    # Now the queue shows.
    for _ in range(30):
        lim.on_success(queued, 1000, inflight=4)
    assert lim.limit == 1


def test_probes_are_spaced_by_probe_gap_calls() -> None:
    lim = limiter(initial_limit=4, probe_gap=10)
    lim.on_success(unqueued(50), 50, inflight=1)  # a known size; the next probe may come at once
    lim.on_success(unqueued(100), 100, inflight=4)
    assert lim.probing
    lim.on_success(unqueued(100), 100, inflight=1)
    probes = 0
    for rows in range(200, 3200, 100):  # ever new sizes, each a new bucket now and then
        was = lim.probing
        lim.on_success(unqueued(rows), rows, inflight=1 if lim.probing else 4)
        probes += lim.probing and not was
    assert 1 <= probes <= 3


def test_a_slow_big_batch_after_a_fast_one_of_its_size_is_congestion() -> None:
    lim = limiter(initial_limit=4)
    lim.on_success(unqueued(1000), 1000, inflight=1)
    for _ in range(30):
        lim.on_success(unqueued(1000) + 2 * unqueued(1000), 1000, inflight=4)
    assert lim.limit < 4


def test_only_calls_that_started_alone_set_the_baseline() -> None:
    lim = limiter(initial_limit=4, probe_gap=1000)
    lim.on_success(5 * unqueued(50), 50, inflight=3)  # queued behind two others of ours
    assert lim.no_load_latency(50) is None
    lim.on_success(unqueued(50), 50, inflight=1)
    assert lim.no_load_latency(50) == pytest.approx(unqueued(50))


def test_a_failure_cuts_the_limit_multiplicatively() -> None:
    lim = limiter(initial_limit=8, backoff=0.5)
    assert lim.on_drop() == 4
    assert lim.on_drop() == 2
    assert lim.on_drop() == 1
    assert lim.on_drop() == 1  # the floor


def test_a_timeout_is_a_drop_only_if_its_budget_was_ample() -> None:
    lim = limiter(initial_limit=8, backoff=0.5)
    assert lim.on_drop(budget_s=1.0, rows=50) == 8  # no baseline yet: nothing to judge it by
    lim.on_success(unqueued(50), 50, inflight=1)
    # Too short for any answer (the oldest bid's deadline in an overloaded queue): no signal.
    assert lim.on_drop(budget_s=1.5 * unqueued(50), rows=50) == 8
    assert lim.on_drop(budget_s=1.5 * 20 * unqueued(50), rows=1000) == 8  # the bound for 1000 rows: 20x
    # Ten unqueued calls' time and still no answer: a queue.
    assert lim.on_drop(budget_s=10 * unqueued(50), rows=50) == 4
    assert lim.on_drop() == 2  # refused or unreachable: always a drop


def test_respects_floor_and_ceiling() -> None:
    lim = limiter(min_limit=2, max_limit=5, initial_limit=3)
    lim.on_success(unqueued(50), 50, inflight=1)
    for _ in range(100):
        lim.on_success(10 * unqueued(50), 50, inflight=5)
    assert lim.limit == 2
    for _ in range(10):
        lim.on_drop()
    assert lim.limit == 2
    for _ in range(100):
        lim.on_success(unqueued(50), 50, inflight=5)
    assert lim.limit == 5


def test_recovers_after_an_outage() -> None:
    lim = limiter(initial_limit=8)
    lim.on_success(unqueued(50), 50, inflight=1)
    for _ in range(20):
        lim.on_drop()
    assert lim.limit == 1
    for _ in range(100):
        lim.on_success(unqueued(50), 50, inflight=lim.limit)
    assert lim.limit == 8


def test_the_baseline_expires_so_a_lasting_slowdown_becomes_the_new_normal() -> None:
    clock = FakeClock()
    lim = limiter(initial_limit=4, window_s=10.0, clock=clock)
    lim.on_success(unqueued(50), 50, inflight=1)
    slower = 3 * unqueued(50)  # e.g. a heavier model version
    for _ in range(20):
        clock.now += 0.1
        lim.on_success(slower, 50, inflight=4)
    assert lim.limit < 4
    clock.now += 25.0  # two windows: the old minimum is gone
    for _ in range(200):
        clock.now += 0.001
        lim.on_success(slower, 50, inflight=lim.limit)
    assert lim.limit == 8
    assert lim.no_load_latency(50) == pytest.approx(slower)


def test_no_load_latency_is_an_upper_bound_under_fixed_plus_per_row_cost() -> None:
    lim = limiter()
    assert lim.no_load_latency(50) is None
    lim.on_success(unqueued(50), 50, inflight=1)
    lim.on_success(unqueued(400), 400, inflight=1)
    assert lim.no_load_latency(50) == pytest.approx(unqueued(50))
    assert lim.no_load_latency(30) == pytest.approx(unqueued(50))  # fewer rows never cost more
    assert lim.no_load_latency(100) == pytest.approx(2 * unqueued(50))  # at most in proportion
    assert lim.no_load_latency(400) == pytest.approx(unqueued(400))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_limit": 0},
        {"min_limit": 5, "max_limit": 4},
        {"tolerance": 0.9},
        {"smoothing": 0.0},
        {"backoff": 1.0},
        {"backoff": 0.4},
        {"window_s": 0.0},
        {"probe_gap": -1},
    ],
)
def test_rejects_nonsense_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        limiter(**kwargs)


samples = st.lists(
    st.one_of(
        st.tuples(
            st.floats(1e-7, 1.0, allow_nan=False),
            st.integers(0, 4096),
            st.integers(0, 64),
        ),
        st.none(),  # a failure
    ),
    max_size=200,
)


@given(samples, st.integers(1, 8), st.integers(0, 24))
def test_any_sequence_of_outcomes_keeps_the_limit_within_bounds(
    outcomes: list[tuple[float, int, int] | None], floor: int, extra: int
) -> None:
    lim = limiter(min_limit=floor, max_limit=floor + extra)
    for outcome in outcomes:
        limit = lim.on_drop() if outcome is None else lim.on_success(*outcome)
        assert floor <= limit <= floor + extra
        assert limit == lim.limit


@given(st.lists(st.integers(1, 4096), min_size=1, max_size=50), st.integers(1, 8), st.booleans())
def test_unqueued_calls_of_any_size_never_lower_the_estimate(
    rows: list[int], start: int, first_alone: bool
) -> None:
    """However the batch size moves, a call as fast as an idle server serves it is never congestion."""
    lim = limiter(initial_limit=start)
    if first_alone:
        lim.on_success(unqueued(50), 50, inflight=1)
    for n in rows:
        before = lim.estimate
        lim.on_success(unqueued(n), n, inflight=1 if lim.probing else 8)
        assert lim.estimate >= before
