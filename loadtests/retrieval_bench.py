"""Retrieval cost: `CatalogRetriever.retrieve` CPU per imp at 10k, 100k and 1M creatives, index build time
and memory per creative; writes loadtests/results/retrieval.json and the "Retrieval" section of
docs/benchmarks.md (also loadtests/results/retrieval.md).

    python -m loadtests.retrieval_bench                  # make bench-retrieval
    python -m loadtests.retrieval_bench --sizes 10000 100000 --requests 500

Synthetic catalogs of 10 creatives per campaign with a realistic spread of targeting: a third of campaigns
geo-targeted, some by device, OS, channel, hour, publisher category, site/app allow- and block-lists, a few
percent deal-only with buyer seats; banner (seven sizes), video, native and audio creatives. A mix of four
requests is replayed: a site banner with bcat/badv, an app with two banner imps and battr, an instream
video, and a private-auction banner with deals. CPU is `time.process_time` over the whole run divided by
imps; p50/p99 are per call (perf_counter). Memory is the RSS growth while the index is built, over its
creatives (the catalog's own structs are counted apart). One core, one thread, nothing else running in the
process; on a shared machine treat the numbers as upper bounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np

from gateway.catalog.bitset import first_positions, from_positions
from gateway.catalog.index import build_index
from gateway.catalog.loader import Catalog
from gateway.catalog.model import (
    AudioCreative,
    BannerCreative,
    BannerSize,
    Campaign,
    CatalogHeader,
    Creative,
    NativeCreative,
    Targeting,
    VideoCreative,
)
from gateway.catalog.reloader import CatalogHolder
from gateway.catalog.retrieval import CatalogRetriever
from gateway.config import REPO_ROOT
from gateway.openrtb import BidRequest
from loadtests.bench.report import RETRIEVAL_SECTION, write_kept_section

RESULTS: Final = REPO_ROOT / "loadtests" / "results" / "retrieval.json"
TABLE: Final = REPO_ROOT / "loadtests" / "results" / "retrieval.md"
REPORT: Final = REPO_ROOT / "docs" / "benchmarks.md"
NOW: Final = 1_718_712_000.0  # 2024-06-18T12:00:00Z

CREATIVES_PER_CAMPAIGN: Final = 10
COUNTRIES: Final = [f"C{n:02d}" for n in range(20)]
SIZES: Final = [(300, 250), (728, 90), (320, 50), (300, 600), (160, 600), (970, 250), (320, 480)]
TIER1: Final = [f"IAB{n}" for n in range(1, 27)]
URL: Final = "https://cdn.example.com/x"
SITES: Final = [f"site{k}.example" for k in range(2_000)]
APPS: Final = [f"com.app{k}" for k in range(2_000)]
DEALS: Final = [f"deal{k}" for k in range(50)]
SEATS: Final = [f"seat{k}" for k in range(20)]


def synthetic_catalog(creatives: int, seed: int = 7) -> Catalog:
    rng = random.Random(seed)
    campaigns = tuple(_campaign(rng, n) for n in range(creatives // CREATIVES_PER_CAMPAIGN))
    return Catalog(header=CatalogHeader(catalog_version=f"bench-{creatives}"), campaigns=campaigns, digest="")


def _campaign(rng: random.Random, n: int) -> Campaign:
    return Campaign(
        id=f"c{n}",
        advertiser=f"adv{rng.randrange(5_000)}.example",
        cat=[f"{rng.choice(TIER1)}-{rng.randrange(1, 10)}"],
        bid_type=rng.choice(("cpm", "cpm", "cpc", "cpa")),
        bid=round(rng.uniform(0.2, 5.0), 2),
        seat=rng.choice(SEATS) if rng.random() < 0.3 else None,
        targeting=_targeting(rng),
        creatives=[_creative(rng, f"c{n}-{k}") for k in range(CREATIVES_PER_CAMPAIGN)],
    )


def _targeting(rng: random.Random) -> Targeting:
    def some(p: float, values: Sequence[Any], k: int = 2) -> list[Any] | None:
        return rng.sample(list(values), rng.randint(1, k)) if rng.random() < p else None

    start = rng.randrange(24)
    return Targeting(
        countries=some(0.35, COUNTRIES, 3),
        device_types=some(0.2, [1, 2, 4, 5], 2),
        os=some(0.2, ["ios", "android"], 1),
        site_domains=some(0.05, SITES, 5),
        site_domains_blocked=some(0.1, SITES, 20),
        app_bundles=some(0.05, APPS, 5),
        publisher_categories=some(0.2, TIER1, 3),
        hours_utc=[(start + h) % 24 for h in range(12)] if rng.random() < 0.1 else None,
        channels=some(0.3, ["site", "app", "dooh"], 2),
        deal_ids=some(0.03, DEALS, 2),
    )


def _creative(rng: random.Random, cid: str) -> Creative:
    kind = rng.random()
    common: dict[str, Any] = {
        "id": cid,
        "click_url": URL,
        "attr": rng.sample(range(1, 18), 2) if rng.random() < 0.1 else [],
        "prior_ctr": round(rng.uniform(0.001, 0.08), 4),
        "prior_cvr": round(rng.uniform(0.01, 0.2), 4),
    }
    if kind < 0.6:
        sizes = [BannerSize(w=w, h=h) for w, h in rng.sample(SIZES, rng.randint(1, 2))]
        return Creative(**common, banner=BannerCreative(sizes=sizes, image_url=URL))
    if kind < 0.8:
        return Creative(**common, video=VideoCreative(media_url=URL, duration_s=rng.choice((6, 15, 30, 60))))
    if kind < 0.9:
        return Creative(**common, native=NativeCreative(title="t", sponsored_by="s"))
    return Creative(**common, audio=AudioCreative(media_url=URL, duration_s=rng.choice((15, 30))))


def request_mix(rng: random.Random, count: int) -> list[BidRequest]:
    """`count` requests cycling through the four shapes, with random inventory values."""
    made: list[dict[str, Any]] = []
    for n in range(count):
        device = {"devicetype": rng.choice((1, 2, 4)), "os": rng.choice(("iOS", "Android")),
                  "geo": {"country": rng.choice(COUNTRIES)}}  # fmt: skip
        site = {"domain": f"www.site{rng.randrange(2_000)}.example", "cat": [f"{rng.choice(TIER1)}-2"]}
        shape = n % 4
        if shape == 0:
            body = {"imp": [{"id": "1", "banner": {"w": 300, "h": 250}}], "site": site,
                    "bcat": rng.sample(TIER1, 2), "badv": [f"adv{rng.randrange(5_000)}.example"]}  # fmt: skip
        elif shape == 1:
            body = {
                "imp": [{"id": "1", "banner": {"w": 320, "h": 50, "battr": [1, 3]}},
                        {"id": "2", "banner": {"w": 728, "h": 90, "format": [{"w": 970, "h": 250}]}}],
                "app": {"bundle": f"com.app{rng.randrange(2_000)}", "cat": [rng.choice(TIER1)]},
            }  # fmt: skip
        elif shape == 2:
            video = {"minduration": 5, "maxduration": 30, "mimes": ["video/mp4"], "protocols": [2, 3, 7]}
            body = {"imp": [{"id": "1", "video": video}], "site": site}
        else:
            deals = [{"id": rng.choice(DEALS), "wseat": rng.sample(SEATS, 5)} for _ in "ab"]
            body = {"imp": [{"id": "1", "banner": {"w": 300, "h": 250},
                             "pmp": {"private_auction": 1, "deals": deals}}], "site": site}  # fmt: skip
        made.append({"id": str(n), "device": device, **body})
    return [msgspec.convert(body, BidRequest) for body in made]


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def measure(size: int, requests: int, top_k: int) -> dict[str, Any]:
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    catalog = synthetic_catalog(size)
    generated = time.perf_counter() - started
    after_catalog = rss_bytes()
    started = time.process_time()
    index = build_index(catalog)
    build_s = time.process_time() - started
    gc.collect()
    after_index = rss_bytes()
    retriever = CatalogRetriever(CatalogHolder(index), seat="seat0", top_k=top_k)
    mix = request_mix(random.Random(size), requests)
    for request in mix[:50]:  # warm-up: first-touch page faults, the flight memo
        retriever.retrieve(request, NOW)
    shapes = ("site_banner", "app_two_banners", "video", "private_deal")
    per_call: dict[str, list[float]] = {shape: [] for shape in shapes}
    matches: dict[str, list[int]] = {shape: [] for shape in shapes}
    imps = 0
    cpu_started = time.process_time()
    for n, request in enumerate(mix):
        call_started = time.perf_counter()
        got = retriever.retrieve(request, NOW)
        per_call[shapes[n % 4]].append(time.perf_counter() - call_started)
        matches[shapes[n % 4]].append(sum(got.per_imp))
        imps += len(request.imp)
    cpu_s = time.process_time() - cpu_started
    return {
        "creatives": index.size,
        "campaigns": len(catalog.campaigns),
        "generate_s": round(generated, 2),
        "index_build_cpu_s": round(build_s, 2),
        "index_bytes_per_creative": round((after_index - after_catalog) / index.size, 1),
        "catalog_bytes_per_creative": round((after_catalog - before) / index.size, 1),
        "requests": len(mix),
        "imps": imps,
        "cpu_us_per_imp": round(cpu_s / imps * 1e6, 1),
        "cpu_us_per_request": round(cpu_s / len(mix) * 1e6, 1),
        "per_shape": {
            shape: {
                "p50_us": round(float(np.percentile(per_call[shape], 50)) * 1e6, 1),
                "p99_us": round(float(np.percentile(per_call[shape], 99)) * 1e6, 1),
                "mean_matches": round(float(np.mean(matches[shape])), 1),
            }
            for shape in shapes
        },
    }


def representation(size: int = 100_000, dimensions: int = 10, rounds: int = 2_000) -> dict[str, float]:
    """The choice behind gateway.catalog.bitset: intersect `dimensions` masks of `size` creatives and read
    the first 200 survivors, as numpy booleans vs packed uint64 words (us per intersection)."""
    rng = np.random.default_rng(3)
    flags = [rng.random(size) < 0.8 for _ in range(dimensions)]
    packed = [from_positions(np.flatnonzero(f), size) for f in flags]

    def timed(step: Any) -> float:
        started = time.process_time()
        for _ in range(rounds):
            step()
        return round((time.process_time() - started) / rounds * 1e6, 1)

    def booleans() -> None:
        result = flags[0].copy()
        for f in flags[1:]:
            np.logical_and(result, f, out=result)
        np.flatnonzero(result)[:200]

    def words() -> None:
        result = packed[0].copy()
        for p in packed[1:]:
            np.bitwise_and(result, p, out=result)
        first_positions(result, 200)

    return {
        "creatives": size,
        "dimensions": dimensions,
        "bool_us": timed(booleans),
        "packed_us": timed(words),
    }


def markdown(results: dict[str, Any]) -> str:
    rows = [
        "| creatives | index build (CPU s) | index bytes / creative | CPU us / imp | "
        "site banner p50 / p99 us | app 2 imps p50 / p99 us | video p50 / p99 us | deal p50 / p99 us |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        shapes = run["per_shape"]
        cells = " | ".join(
            f"{shapes[s]['p50_us']} / {shapes[s]['p99_us']}"
            for s in ("site_banner", "app_two_banners", "video", "private_deal")
        )
        rows.append(
            f"| {run['creatives']:,} | {run['index_build_cpu_s']} | {run['index_bytes_per_creative']} | "
            f"{run['cpu_us_per_imp']} | {cells} |"
        )
    rep = results["representation"]
    return "\n".join(
        [
            "## Retrieval",
            "",
            f"`make bench-retrieval` ({results['requests_per_size']} requests per size, top K "
            f"{results['top_k']}; target: <= 100 us CPU per imp at 100k creatives). "
            "Catalogs and requests as described in loadtests/retrieval_bench.py.",
            "",
            *rows,
            "",
            f"Representation ({rep['dimensions']} masks of {rep['creatives']:,} creatives intersected, first "
            f"200 survivors read): numpy booleans {rep['bool_us']} us, packed uint64 bitsets "
            f"{rep['packed_us']} us.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.retrieval_bench", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    runs = []
    for size in args.sizes:
        runs.append(measure(size, args.requests, args.top_k))
        print(json.dumps(runs[-1]), flush=True)
    results = {
        "top_k": args.top_k,
        "requests_per_size": args.requests,
        "runs": runs,
        "representation": representation(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    section = markdown(results)
    TABLE.write_text(section)
    write_kept_section(args.report, RETRIEVAL_SECTION, section)
    print(section)


if __name__ == "__main__":
    main()
