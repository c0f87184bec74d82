"""The capacity plan: its arithmetic, its agreement with the committed results, a doc that cannot go stale,
and `python -m loadtests.redis_cost` end to end against a real redis-server."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from loadtests import capacity
from loadtests.capacity import (
    Arm,
    Assumptions,
    Bench,
    BenchConfig,
    BenchMeta,
    CpuPerBid,
    GatewayCpu,
    GpuResult,
    Inputs,
    RedisCost,
    RedisMeta,
    RedisPerBid,
    Step,
    exceeds,
    load_inputs,
    plan,
    redis_load,
    redis_shards,
    render,
    shards_touched,
    update_document,
)
from tests.integration.redis_server import require_redis_server

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
BID_TTL_S = 300.0


def _step(server: float | None, triton: float, rate: float = 1000.0) -> Step:
    return Step(achieved_rate=rate, p99_ms=20.0, cpu_us_per_bid=CpuPerBid(server=server, triton=triton))


def synthetic(
    *,
    gateway_us: float = 500.0,
    gateway_w2_us: float = 400.0,
    redis_extra_us: float = 500.0,
    triton_us: float = 1000.0,
    direct_triton_us: float = 500.0,
    exec_us: float = 50.0,
    round_trips: float = 2.0,
    calls: float = 2.0,
    memory_bytes: float = 300.0,
    campaigns: float = 10.0,
    winners: float = 1.0,
    gpu: GpuResult | None = None,
) -> Inputs:
    """Round numbers, so the expected fleet can be worked out by hand."""
    bench = Bench(
        meta=BenchMeta(started_at="t", cpus=2),
        config=BenchConfig(p99_bound_ms=25.0),
        arms=[
            Arm("direct", _step(None, direct_triton_us, rate=2000.0)),
            Arm("gateway", _step(gateway_us, triton_us)),
            Arm("gateway-w2", _step(gateway_w2_us, triton_us)),
        ],
    )
    redis = RedisCost(
        meta=RedisMeta(measured_at="t", candidates=50, bids=100, distinct_campaigns_per_bid=campaigns),
        per_bid=RedisPerBid(
            round_trips=round_trips,
            calls=calls,
            commands_incl_script_calls=10.0,
            bytes_in=7000.0,
            bytes_out=1000.0,
            redis_cpu_us=400.0,
            redis_exec_us=exec_us * 1.2,
            redis_exec_us_median=exec_us,
            median_call_us_by_command={"mget": 40.0},
            memory_bytes=memory_bytes,
            winners=winners,
            http_request_bytes=6000.0,
            http_response_bytes=600.0,
            mget_isolated_median_us=10.0,
        ),
        gateway_cpu_us_per_bid=GatewayCpu(redis=0.0, embedded=0.0, redis_extra=redis_extra_us),
    )
    return Inputs(bench=bench, redis=redis, gpu=gpu, cpu_instances=4)


# ------------------------------------------------------------------------------------------ arithmetic


def test_fleet_matches_the_hand_worked_numbers() -> None:
    p = plan(synthetic())
    small, big = p.fleets
    # 500 us (the larger arm) + 500 us Redis extra = 1,000 us: 1,000 bids/s per core, 600 at 60%.
    assert p.per_core.gateway_us == 1000.0
    assert small.rate == 100_000
    assert small.gateway_cores == math.ceil(100_000 / 600)
    assert small.gateway_pods == math.ceil(small.gateway_cores / 8)
    assert big.gateway_cores == math.ceil(1_000_000 / 600)
    # Without the Redis extra: 500 us, 1,200 bids/s per core at 60%.
    assert small.gateway_pods_embedded == math.ceil(100_000 / 1200 / 8)
    # Triton: 1,000 us per 50-row bid = 50,000 rows/s per core, 30,000 at 60%.
    assert small.triton_cpu_cores == math.ceil(100_000 * 50 / 30_000)
    # GPU estimate: 1M rows/s per pod = 20,000 bids/s.
    assert small.gpus == 5
    assert big.gpus == 50
    # rows/s per CPU instance: 2,000 bids/s x 50 rows over 4 instances.
    assert p.per_core.direct_rows_per_s_per_instance == 25_000.0


def test_doubling_cpu_per_bid_doubles_gateway_and_triton_cores() -> None:
    base = plan(synthetic()).fleets[-1]
    doubled = plan(
        synthetic(gateway_us=1000.0, gateway_w2_us=800.0, redis_extra_us=1000.0, triton_us=2000.0)
    ).fleets[-1]
    assert abs(doubled.gateway_cores - 2 * base.gateway_cores) <= 1  # each rounded up once
    assert abs(doubled.triton_cpu_cores - 2 * base.triton_cpu_cores) <= 1
    assert doubled.gpus == base.gpus  # GPU pods go by rows, not by the CPU Triton figure


def test_redis_extra_is_added_once_and_never_subtracted() -> None:
    assert plan(synthetic(redis_extra_us=0.0)).per_core.gateway_us == 500.0
    assert plan(synthetic(redis_extra_us=-50.0)).per_core.gateway_us == 500.0  # noise, not a saving


def test_a_gpu_measurement_replaces_the_estimate() -> None:
    measured = GpuResult(
        rows_per_s_per_pod=2_500_000.0, source="perf_analyzer on a test node", gpus_per_pod=2
    )
    p = plan(synthetic(gpu=measured))
    assert p.gpu_measured
    assert p.fleets[-1].gpus == math.ceil(50_000_000 / 2_500_000) * 2
    text = render(p)
    assert "perf_analyzer on a test node" in text
    assert "estimate" not in capacity.headline(p)
    assert "estimate" in capacity.headline(plan(synthetic()))


def test_shards_touched() -> None:
    assert shards_touched(1, 45.0) == pytest.approx(1.0)
    assert shards_touched(100, 1.0) == pytest.approx(1.0)
    assert shards_touched(10_000, 45.0) == pytest.approx(45.0, rel=0.01)  # every group on its own shard
    assert shards_touched(4, 45.0) == pytest.approx(4.0, rel=0.01)  # every shard touched
    assert shards_touched(8, 0.0) == 0.0


def test_redis_shards_are_the_fewest_within_every_limit() -> None:
    cost, a = synthetic(campaigns=44.0).redis, Assumptions()
    for rate in (5_000, 100_000, 1_000_000):
        found = redis_shards(rate, cost, a, BID_TTL_S)
        assert not exceeds(found, a)
        assert found.cpu_share <= a.utilisation
        assert found.ops_per_shard <= a.redis_shard_ops_per_s
        assert found.memory_per_shard_bytes <= a.redis_shard_memory_bytes
        if found.shards > 1:
            assert exceeds(redis_load(rate, cost, a, BID_TTL_S, found.shards - 1), a)


def test_one_redis_node_is_the_single_node_measurement() -> None:
    cost, a = synthetic(exec_us=50.0, round_trips=2.0).redis, Assumptions()
    one = redis_load(1000.0, cost, a, BID_TTL_S, 1)
    assert one.round_trips == pytest.approx(2.0)  # no fan-out on one node
    assert one.cpu_share == pytest.approx(1000.0 * (50.0 + 2.0 * a.redis_call_us) / 1e6)
    ceiling = capacity.single_redis_rate(cost, a, BID_TTL_S)
    assert ceiling == pytest.approx(a.utilisation * 1e6 / (50.0 + 2.0 * a.redis_call_us))
    assert redis_shards(ceiling * 0.99, cost, a, BID_TTL_S).shards == 1


def test_redis_memory_bound_when_bid_records_are_big() -> None:
    found = redis_shards(1_000_000, synthetic(memory_bytes=2_000_000.0).redis, Assumptions(), BID_TTL_S)
    assert found.bound == "memory"
    assert found.shards >= math.ceil(
        1_000_000 * 2_000_000.0 * BID_TTL_S / Assumptions().redis_shard_memory_bytes
    )


def test_redis_fan_out_grows_round_trips_with_shards() -> None:
    inputs = synthetic(campaigns=44.0, round_trips=2.0, calls=2.0)
    a = Assumptions()
    small = redis_shards(10_000, inputs.redis, a, BID_TTL_S)
    big = redis_shards(1_000_000, inputs.redis, a, BID_TTL_S)
    assert small.shards < big.shards
    assert 2.0 <= small.round_trips < big.round_trips <= 2.0 + 45.0 + 1.0
    assert big.calls >= big.round_trips  # a single MGET must split per shard


def test_candidates_must_match_the_redis_measurement() -> None:
    with pytest.raises(ValueError, match="candidates"):
        plan(synthetic(), Assumptions(candidates=100))


# ------------------------------------------------------------------------------- the committed results


def test_table_agrees_with_the_committed_bench_results() -> None:
    raw = json.loads((REPO_ROOT / "loadtests" / "results" / "bench.json").read_text())
    arms = {arm["name"]: arm["max_throughput_within_p99_bound"] for arm in raw["arms"]}
    p = plan(load_inputs())
    gateway_us = max(arms[name]["cpu_us_per_bid"]["server"] for name in ("gateway", "gateway-w2"))
    assert p.per_core.gateway_embedded_us == gateway_us
    assert p.per_core.triton_us == arms["gateway"]["cpu_us_per_bid"]["triton"]
    assert p.per_core.direct_triton_us == arms["direct"]["cpu_us_per_bid"]["triton"]
    redis = json.loads((REPO_ROOT / "loadtests" / "results" / "redis_cost.json").read_text())
    extra = max(redis["gateway_cpu_us_per_bid"]["redis_extra"], 0.0)
    assert p.per_core.gateway_us == pytest.approx(gateway_us + extra)
    text = render(p)
    assert f"{gateway_us:,.0f}" in text
    for fleet in p.fleets:
        assert fleet.gateway_cores * p.per_core.bids_per_core(p.assumptions.utilisation) >= fleet.rate
        assert fleet.gpus * p.gpu_rows_per_s_per_pod >= fleet.rate * p.assumptions.candidates


def test_committed_doc_is_what_the_script_generates() -> None:
    doc = REPO_ROOT / "docs" / "capacity.md"
    current = doc.read_text()
    assert update_document(current, render(plan(load_inputs()))) == current, (
        "docs/capacity.md is stale: run `make capacity`"
    )


def test_regeneration_keeps_hand_written_text(tmp_path: Path) -> None:
    doc = tmp_path / "capacity.md"
    doc.write_text(
        f"# intro by hand\n\n{capacity.BEGIN}\nold numbers\n{capacity.END}\n\n## caveats by hand\n"
    )
    assert capacity.main(["--check", "--doc", str(doc)]) == 1
    assert capacity.main(["--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# intro by hand\n")
    assert text.endswith("## caveats by hand\n")
    assert "old numbers" not in text
    assert capacity.main(["--check", "--doc", str(doc)]) == 0
    with pytest.raises(ValueError, match="markers"):
        update_document("no markers here", "x")


# ---------------------------------------------------------------------------------- redis_cost.py, real


@pytest.mark.integration
def test_redis_cost_measures_a_real_redis_end_to_end(tmp_path: Path) -> None:
    require_redis_server()
    out = tmp_path / "redis_cost.json"
    command = [sys.executable, "-m", "loadtests.redis_cost", "--bids", "60", "--distinct", "30"]
    command += ["--concurrency", "4", "--no-cpu-compare", "--out", str(out)]
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    cost = msgspec.json.decode(out.read_bytes(), type=RedisCost)  # what the capacity script reads
    per_bid = cost.per_bid
    assert cost.meta.bids == 60
    assert cost.meta.candidates == 50
    assert cost.meta.distinct_campaigns_per_bid > 1
    assert json.loads(out.read_text())["meta"]["statuses"] == {"200": 60}
    assert 1 <= per_bid.round_trips <= 10
    assert per_bid.calls >= 1
    assert per_bid.commands_incl_script_calls >= per_bid.calls
    assert per_bid.bytes_in > 1000  # a 50-candidate bid reads its user and its campaigns' state
    assert per_bid.bytes_out > 0
    assert per_bid.redis_exec_us_median > 0
    assert per_bid.http_request_bytes > 4000
    assert cost.gateway_cpu_us_per_bid is None
