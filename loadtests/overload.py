"""`python -m loadtests.overload`: the gateway at 3x its capacity with the real model, where the gateway's
own CPU (shared with Triton and this generator) is what saturates. Prints and writes what issue 14 asks of
the answer, as measurements with verdicts (tests/integration/test_overload.py asserts them, allowing 4 ms
of this box's noise on the p99 bound; on a 2-core box the generator competes for the same cores):

  capacity      the most bids/s served (200) by a step of a x1.3 ladder whose p99 stays within
                --p99-bound-ms (a step that misses is tried once more); the ladder stops at the first
                step that misses twice or sheds over a tenth of its offer
  unloaded      p50/p99 at a quarter of capacity, for 8 s (its p99 is the reference: long enough to be stable)
  at 3x         for 6 s: admitted (200) p50/p99, shed (503) count and p99, the worst answer against tmax,
                other errors, RSS before/after, and goodput: bids served per second / capacity

Starts a local Triton (the committed model) and one gateway worker with its defaults (or --env K=V ...).
Writes loadtests/results/overload.json and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvloop

from gateway.local_triton import REPO_ROOT, LocalTriton, free_ports
from loadtests.bench.openloop import StepSamples, http_request_bytes, run_http_step
from loadtests.bench.processes import Server, start_gateway
from loadtests.bench.report import OVERLOAD_SECTION, write_kept_section
from loadtests.workload import Workload, WorkloadConfig

log = logging.getLogger("loadtests.overload")


def _p(latencies: list[float], q: float) -> float:
    return round(float(np.percentile(latencies, q)) * 1000.0, 2) if latencies else 0.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _step(server: Server, payloads: list[bytes], rate: float, seconds: float, seed: int) -> StepSamples:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(
            run_http_step(
                "127.0.0.1",
                server.port,
                payloads,
                rate=rate,
                duration_s=seconds,
                seed=seed,
                max_connections=512,
            )
        )


def overload_payloads(candidates: int, tmax_ms: int) -> list[bytes]:
    """256 distinct bid requests of the bench's workload, each `candidates` candidates and one tmax."""
    workload = Workload.load(WorkloadConfig.fixed(candidates, tmax_mix_ms=((tmax_ms, 1.0),)))
    return [http_request_bytes("/v1/bid", orjson.dumps(r)) for r in workload.requests(256, seed=7)]


def _served_within(
    server: Server, payloads: list[bytes], rate: float, seed: int, p99_bound_ms: float
) -> float:
    """Bids/s served (200) by one 2 s step at `rate`; 0 when its p99 passed the bound or bids never ended."""
    samples = _step(server, payloads, rate, 2.0, seed)
    if samples.unfinished or _p(samples.latencies_s, 99) > p99_bound_ms:
        return 0.0
    return len(samples.latencies_s) / samples.duration_s


def measure(server: Server, payloads: list[bytes], p99_bound_ms: float, tmax_ms: int) -> dict[str, Any]:
    _step(server, payloads, 100.0, 1.0, seed=99)  # warm caches and connections
    rate, capacity = 150.0, 0.0
    for seed in range(0, 24, 2):
        # A step that misses is tried once more before the ladder stops, as the bench's ladder does: one
        # 2 s step's p99 on this shared box can catch a neighbour's stall (a clean-clone CI run once
        # stopped at the first step, 150 bids/s, a sixth of this worker's capacity).
        served = _served_within(server, payloads, rate, seed, p99_bound_ms)
        if served == 0.0:
            served = _served_within(server, payloads, rate, seed + 1, p99_bound_ms)
        if served == 0.0:
            break
        capacity = max(capacity, served)
        # Capacity is what it serves within the bound: the learnt bids-in-flight limit sheds part of a
        # step near saturation (those 503s are its answer, not a failure), and once it sheds more than a
        # tenth of what is offered the served rate has stopped growing.
        if served < 0.9 * rate:
            break
        rate *= 1.3
    if capacity == 0:
        raise SystemExit("not even the first step (150 bids/s) stayed within the p99 bound")
    unloaded = _step(server, payloads, capacity / 4, 8.0, seed=100)  # long: its p99 is the reference
    rss_before = _rss_mib(server.pid)
    loaded = _step(server, payloads, 3 * capacity, 6.0, seed=101)
    rss_after = _rss_mib(server.pid)
    admitted = loaded.latencies_s
    shed = loaded.error_latencies_s.get("http_503", [])
    answered = admitted + shed
    return {
        "tmax_ms": tmax_ms,
        "capacity_bids_per_s": round(capacity, 1),
        "unloaded_p50_ms": _p(unloaded.latencies_s, 50),
        "unloaded_p99_ms": _p(unloaded.latencies_s, 99),
        "offered_bids_per_s": round(3 * capacity, 1),
        "admitted": len(admitted),
        "admitted_p50_ms": _p(admitted, 50),
        "admitted_p99_ms": _p(admitted, 99),
        "shed": len(shed),
        "shed_p99_ms": _p(shed, 99),
        "worst_answer_ms": round(max(answered, default=0.0) * 1000.0, 1),
        "answers_after_tmax": sum(1 for latency in answered if latency * 1000.0 > tmax_ms),
        "other_errors": {k: n for k, n in loaded.error_kinds.items() if k != "http_503"},
        "unfinished": loaded.unfinished,
        "rss_mib_before_after": [round(rss_before, 1), round(rss_after, 1)],
        "goodput_vs_capacity": round(len(admitted) / loaded.duration_s / capacity, 2),
    }


def target_rows(result: dict[str, Any], p99_allowance_ms: float = 0.0) -> list[tuple[str, str, str, bool]]:
    """Issue 14's targets at 3x for a `measure` result: (target, bound, this run, met) each.
    `p99_allowance_ms` is added to the 2x bound (the integration test's allowance for this box's noise)."""
    unloaded_p99 = result["unloaded_p99_ms"]
    before, after = result["rss_mib_before_after"]
    admitted_p99, shed_p99, late = (
        result["admitted_p99_ms"],
        result["shed_p99_ms"],
        result["answers_after_tmax"],
    )
    admitted_bound = 2 * unloaded_p99 + p99_allowance_ms
    return [
        ("admitted p99 within 2x unloaded", f"<= {admitted_bound:.2f} ms", f"{admitted_p99} ms",
         admitted_p99 <= admitted_bound),
        ("shed (503) p99", "<= 10 ms", f"{shed_p99} ms", shed_p99 <= 10.0),
        (f"answered after tmax ({result['tmax_ms']} ms)", "0", str(late), late == 0),
        ("RSS growth over the overload", "<= 30 MiB", f"{after - before:+.1f} MiB", after - before <= 30),
    ]  # fmt: skip


def _section(result: dict[str, Any], started: str) -> str:
    """The Overload section of docs/benchmarks.md: issue 14's targets at 3x capacity, with verdicts."""
    unloaded_p99 = result["unloaded_p99_ms"]
    rows = target_rows(result)
    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items()) or "the gateway's defaults"
    return "\n".join(
        [
            "## At 3x capacity with the real model",
            "",
            f"Written by `python -m loadtests.overload` ({started}): one gateway worker ({settings}), "
            f"{result['candidates']} candidates per bid, tmax {result['tmax_ms']} ms. Capacity is the most "
            "bids/s served by a step of a x1.3 ladder within p99 <= 25 ms; then a quarter of it for 8 s "
            "(unloaded) and 3x it for 6 s, open loop, the generator on the same 2 cores as the gateway and "
            "Triton. "
            "Raw numbers: [`../loadtests/results/overload.json`](../loadtests/results/overload.json).",
            "",
            f"Capacity {result['capacity_bids_per_s']:,} bids/s; unloaded p50/p99 "
            f"{result['unloaded_p50_ms']}/{unloaded_p99} ms; offered "
            f"{result['offered_bids_per_s']:,} bids/s: "
            f"{result['admitted']:,} admitted (p50 {result['admitted_p50_ms']} ms), {result['shed']:,} shed; "
            f"worst answer {result['worst_answer_ms']} ms; goodput (served at 3x / capacity) "
            f"**{result['goodput_vs_capacity']}**.",
            "",
            "| target | bound | this run | verdict |",
            "| --- | ---: | ---: | --- |",
            *(
                f"| {name} | {bound} | {value} | **{'met' if ok else 'not met'}** |"
                for name, bound, value, ok in rows
            ),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.overload", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--tmax-ms", type=int, default=100)
    p.add_argument("--p99-bound-ms", type=float, default=25.0)
    p.add_argument("--env", nargs="*", default=[], help="BIDGW_K=V settings for the gateway")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "loadtests" / "results" / "overload.json")
    p.add_argument("--report", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md",
                   help="the document whose overload section to rewrite")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    payloads = overload_payloads(args.candidates, args.tmax_ms)
    log_dir = Path(tempfile.mkdtemp(prefix="bidgw-overload-"))
    env = dict(item.split("=", 1) for item in args.env)
    with (
        LocalTriton(free_ports(), log_to=log_dir / "tritonserver.log") as triton,
        start_gateway(triton.http_address, workers=1, log_dir=log_dir, extra_env=env) as server,
    ):
        result = measure(server, payloads, args.p99_bound_ms, args.tmax_ms)
    result = {"settings": env, "candidates": args.candidates, "tmax_ms": args.tmax_ms, **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    if args.report is not None:
        started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        write_kept_section(args.report, OVERLOAD_SECTION, _section(result, started))
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
