"""`python -m loadtests.profile` (`make profile`): where the gateway's CPU goes, per bid, under load.

Starts a local Triton (the committed model, CPU configs) and the gateway (`python -m gateway serve`, one
worker, embedded store), offers a steady open-loop rate of the benchmark's 50-candidate requests, and
records the gateway with py-spy twice under the same load: once as a flamegraph (SVG), once as collapsed
stacks, from which it derives a CPU table per stage. Writes, under loadtests/results/:

  profile.svg   the flamegraph (open it in a browser: frames are clickable)
  profile.md    the per-stage table, the top frames by own time, and how the run was made
  profile.json  the same numbers, for tools

Stages are assigned per sample by the leaf-most frame that belongs to the gateway (decode, features, the
micro-batcher, the Triton client, the auction...); a stack with no gateway frame is assigned to the library
it is in (uvicorn/httptools: HTTP; asyncio/uvloop: the event loop). py-spy samples Python threads only:
gRPC's own C++ poller thread is not in the table, which is why the table's total is compared with the
process's CPU time read from /proc over the same window.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import uvloop

from gateway.local_triton import REPO_ROOT, LocalTriton, free_ports
from loadtests.bench.openloop import StepSamples, http_request_bytes, run_http_step
from loadtests.bench.processes import process_tree_cpu_s, start_gateway
from loadtests.workload import Workload, WorkloadConfig

log = logging.getLogger("loadtests.profile")

RESULTS: Final = REPO_ROOT / "loadtests" / "results"

# (stage, path fragments of its frames), most specific first. Gateway stages win over library ones.
GATEWAY_STAGES: Final = (
    ("decode", ("gateway/api/decode.py", "gateway/openrtb.py")),
    ("features", ("gateway/core/features.py", "gateway/core/request_columns.py",
                  "gateway/core/feature_spec")),
    ("stores", ("gateway/stores/",)),
    ("auction", ("gateway/core/auction.py", "gateway/core/eligibility.py", "gateway/core/pacing.py",
                 "gateway/core/currency.py")),
    ("scoring: micro-batcher", ("gateway/scoring/batcher.py",)),
    ("scoring: Triton client", ("gateway/scoring/triton", "gateway/scoring/fleet.py",
                                "gateway/scoring/breaker.py", "gateway/observability/triton_errors.py")),
    ("metrics and logs", ("gateway/observability/",)),
    ("pipeline (stage glue)", ("gateway/core/pipeline.py",)),
    ("endpoint (body, encode, send)", ("gateway/api/", "gateway/app.py")),
)  # fmt: skip
LIBRARY_STAGES: Final = (
    ("scoring: Triton client", ("tritonclient/", "/grpc/", "purgatory/")),
    ("metrics and logs", ("prometheus_client/", "logging/")),
    ("HTTP (uvicorn, httptools)", ("uvicorn/", "httptools/", "starlette/", "fastapi/", "h11/")),
    ("event loop", ("asyncio/", "uvloop/", "selectors.py")),
)
OTHER: Final = "other"


def stage_of(frames: Sequence[str]) -> str:
    """The stage of one sampled stack (root first, as py-spy writes it)."""
    for stages in (GATEWAY_STAGES, LIBRARY_STAGES):
        for frame in reversed(frames):
            for stage, fragments in stages:
                if any(fragment in frame for fragment in fragments):
                    return stage
    return OTHER


@dataclass(slots=True)
class StackProfile:
    """Collapsed stacks (py-spy --format raw): per stage and per leaf frame, in samples."""

    samples: int = 0
    per_stage: Counter[str] = field(default_factory=Counter)
    per_leaf: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, text: str) -> StackProfile:
        profile = cls()
        for line in text.splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            # The first "frame" is py-spy's thread label; the leaf is last.
            frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
            if not frames:
                continue
            profile.samples += count
            profile.per_stage[stage_of(frames)] += count
            profile.per_leaf[_short(frames[-1])] += count
        return profile


def _short(frame: str) -> str:
    """`func (/abs/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`: no machine paths in reports."""
    name, _, location = frame.partition(" (")
    for marker in ("site-packages/", "lib/python3", str(REPO_ROOT) + "/"):
        if marker in location:
            location = location.split(marker, 1)[1]
            if marker.startswith("lib/python3"):
                location = "stdlib " + location.split("/", 1)[-1]
    return f"{name} ({location}" if location else name


@dataclass(frozen=True, slots=True)
class ProfileRun:
    rate: float
    seconds: float
    sample_rate: int
    bids: int
    errors: int
    p50_ms: float
    p99_ms: float
    process_cpu_us_per_bid: float
    profile: StackProfile

    def us_per_bid(self, samples: int) -> float:
        """A stage's CPU per bid: its share of the samples times the process's measured CPU per bid.

        Not samples / rate: py-spy samples whoever holds the GIL, and on a shared box a thread that holds
        it while descheduled is sampled too, so raw sample time overstates CPU; the shares stand."""
        return samples / max(self.profile.samples, 1) * self.process_cpu_us_per_bid


def scrub_paths(text: str) -> str:
    """The report is committed: no path of the machine that made it (py-spy writes its command line and
    the profiled process's, with absolute paths, into the flamegraph)."""
    return text.replace(str(REPO_ROOT) + "/", "").replace(str(REPO_ROOT), ".")


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: `make install` (the bench extra) installs it")
    return found


@contextmanager
def _recording(pid: int, out: Path, fmt: str, seconds: float, sample_rate: int) -> Iterator[None]:
    command = [
        _py_spy(), "record", "--pid", str(pid), "--rate", str(sample_rate), "--duration", str(int(seconds)),
        "--format", fmt, "--output", str(out), "--threads", "--subprocesses",
        # The GIL holder: a Python process's CPU is the main thread's; nonblocking: no pause per sample.
        "--gil", "--nonblocking",
    ]  # fmt: skip
    spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        output, _ = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed ({spy.returncode}): {output.decode(errors='replace')[-2000:]}")


def _percentile_ms(latencies: list[float], q: float) -> float:
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000.0


@contextmanager
def _triton(url: str | None, protocol: str, log_dir: Path) -> Iterator[str]:
    """The Triton endpoint for the gateway's protocol: `url`, or a local Triton started here."""
    if url:
        yield url
        return
    with LocalTriton(free_ports(), log_to=log_dir / "tritonserver.log") as triton:
        yield triton.grpc_url if protocol == "grpc" else triton.http_address


def profile_gateway(args: argparse.Namespace, out_dir: Path) -> ProfileRun:
    workload = Workload.load(WorkloadConfig.fixed(args.candidates))
    bodies = [orjson.dumps(r) for r in workload.requests(512, seed=2024)]
    log_dir = Path(tempfile.mkdtemp(prefix="bidgw-profile-"))
    svg, raw = out_dir / "profile.svg", log_dir / "profile.txt"
    env = {"BIDGW_TRITON_PROTOCOL": args.protocol}
    with (
        _triton(args.triton_url, args.protocol, log_dir) as triton_url,
        start_gateway(triton_url, workers=1, log_dir=log_dir, extra_env=env) as server,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        payloads = [http_request_bytes(server.bid_path, body) for body in bodies]

        def load(seconds: float, seed: int) -> StepSamples:
            step = run_http_step(
                "127.0.0.1", server.port, payloads, rate=args.rate, duration_s=seconds, seed=seed
            )
            return runner.run(step)

        load(args.warmup, seed=1)
        log.info("recording the flamegraph (%s s at %s bids/s)", args.seconds, args.rate)
        with _recording(server.pid, svg, "flamegraph", args.seconds, args.sample_rate):
            load(args.seconds, seed=2)
        svg.write_text(scrub_paths(svg.read_text()))
        log.info("recording the stacks for the stage table")
        cpu_before = process_tree_cpu_s(server.pid)
        with _recording(server.pid, raw, "raw", args.seconds, args.sample_rate):
            samples = load(args.seconds, seed=3)
        cpu = process_tree_cpu_s(server.pid) - cpu_before
    bids = len(samples.latencies_s)
    return ProfileRun(
        rate=args.rate,
        seconds=args.seconds,
        sample_rate=args.sample_rate,
        bids=bids,
        errors=samples.errors,
        p50_ms=_percentile_ms(samples.latencies_s, 50),
        p99_ms=_percentile_ms(samples.latencies_s, 99),
        process_cpu_us_per_bid=cpu / max(bids, 1) * 1e6,
        profile=StackProfile.parse(raw.read_text()),
    )


def summary(run: ProfileRun, protocol: str) -> dict[str, Any]:
    profile = run.profile
    return {
        "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "protocol": protocol,
        "rate": run.rate,
        "seconds": run.seconds,
        "sample_rate_hz": run.sample_rate,
        "bids": run.bids,
        "errors": run.errors,
        "p50_ms": round(run.p50_ms, 2),
        "p99_ms": round(run.p99_ms, 2),
        "process_cpu_us_per_bid": round(run.process_cpu_us_per_bid, 1),
        "samples": profile.samples,
        "stages_us_per_bid": {
            stage: round(run.us_per_bid(count), 1) for stage, count in profile.per_stage.most_common()
        },
        "top_frames_us_per_bid": {
            frame: round(run.us_per_bid(count), 1) for frame, count in profile.per_leaf.most_common(10)
        },
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Gateway CPU profile",
        "",
        "Written by `make profile` (`python -m loadtests.profile`); do not edit by hand. Flamegraph:",
        "[profile.svg](profile.svg).",
        "",
        f"Run {result['started_at']}: one gateway worker (Triton protocol {result['protocol']}), "
        f"{result['rate']:.0f} bids/s open loop for {result['seconds']:.0f} s, 50 candidates per bid; "
        f"{result['bids']:,} bids, {result['errors']} errors, p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms. py-spy at {result['sample_rate_hz']} Hz on the gateway's Python "
        "threads.",
        "",
        f"Process CPU per bid (/proc, every thread): **{result['process_cpu_us_per_bid']} us**, split over "
        f"the stages by their share of {result['samples']:,} samples of the thread holding the GIL (native "
        "threads such as gRPC's poller are in the total, not in the samples). Per-bid CPU here is at the "
        "profiled rate, on a box shared with Triton and the load generator: compare runs, not machines.",
        "",
        "| stage | share of samples | CPU us per bid |",
        "| --- | ---: | ---: |",
    ]
    total = max(result["process_cpu_us_per_bid"], 1e-9)
    for stage, us in result["stages_us_per_bid"].items():
        lines.append(f"| {stage} | {us / total:.0%} | {us:.1f} |")
    lines += ["", "Top frames by own time (the leaf of each sampled stack):", "", "| frame | us per bid |",
              "| --- | ---: |"]  # fmt: skip
    for frame, us in result["top_frames_us_per_bid"].items():
        lines.append(f"| `{frame}` | {us:.1f} |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rate", type=float, default=400.0, help="offered bids/s (open loop)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each recording")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--sample-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--protocol", choices=("http", "grpc"), default="http", help="BIDGW_TRITON_PROTOCOL")
    p.add_argument(
        "--triton-url",
        help="profile against this running Triton (its HTTP host:port; gRPC with --protocol grpc)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    run = profile_gateway(args, args.out)
    result = summary(run, args.protocol)
    (args.out / "profile.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    (args.out / "profile.md").write_text(markdown(result))
    sys.stdout.write(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
