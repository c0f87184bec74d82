"""The benchmark's ladder of offered rates on scripted steps: which rates pass, and what is retried."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

from loadtests.bench.openloop import StepSamples
from loadtests.bench.runner import ArmResult, BenchConfig, StepFn, _ladder

CONFIG = BenchConfig(
    start_rate=100.0, growth=2.0, max_steps=4, refine=1, step_s=0.01, warmup_s=0.0, fixed_s=0.01,
    settle_s=0.0, recover_s=0.0, p99_bound_ms=25.0,
)  # fmt: skip


def scripted(p99_ms: dict[float, list[float]]) -> tuple[list[float], StepFn]:
    """A step at a rate: its p99 the next scripted value for the rate (else 1 ms), served as offered."""
    calls: list[float] = []

    async def step(rate: float, seconds: float, seed: int) -> StepSamples:
        calls.append(rate)
        script = p99_ms.get(rate)
        latency_ms = script.pop(0) if script else 1.0
        return StepSamples(
            offered_rate=rate,
            duration_s=seconds,
            latencies_s=[latency_ms / 1000.0] * int(rate),
            elapsed_s=1.0,
        )

    return calls, step


def ladder(config: BenchConfig, p99_ms: dict[float, list[float]]) -> tuple[ArmResult, list[float]]:
    arm = ArmResult("gateway", "scripted")
    calls, step = scripted(p99_ms)
    asyncio.run(_ladder(arm, step, {"generator": os.getpid()}, config))
    return arm, calls[2:]  # after the warm-up and the fixed-rate step


def test_one_spike_is_retried_and_does_not_end_the_ladder() -> None:
    arm, rates = ladder(CONFIG, {200.0: [40.0], 800.0: [40.0, 40.0], 600.0: [40.0, 40.0]})
    assert rates == [100.0, 200.0, 200.0, 400.0, 800.0, 800.0, 600.0, 600.0]
    assert arm.best is not None
    assert arm.best.offered_rate == 400.0
    assert [s.passed for s in arm.steps if s.offered_rate == 200.0] == [False, True]


def test_without_retries_a_spike_decides() -> None:
    arm, rates = ladder(replace(CONFIG, retry_failed_steps=False), {200.0: [40.0]})
    assert rates == [100.0, 200.0, 150.0]
    assert arm.best is not None
    assert arm.best.offered_rate == 150.0


def test_an_arm_that_fails_the_first_rung_is_stepped_down() -> None:
    # The warm-up runs at the first rung too (its scripted p99 comes first); the fixed rate elsewhere.
    config = replace(CONFIG, fixed_rate=10.0)
    arm, rates = ladder(config, {100.0: [1.0, 40.0, 40.0], 50.0: [40.0, 40.0]})
    # 100 fails twice, 50 (100 / growth 2) twice, 25 passes; then bisection between 25 and 50.
    assert rates == [100.0, 100.0, 50.0, 50.0, 25.0, 37.5]
    assert arm.best is not None
    assert arm.best.offered_rate == 37.5


def test_an_arm_that_fails_every_rung_down_has_no_throughput() -> None:
    config = replace(CONFIG, fixed_rate=10.0, retry_failed_steps=False, steps_down=1)
    arm, rates = ladder(config, {100.0: [1.0, 40.0], 50.0: [40.0]})
    assert rates == [100.0, 50.0]
    assert arm.best is None
