"""`python -m loadtests.bench`: gateway vs direct Triton vs a KServe transformer, one run, one Triton.

    python -m loadtests.bench                 # the full run (a few minutes); writes the JSON and the report
    python -m loadtests.bench --tiny          # seconds: a smoke run of the whole command (tests use it)
    python -m loadtests.bench --arms direct,gateway --fixed-rate 200

Starts one local Triton (the committed model, CPU configs), then for each arm the server under test on a
free loopback port, and drives it with the same open-loop generator and the same requests (the shared
workload with exactly --candidates candidates per bid). Writes loadtests/results/bench.json, then
docs/benchmarks.md with its plots under docs/img/.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from gateway.local_triton import REPO_ROOT
from loadtests.bench.report import ratios, write_json, write_markdown, write_plots
from loadtests.bench.runner import ARMS, ArmResult, BenchConfig, TritonTarget, run_bench
from loadtests.workload import Workload, WorkloadConfig

log = logging.getLogger("loadtests.bench")

TINY = {
    "start_rate": 40.0,
    "growth": 2.0,
    "max_steps": 2,
    "refine": 0,
    "step_s": 0.6,
    "warmup_s": 0.3,
    "fixed_rate": 40.0,
    "fixed_s": 0.6,
    "paired_rounds": 1,
    "settle_s": 0.1,
    "recover_s": 0.2,
}


def _parser() -> argparse.ArgumentParser:
    defaults = BenchConfig()
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--arms", default=",".join(defaults.arms), help=f"comma-separated, of: {', '.join(ARMS)}")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (2 short steps per arm)")
    p.add_argument("--candidates", type=int, default=50, help="candidates per bid (fixed)")
    p.add_argument("--requests", type=int, default=512, help="distinct requests, cycled")
    p.add_argument("--p99-bound-ms", type=float, default=defaults.p99_bound_ms)
    p.add_argument("--start-rate", type=float, default=defaults.start_rate)
    p.add_argument("--growth", type=float, default=defaults.growth)
    p.add_argument("--max-steps", type=int, default=defaults.max_steps)
    p.add_argument("--refine", type=int, default=defaults.refine)
    p.add_argument("--step-s", type=float, default=defaults.step_s)
    p.add_argument("--fixed-rate", type=float, default=defaults.fixed_rate)
    p.add_argument("--fixed-s", type=float, default=defaults.fixed_s)
    p.add_argument(
        "--paired-rounds",
        type=int,
        default=defaults.paired_rounds,
        help="rounds of direct vs gateway alternating at the fixed rate (0: none)",
    )
    p.add_argument("--kserve-python", type=Path, default=REPO_ROOT / ".venv-kserve" / "bin" / "python")
    p.add_argument("--triton-grpc-url", help="use this running Triton instead of starting one")
    p.add_argument("--triton-pid", type=int, help="its pid (for its CPU time); with --triton-grpc-url")
    p.add_argument("--triton-http-url", help="its HTTP/REST host:port (the gateway arms' default protocol)")
    p.add_argument(
        "--primary-arm",
        default=defaults.primary_arm,
        help="the gateway arm of the headline, targets and paired rounds (the default transport's)",
    )
    p.add_argument("--results", type=Path, default=REPO_ROOT / "loadtests" / "results" / "bench.json")
    p.add_argument("--report", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    p.add_argument("--img-dir", type=Path, default=REPO_ROOT / "docs" / "img")
    return p


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(python: Path, package: str) -> str:
    try:
        return subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def _check_answers(arms: list[ArmResult]) -> dict[str, bool]:
    """Arms doing the same work must pick the same winners at the same prices for the same requests."""
    reference = next((a for a in arms if a.name == "gateway" and a.answers), None)
    if reference is None:
        return {}
    verdict = {a.name: a.answers == reference.answers for a in arms if a.answers and a is not reference}
    for name, same in verdict.items():
        if not same:
            log.warning("%s answered differently from the gateway for the same requests", name)
    return verdict


def _previous_results(path: Path) -> dict[str, Any] | None:
    """The full (not --tiny) results this run is about to replace, if any and readable."""
    try:
        document: dict[str, Any] = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return None if document.get("meta", {}).get("tiny") else document


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if (args.triton_grpc_url is None) != (args.triton_pid is None):
        _parser().error("--triton-grpc-url and --triton-pid go together")
    log_dir = Path(tempfile.mkdtemp(prefix="bidgw-bench-"))
    config = BenchConfig(
        arms=tuple(a.strip() for a in args.arms.split(",") if a.strip()),
        p99_bound_ms=args.p99_bound_ms,
        start_rate=args.start_rate,
        growth=args.growth,
        max_steps=args.max_steps,
        refine=args.refine,
        step_s=args.step_s,
        fixed_rate=args.fixed_rate,
        fixed_s=args.fixed_s,
        paired_rounds=args.paired_rounds,
        kserve_python=args.kserve_python,
        log_dir=log_dir,
        primary_arm=args.primary_arm,
    )
    if args.tiny:
        config = replace(config, **TINY)  # type: ignore[arg-type]
    workload_config = WorkloadConfig.fixed(args.candidates)
    workload = Workload.load(workload_config)
    requests = workload.requests(args.requests if not args.tiny else 64, seed=2024)
    bodies = [orjson.dumps(r) for r in requests]
    triton = (
        TritonTarget(args.triton_grpc_url, args.triton_pid, http_url=args.triton_http_url)
        if args.triton_grpc_url
        else None
    )
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    began = time.monotonic()
    arms = run_bench(requests, bodies, config, triton)
    meta: dict[str, Any] = {
        "started_at": started_at,
        "wall_s": round(time.monotonic() - began, 1),
        "tiny": args.tiny,
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "triton": "2.51 (nvidia-pytriton wheel)",
        "kserve": _version(config.kserve_python, "kserve") if config.kserve_python.exists() else "n/a",
        "workload": (
            f"{args.candidates} candidates per bid, {len(requests)} distinct requests "
            f"(mean body {sum(map(len, bodies)) / len(bodies) / 1024:.1f} KiB): Zipf users with "
            f"{workload_config.unknown_user_share:.0%} unknown and {workload_config.anonymous_share:.0%} "
            "anonymous, bid types cpm/cpc/cpa 50/35/15, 1-3 imps, tmax 80/120/250 ms"
        ),
        "answers_match_gateway": _check_answers(arms),
    }
    log.info("server and Triton logs of this run: %s", log_dir)
    previous = _previous_results(args.results)
    document = write_json(args.results, arms, config, meta)
    plots = write_plots(args.img_dir, arms, config)
    write_markdown(args.report, document, arms, config, plots, args.results, previous)
    sys.stdout.write(orjson.dumps(ratios(arms), option=orjson.OPT_INDENT_2).decode() + "\n")
    log.info("wrote %s, %s and %s", args.results, args.report, ", ".join(str(p) for p in plots.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
