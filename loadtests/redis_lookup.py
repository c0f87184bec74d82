"""Warm Redis lookup latency: one bid's `RedisFeatureStore.lookup` at 50 candidates, 50 campaigns.

    python -m loadtests.redis_lookup                         # starts a throwaway redis-server
    python -m loadtests.redis_lookup --redis-url redis://127.0.0.1:6379/0
    python -m loadtests.redis_lookup --redis-url redis+cluster://127.0.0.1:7000

A known user and 50 snapshot ads of 50 distinct campaigns, every campaign configured (budget and cap), so
each lookup reads the user row and every campaign's state (spend, two hold buckets, the user's count);
ad rows and configs come from the worker's cache after the warm-up, as they do in steady state. Lookups
run one at a time on one event loop (uvloop, as the gateway), timed with perf_counter around the await:
the latency a bid pays, client CPU included. Seeding goes through the `seed-redis` command so the script
measures any version of the store the same way.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import uvloop
from redis.asyncio import Redis

from gateway.config import REPO_ROOT
from gateway.core.ports import AdKeys
from gateway.stores.redis_store import RedisFeatureStore

SNAPSHOTS = REPO_ROOT / "data" / "snapshots"


def _snapshot(name: str) -> list[dict[str, Any]]:
    with gzip.open(SNAPSHOTS / f"{name}.jsonl.gz", "rt") as lines:
        return [json.loads(line) for line in lines]


def candidates(count: int) -> list[dict[str, Any]]:
    """`count` snapshot ads, one per campaign."""
    chosen: dict[str, dict[str, Any]] = {}
    for ad in _snapshot("ads"):
        chosen.setdefault(ad["campaign_id"], ad)
        if len(chosen) == count:
            break
    return list(chosen.values())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def throwaway_redis() -> Iterator[str]:
    """A redis-server on a free loopback port, no persistence, removed afterwards."""
    port = _free_port()
    directory = tempfile.mkdtemp(prefix="bidgw-lookup-")
    server = shutil.which("redis-server") or "redis-server"
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", directory]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def seed(url: str, ads: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        specs = Path(directory) / "campaigns.jsonl"
        lines = [{"campaign_id": a["campaign_id"], "daily_budget_usd": 1000.0, "freq_cap": 5} for a in ads]
        specs.write_text("".join(json.dumps(line) + "\n" for line in lines))
        command = [
            sys.executable,
            "-m",
            "gateway",
            "seed-redis",
            "--redis-url",
            url,
            "--campaigns",
            str(specs),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=300)


async def measure(
    url: str, ads: list[dict[str, Any]], user: str, warmup: int, rounds: int
) -> npt.NDArray[np.float64]:
    store = RedisFeatureStore.connect(url, timeout_s=1.0)
    keys = AdKeys(
        ad_ids=[a["id"] for a in ads],
        campaign_ids=[a["campaign_id"] for a in ads],
        advertisers=[a["advertiser"] for a in ads],
        categories=[a["cat"] for a in ads],
    )
    samples = np.empty(rounds, dtype=np.float64)
    try:
        for _ in range(warmup):
            found = await store.lookup(user, keys, time.monotonic() + 1.0)
        if found.degraded or found.campaigns is None or not found.user.known:
            raise RuntimeError("the warm-up lookups did not read the seeded state")
        cpu_started = time.process_time()
        for i in range(rounds):
            started = time.perf_counter()
            await store.lookup(user, keys, time.monotonic() + 1.0)
            samples[i] = time.perf_counter() - started
        cpu_us = (time.process_time() - cpu_started) / rounds * 1e6
    finally:
        await store.aclose()
    print(f"client CPU per lookup {cpu_us:.0f} us; round-trip floor (PING) {await _ping_us(url):.0f} us p50")
    return samples * 1e6


async def _ping_us(url: str) -> float:
    """The machine's floor for one round trip from this process (loopback, scheduling): context for the
    lookup's numbers on a busy machine. PING on the first node named by the URL."""
    host, _, port = url.split("://", 1)[1].split(",", maxsplit=1)[0].split("/", maxsplit=1)[0].rpartition(":")
    client = Redis(host=host, port=int(port))
    times = []
    try:
        for _ in range(2000):
            started = time.perf_counter()
            await client.ping()
            times.append(time.perf_counter() - started)
    finally:
        await client.aclose()
    return float(np.median(times)) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", help="an existing Redis (it is seeded); default: start one")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10_000)
    args = parser.parse_args()
    ads = candidates(args.candidates)
    user = _snapshot("users")[0]["id"]

    def run(url: str) -> npt.NDArray[np.float64]:
        seed(url, ads)
        return uvloop.run(measure(url, ads, user, args.warmup, args.rounds))

    if args.redis_url:
        samples = run(args.redis_url)
    else:
        with throwaway_redis() as url:
            samples = run(url)
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    print(
        f"warm lookup, {len(ads)} candidates / {len({a['campaign_id'] for a in ads})} campaigns, "
        f"{args.rounds} lookups: p50 {p50:.0f} us, p90 {p90:.0f} us, p99 {p99:.0f} us, "
        f"mean {samples.mean():.0f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
