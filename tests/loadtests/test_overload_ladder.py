"""`loadtests.overload.measure`'s capacity ladder on scripted steps: a step that misses once is tried again,
one that misses twice ends the ladder (the overload run itself is tests/integration/test_overload.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

import pytest

from loadtests import overload
from loadtests.bench.openloop import StepSamples
from loadtests.bench.processes import Server

SERVES_UP_TO = 600.0  # bids/s the scripted worker serves; beyond it the rest is shed


@dataclass
class _Process:
    pid: int = os.getpid()  # measure reads the RSS of this pid


SERVER = cast(Server, _Process())  # the scripted steps never reach a server


def scripted(monkeypatch: pytest.MonkeyPatch, p99_ms: dict[int, list[float]]) -> list[float]:
    """Steps serve min(rate, SERVES_UP_TO) at 1 ms, or at the next scripted p99 for the rate's rung
    (0 = 150 bids/s, 1 = 195 ...; the warm-up is not a rung). Returns the rates stepped, in order."""
    calls: list[float] = []

    def step(server: object, payloads: list[bytes], rate: float, seconds: float, seed: int) -> StepSamples:
        calls.append(rate)
        script = p99_ms.get(len({round(r) for r in calls if r >= 150.0}) - 1) if rate >= 150.0 else None
        latency_ms = script.pop(0) if script else 1.0
        served = int(min(rate, SERVES_UP_TO) * seconds)
        shed = int(rate * seconds) - served
        return StepSamples(
            offered_rate=rate,
            duration_s=seconds,
            latencies_s=[latency_ms / 1000.0] * served,
            error_latencies_s={"http_503": [0.001] * shed},
        )

    monkeypatch.setattr(overload, "_step", step)
    return calls


def test_a_step_that_misses_once_is_retried_and_the_ladder_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = scripted(monkeypatch, {0: [40.0]})  # the first rung's first try catches a stall
    result = overload.measure(SERVER, [], p99_bound_ms=25.0, tmax_ms=100)
    assert calls[1:3] == [150.0, 150.0]
    assert result["capacity_bids_per_s"] == SERVES_UP_TO


def test_a_step_that_misses_twice_ends_the_ladder(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = scripted(monkeypatch, {2: [40.0, 40.0]})  # 253.5 bids/s misses both tries
    result = overload.measure(SERVER, [], p99_bound_ms=25.0, tmax_ms=100)
    ladder = calls[1:-2]  # after the warm-up, before the unloaded and 3x steps
    assert ladder == [150.0, 195.0, 253.5, 253.5]
    assert result["capacity_bids_per_s"] == 195.0


def test_a_first_rung_that_misses_twice_is_a_clear_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, {0: [40.0, 40.0]})
    with pytest.raises(SystemExit, match="not even the first step"):
        overload.measure(SERVER, [], p99_bound_ms=25.0, tmax_ms=100)
