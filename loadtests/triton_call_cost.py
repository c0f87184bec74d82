"""CPU per Triton call, both sides, for each transport: the gRPC scorer vs the HTTP/binary-tensor scorer.

    python -m loadtests.triton_call_cost                      # starts a local Triton (LocalTriton)
    python -m loadtests.triton_call_cost --calls 4000 --rounds 3 --rows 50 --concurrency 8

One event loop (uvloop, as the gateway), `concurrency` callers each awaiting `score()` back to back, 50
rows per call against the committed ranker (v1). Per round and transport:
  * client CPU per call: `time.process_time()` of this process over the calls (every thread: gRPC's
    poller thread is part of what the gRPC transport costs);
  * Triton CPU per call: utime+stime of every process in the tritonserver process group (the server and
    its python-backend stubs), read from /proc/<pid>/stat before and after;
  * calls/s (wall clock) and errors.
A third arm, `floor`, is what no Python client can undercut on this host: one blocking socket, one caller,
sending the same prebuilt HTTP request bytes and reading the answer (Content-Length framing, no parsing
of the body): the kernel's loopback send and receive plus a minimum of Python. The HTTP scorer's distance
to it is its own Python work and the event loop's.
Rounds alternate the transports so drift on a shared host hits both alike; the table shows medians and
the range. Results go to loadtests/results/triton_call_cost.json. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import orjson
import uvloop

from gateway.config import REPO_ROOT
from gateway.core import feature_spec
from gateway.core.ports import Scores
from gateway.errors import ScoringError
from gateway.local_triton import LocalTriton, free_ports
from gateway.scoring.triton import TritonScorer
from gateway.scoring.triton_http import TritonHttpScorer

RESULTS = REPO_ROOT / "loadtests" / "results" / "triton_call_cost.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Scorer(Protocol):
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores: ...


@dataclass(frozen=True, slots=True)
class Round:
    transport: str
    calls: int
    errors: int
    wall_s: float
    client_cpu_us_per_call: float
    triton_cpu_us_per_call: float
    calls_per_s: float


def random_rows(n: int, seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    cat = (rng.random((n, len(feature_spec.BUCKETS))) * feature_spec.BUCKETS).astype(np.int64)
    dense = rng.random((n, len(feature_spec.DENSE_FIELDS)), dtype=np.float32)
    return cat, dense


def process_group_cpu_s(pgid: int) -> float:
    """utime+stime (seconds) of every live process in the group: tritonserver and its backend stubs."""
    total_ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited between listing and reading
        # Fields after the command name, which is in parentheses and may itself contain spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # pgrp is field 5 of stat; fields[0] is field 3 (state)
            total_ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total_ticks / CLOCK_TICKS


async def drive(scorer: Scorer, rows: int, calls: int, concurrency: int) -> tuple[int, float]:
    """`calls` score() calls over `concurrency` callers; returns (errors, wall seconds)."""
    batches = [random_rows(rows, seed) for seed in range(16)]
    remaining = calls
    errors = 0

    async def caller(offset: int) -> None:
        nonlocal remaining, errors
        i = offset
        while remaining > 0:
            remaining -= 1
            cat, dense = batches[i % len(batches)]
            i += 1
            try:
                await scorer.score(cat, dense, time.monotonic() + 1.0)
            except ScoringError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(concurrency)))
    return errors, time.perf_counter() - started


async def measure(name: str, make: Callable[[], Scorer], triton_pgid: int, args: argparse.Namespace) -> Round:
    scorer = make()
    await scorer.start()
    try:
        await drive(scorer, args.rows, args.warmup, args.concurrency)
        cpu_before = time.process_time()
        triton_before = process_group_cpu_s(triton_pgid)
        errors, wall_s = await drive(scorer, args.rows, args.calls, args.concurrency)
        client_cpu = time.process_time() - cpu_before
        triton_cpu = process_group_cpu_s(triton_pgid) - triton_before
    finally:
        await scorer.aclose()
    return Round(
        transport=name,
        calls=args.calls,
        errors=errors,
        wall_s=round(wall_s, 3),
        client_cpu_us_per_call=round(client_cpu / args.calls * 1e6, 1),
        triton_cpu_us_per_call=round(triton_cpu / args.calls * 1e6, 1),
        calls_per_s=round(args.calls / wall_s, 1),
    )


def raw_request(host_port: str, cat: npt.NDArray[np.int64], dense: npt.NDArray[np.float32]) -> bytes:
    """The HTTP scorer's request, built once: KServe v2 JSON header plus the binary tensors."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": feature_spec.INPUT_CAT,
                    "shape": list(cat.shape),
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": cat.nbytes},
                },
                {
                    "name": feature_spec.INPUT_DENSE,
                    "shape": list(dense.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": dense.nbytes},
                },
            ],
            "outputs": [
                {"name": name, "parameters": {"binary_data": True}}
                for name in (feature_spec.OUTPUT_PCTR, feature_spec.OUTPUT_PCVR)
            ],
            "parameters": {"timeout": 1_000_000},
        }
    )
    head = (
        f"POST /v2/models/{feature_spec.MODEL_NAME}/versions/1/infer HTTP/1.1\r\nHost: {host_port}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(header) + cat.nbytes + dense.nbytes}\r\n\r\n"
    )
    return head.encode() + header + cat.tobytes() + dense.tobytes()


_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


def floor_round(host_port: str, triton_pgid: int, args: argparse.Namespace) -> Round:
    """One blocking socket, one caller, the same request bytes each time: the host's floor per call."""
    host, _, port = host_port.rpartition(":")
    message = raw_request(host_port, *random_rows(args.rows, 0))
    errors = 0
    with socket.create_connection((host, int(port)), timeout=5.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def call() -> bool:
            sock.sendall(message)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            match = _CONTENT_LENGTH.search(head)
            if match is None:
                return False
            missing = int(match.group(1)) - len(body)
            while missing > 0:
                missing -= len(sock.recv(65536))
            return head.startswith(b"HTTP/1.1 200")

        for _ in range(args.warmup):
            call()
        cpu_before = time.process_time()
        triton_before = process_group_cpu_s(triton_pgid)
        started = time.perf_counter()
        for _ in range(args.calls):
            errors += not call()
        wall_s = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_before
        triton_cpu = process_group_cpu_s(triton_pgid) - triton_before
    return Round(
        transport="floor",
        calls=args.calls,
        errors=errors,
        wall_s=round(wall_s, 3),
        client_cpu_us_per_call=round(client_cpu / args.calls * 1e6, 1),
        triton_cpu_us_per_call=round(triton_cpu / args.calls * 1e6, 1),
        calls_per_s=round(args.calls / wall_s, 1),
    )


def summary(rounds: list[Round]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.transport for r in rounds):
        mine = [r for r in rounds if r.transport == name]
        for metric in ("client_cpu_us_per_call", "triton_cpu_us_per_call", "calls_per_s"):
            values = [float(getattr(r, metric)) for r in mine]
            out.setdefault(name, {})[f"{metric}_median"] = round(statistics.median(values), 1)
            out[name][f"{metric}_min"] = min(values)
            out[name][f"{metric}_max"] = max(values)
    return out


async def run(triton: LocalTriton, args: argparse.Namespace) -> dict[str, object]:
    pgid = triton.pid  # LocalTriton starts the server as the leader of its own process group
    assert pgid is not None
    transports: dict[str, Callable[[], Scorer]] = {
        "grpc": lambda: TritonScorer(triton.grpc_url),
        "http": lambda: TritonHttpScorer(triton.http_url, max_connections=args.concurrency),
    }
    rounds: list[Round] = []
    http_address = triton.http_url.removeprefix("http://")
    for _ in range(args.rounds):
        for name, make in transports.items():
            rounds.append(await measure(name, make, pgid, args))
        rounds.append(floor_round(http_address, pgid, args))
    return {
        "what": "CPU per Triton call (client process and tritonserver process group), per transport",
        "command": "python -m loadtests.triton_call_cost "
        f"--calls {args.calls} --rounds {args.rounds} --rows {args.rows} --concurrency {args.concurrency}",
        "model": f"{feature_spec.MODEL_NAME} v1 (CPU config, python backend + onnxruntime)",
        "transports": {
            "grpc": "gateway.scoring.triton.TritonScorer (tritonclient.grpc.aio)",
            "http": "gateway.scoring.triton_http.TritonHttpScorer (asyncio.Protocol + httptools, "
            "binary tensors, keep-alive)",
            "floor": "one blocking socket, one caller, the same HTTP request bytes (no scorer)",
        },
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "loop": "uvloop"},
        "summary": summary(rounds),
        "rounds": [asdict(r) for r in rounds],
    }


def table(result: dict[str, object]) -> str:
    summary_ = result["summary"]
    assert isinstance(summary_, dict)
    lines = [
        f"{'transport':<10}{'client us/call':>24}{'triton us/call':>24}{'calls/s':>22}",
    ]
    for name, s in summary_.items():
        cells = [
            f"{s[f'{m}_median']:.1f} ({s[f'{m}_min']:.0f}-{s[f'{m}_max']:.0f})"
            for m in ("client_cpu_us_per_call", "triton_cpu_us_per_call", "calls_per_s")
        ]
        lines.append(f"{name:<10}{cells[0]:>24}{cells[1]:>24}{cells[2]:>22}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--calls", type=int, default=4000, help="measured calls per round and transport")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    # Started from the main thread, which outlives it (LocalTriton's parent-death signal follows the
    # thread that started the server).
    with LocalTriton(free_ports(), startup_timeout_s=180.0) as triton:
        result = uvloop.run(run(triton, args))
    print(table(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
