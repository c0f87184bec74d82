"""Gateway vs direct Triton, side by side in one run, at a fixed concurrency (closed loop).

    python -m loadtests.side_by_side --seconds 10 --concurrency 8 --candidates 50

Starts one local Triton and one gateway process (`python -m gateway serve`, 1 worker) on free loopback
ports, builds bid requests from the committed snapshots, and measures for each system: bids/s, p50/p99
latency, and CPU-microseconds per bid of every process involved (read from /proc: the gateway, Triton with
its python-backend stubs, and this load generator). The direct arm sends the very rows the gateway would
assemble for the same requests, one Triton call per bid: the ceiling the gateway is measured against.
Loops are bounded by --seconds and talk to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as tritonclient

from gateway.core import feature_spec, features
from gateway.core.ports import AdKeys
from gateway.local_triton import REPO_ROOT, LocalTriton, free_port, free_ports
from gateway.openrtb import BidRequest
from gateway.stores.embedded import EmbeddedFeatureStore
from tests.integration.bid_requests import SNAPSHOTS, snapshot

RESULTS = REPO_ROOT / "loadtests" / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and every descendant (Triton's stubs are its children)."""
    total = 0.0
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(proc.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(proc.name))
    stack = [pid]
    while stack:
        current = stack.pop()
        if current in stats:
            total += (int(stats[current][11]) + int(stats[current][12])) / CLOCK_TICKS
        stack.extend(children.get(current, []))
    return total


def make_requests(count: int, candidates: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    users, ads, publishers = snapshot("users"), snapshot("ads"), snapshot("publishers")
    requests = []
    for n in range(count):
        user, pub = rng.choice(users), rng.choice(publishers)
        placement = rng.choice(pub["placements"])
        channel = (
            {"app": {"bundle": pub["bundle"], "cat": [pub["cat"]]}}
            if pub["kind"] == "app"
            else {"site": {"domain": pub["domain"], "cat": [pub["cat"]]}}
        )
        chosen = rng.sample(ads, candidates)
        requests.append(
            {
                "id": f"bench-{n}",
                "tmax": 100,
                "imp": [
                    {
                        "id": "1",
                        "tagid": placement["tagid"],
                        "bidfloor": 0.05,
                        "banner": {"w": placement["w"], "h": placement["h"], "pos": placement["pos"]},
                    }
                ],
                **channel,
                "device": {
                    "devicetype": user["devicetype"],
                    "os": user["os"],
                    "geo": {"country": user["country"]},
                },
                "user": {"id": user["id"]},
                "ext": {
                    "candidates": [
                        {
                            "id": ad["id"],
                            "campaign_id": ad["campaign_id"],
                            "advertiser": ad["advertiser"],
                            "bid_type": rng.choice(["cpm", "cpc", "cpa"]),
                            "bid": round(rng.uniform(0.5, 5.0), 2),
                            "cat": [ad["cat"]],
                        }
                        for ad in chosen
                    ]
                },
            }
        )
    return requests


async def assembled_rows(
    requests: list[dict[str, Any]],
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """The rows the gateway would send for each request, built with the gateway's own feature code."""
    import msgspec  # noqa: PLC0415

    store = EmbeddedFeatureStore.load(SNAPSHOTS)
    hour = time.gmtime().tm_hour
    rows = []
    for raw in requests:
        request = msgspec.convert(raw, BidRequest)
        cands = request.ext.candidates if request.ext else []
        user = await store.user_features(features.user_key(request))
        ads = await store.ad_features(
            AdKeys(
                [c.id for c in cands],
                [c.campaign_id for c in cands],
                [c.advertiser for c in cands],
                [c.cat[0] if c.cat else "" for c in cands],
            )
        )
        context = features.context_from_request(request, hour)
        rows.append(features.assemble(context, user, ads, np.zeros(len(cands), dtype=np.intp)))
    return rows


@dataclass
class ArmResult:
    name: str
    bids: int
    errors: int
    seconds: float
    bids_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_bid: dict[str, float]


async def closed_loop(
    name: str,
    send: Callable[[int], Awaitable[bool]],
    concurrency: int,
    seconds: float,
    processes: dict[str, int],
) -> ArmResult:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal errors
        i = offset
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            ok = await send(i)
            latencies.append(time.perf_counter() - started)
            errors += not ok
            i += concurrency

    cpu_before = {role: process_tree_cpu_s(pid) for role, pid in processes.items()}
    started = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.monotonic() - started
    cpu = {role: process_tree_cpu_s(pid) - cpu_before[role] for role, pid in processes.items()}
    bids = len(latencies)
    lat = np.array(latencies) * 1000
    return ArmResult(
        name=name,
        bids=bids,
        errors=errors,
        seconds=round(elapsed, 2),
        bids_per_s=round(bids / elapsed, 1),
        p50_ms=round(float(np.percentile(lat, 50)), 2),
        p99_ms=round(float(np.percentile(lat, 99)), 2),
        cpu_us_per_bid={role: round(value / bids * 1e6, 1) for role, value in cpu.items()},
    )


async def run(args: argparse.Namespace) -> list[ArmResult]:
    requests = make_requests(256, args.candidates, seed=1)
    bodies = [json.dumps(r).encode() for r in requests]
    rows = await assembled_rows(requests)
    results = []
    with LocalTriton(free_ports()) as triton:
        port = free_port()
        env = {
            **os.environ,
            "BIDGW_TRITON_URL": triton.grpc_url,
            "BIDGW_PORT": str(port),
            "BIDGW_WORKERS": "1",
            "BIDGW_LOG_LEVEL": "warning",
        }
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env, cwd=REPO_ROOT)
        try:
            async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
                for _ in range(300):
                    try:
                        async with http.get("/readyz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
                me = os.getpid()
                client = tritonclient.InferenceServerClient(triton.grpc_url)

                async def direct(i: int) -> bool:
                    cat, dense = rows[i % len(rows)]
                    inputs = [
                        tritonclient.InferInput("cat_ids", list(cat.shape), "INT64"),
                        tritonclient.InferInput("dense", list(dense.shape), "FP32"),
                    ]
                    inputs[0].set_data_from_numpy(cat)
                    inputs[1].set_data_from_numpy(dense)
                    try:
                        await client.infer(feature_spec.MODEL_NAME, inputs, model_version="1")
                    except Exception:  # noqa: BLE001 - a failed bid is counted, whatever the cause
                        return False
                    return True

                async def via_gateway(i: int) -> bool:
                    body = bodies[i % len(bodies)]
                    async with http.post(
                        "/v1/bid", data=body, headers={"content-type": "application/json"}
                    ) as r:
                        await r.read()
                        return r.status == 200

                for _ in range(2):  # warm both paths, then measure
                    await closed_loop("warm", direct, args.concurrency, 1.0, {})
                    await closed_loop("warm", via_gateway, args.concurrency, 1.0, {})
                procs_direct = {"triton": triton.pid or 0, "loadgen": me}
                procs_gateway = {"gateway": gateway.pid, "triton": triton.pid or 0, "loadgen": me}
                results.append(
                    await closed_loop("direct_triton", direct, args.concurrency, args.seconds, procs_direct)
                )
                results.append(
                    await closed_loop("gateway", via_gateway, args.concurrency, args.seconds, procs_gateway)
                )
                await client.close()
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=50)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "results": [asdict(r) for r in results]}
    (RESULTS / "side_by_side.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
