"""CoDel on the event loop's lag: bursts absorbed, standing queues shed, waits counted against budgets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from gateway.api.admission import LoopLagAdmission, request_start_age

TARGET, INTERVAL = 0.005, 0.1


def admission() -> LoopLagAdmission:
    return LoopLagAdmission(target_s=TARGET, interval_s=INTERVAL)


def test_a_burst_shorter_than_the_interval_is_absorbed() -> None:
    gate = admission()
    for i in range(9):  # 90 ms above target
        gate.observe(0.020, now=i * 0.01)
        assert gate.admit()
    gate.observe(0.001, now=0.095)
    gate.observe(0.020, now=0.1)
    assert gate.admit(), "the clock restarts once the lag dipped under the target"
    assert gate.stats.shed_by_lag == 0


def test_a_standing_queue_is_shed_until_the_lag_falls_under_target() -> None:
    gate = admission()
    for i in range(11):
        gate.observe(0.012, now=i * 0.01)
    assert gate.shedding
    assert not gate.admit()
    assert not gate.admit()
    assert gate.stats.shed_by_lag == 2
    assert gate.stats.standing_queues == 1
    gate.observe(0.004, now=0.2)
    assert gate.admit()
    assert gate.stats.lag_s == 0.004


def test_target_zero_never_sheds_but_still_measures() -> None:
    gate = LoopLagAdmission(target_s=0.0)
    for i in range(100):
        gate.observe(1.0, now=i * 0.01)
    assert gate.admit()
    assert gate.stats.lag_s == 1.0
    assert gate.arrival_estimate(10.0) == 9.0


def test_arrival_estimate_takes_the_larger_of_lag_and_a_trusted_proxy_stamp() -> None:
    gate = admission()
    gate.observe(0.003, now=0.0)
    assert gate.arrival_estimate(5.0) == pytest.approx(4.997)
    stamp = f"t={time.time() - 0.040:.6f}".encode()
    assert gate.arrival_estimate(5.0, [(b"x-request-start", stamp)]) == pytest.approx(4.960, abs=0.005)
    assert gate.arrival_estimate(5.0, [(b"other", b"1")]) == pytest.approx(4.997)


@pytest.mark.parametrize(
    ("render", "expected"),
    [
        (lambda now: f"t={now - 0.25:.3f}", 0.25),  # nginx $msec, Heroku
        (lambda now: f"{(now - 0.25) * 1000:.0f}", 0.25),  # milliseconds
        (lambda now: f"t={(now - 0.25) * 1e6:.0f}", 0.25),  # microseconds
        (lambda now: "t=garbage", 0.0),
        (lambda now: "", 0.0),
        (lambda now: f"t={now + 5:.3f}", 0.0),  # from the future: clock skew, not a wait
        (lambda now: f"t={now - 3600:.3f}", 0.0),  # an hour: a broken clock, not a wait
    ],
)
def test_request_start_header_formats(render: Callable[[float], str], expected: float) -> None:
    # Rendered at run time: a stamp made at collection would have aged by the time the test runs.
    age = request_start_age([(b"x-request-start", render(time.time()).encode())])
    assert age == pytest.approx(expected, abs=0.05)


async def test_a_blocked_loop_shows_as_lag_and_then_as_shedding() -> None:
    gate = LoopLagAdmission(target_s=0.005, interval_s=0.02, period_s=0.002)
    gate.start()
    try:
        await asyncio.sleep(0.01)
        assert gate.stats.lag_s < 0.005
        assert gate.admit()
        for _ in range(6):  # the CPU-bound worker: every loop iteration takes 15 ms
            time.sleep(0.015)
            await asyncio.sleep(0)
        assert gate.stats.lag_s >= 0.010
        assert gate.shedding
        await asyncio.sleep(0.02)  # idle again: the next samples are on time
        assert gate.stats.lag_s < 0.005
        assert gate.admit()
    finally:
        gate.stop()
