"""Model experiments proven against the synthetic world's ground truth, over the real stack.

Bids drawn from training/world.py go through a real gateway (uvicorn in a thread) on the real local
Triton (versions 1 and 2 of `ranker`) and a real Redis, with a 70/30 experiment and version 2 in shadow
on half the control arm's bids. Every won bid gets a win notice; clicks and conversions are drawn from
the generator's true probabilities for the (user, winning ad, placement, device, hour) actually served,
and sent as events. The test then reads the gateway's /metrics and checks:
  * the split (share of bids on the candidate arm) is within 2 points of 30 %, every user in one arm;
  * every bid says its version and arm, and the counters hold exactly what the responses predicted;
  * per version, observed clicks agree with the sum of the true pCTR over the same won impressions
    within binomial sampling error (sd = sqrt(sum p (1 - p))), so the live calibration ratio
    predicted / observed measures the model against the truth it was trained on;
  * feeding a version wrong outcomes (every impression clicked) drives its ratio far out of [0.9, 1.1]
    with enough clicks: the calibration alert's condition, on the live counters.
The measured figures are printed (pytest -s) for the report beside the model card's offline numbers.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.local_triton import LocalTriton
from tests.integration.gateway_server import serve_in_thread
from tests.integration.redis_server import RedisServer
from tests.integration.replay_world import Opportunities, draw, request, truth
from tests.integration.test_win_notices import redis_settings, reset
from training import world as w

pytestmark = pytest.mark.integration

BIDS = 3000
CANDIDATES = 4
CANDIDATE_SHARE = 30
EXPERIMENT = {
    "name": "replay",
    "salt": "replay-1",
    "arms": [
        {"name": "control", "version": "1", "weight": 100 - CANDIDATE_SHARE},
        {"name": "candidate", "version": "2", "weight": CANDIDATE_SHARE},
    ],
    "shadow": {"version": "2", "sample": 0.5},
}
CONCURRENCY = 4


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def _each(items: list[Any], job: Any) -> list[Any]:
    """`job(item)` for every item, CONCURRENCY at a time, results in order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(item: Any) -> Any:
        async with gate:
            return await job(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _model(samples: dict[Any, float], name: str, version: str, arm: str, role: str = "live") -> float:
    labels = tuple(sorted({"version": version, "arm": arm, "role": role}.items()))
    return samples.get((f"bidgw_model_{name}_total", labels), 0.0)


async def _replay(url: str, opps: Opportunities, rng: np.random.Generator) -> dict[str, Any]:
    ad_index = {ad_id: i for i, ad_id in enumerate(opps.world.ads.ids)}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def bid(i: int) -> dict[str, Any] | None:
            response = await client.post("/v1/bid", content=json.dumps(request(opps, i)))
            assert response.status_code == 200, response.text
            seatbid = response.json()["seatbid"]
            return seatbid[0]["bid"][0] if seatbid else None

        bids = await _each(list(range(BIDS)), bid)

        async def win(bid_id: str) -> bool:
            body = {"bid_id": bid_id, "price": 0.0001}
            response = await client.post("/v1/events/win", content=json.dumps(body))
            # 404: the bid went out unheld (its budget hold ran out of time in this GIL-shared process, a
            # counted degradation), so no record exists and the impression counts nowhere.
            assert response.status_code in (200, 404), response.text
            return response.status_code == 200

        answered = [(i, b) for i, b in enumerate(bids) if b is not None]
        recorded = await _each([b["id"] for _, b in answered], win)
        won = [item for item, ok in zip(answered, recorded, strict=True) if ok]
        true_ctr, true_cvr = truth(opps, [i for i, _ in won], [ad_index[b["adid"]] for _, b in won])
        clicked = rng.random(len(won)) < true_ctr
        converted = clicked & (rng.random(len(won)) < true_cvr)

        async def notify(item: tuple[str, str]) -> None:
            kind, bid_id = item
            if kind == "click":  # the pixel form
                response = await client.get("/v1/events/click", params={"bid_id": bid_id})
            else:
                response = await client.post(f"/v1/events/{kind}", content=json.dumps({"bid_id": bid_id}))
            assert response.status_code == 200, response.text
            assert response.json()["duplicate"] is False

        await _each([("click", b["id"]) for (_, b), c in zip(won, clicked, strict=True) if c], notify)
        await _each([("conversion", b["id"]) for (_, b), c in zip(won, converted, strict=True) if c], notify)
        metrics = _samples((await client.get("/metrics")).text)
    return {
        "bids": bids,
        "won": won,
        "answered": len(answered),
        "true_ctr": true_ctr,
        "true_cvr": true_cvr,
        "clicked": clicked,
        "converted": converted,
        "metrics": metrics,
    }


async def _click_all(url: str, bid_ids: list[str]) -> dict[Any, float]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def click(bid_id: str) -> None:
            response = await client.post("/v1/events/click", content=json.dumps({"bid_id": bid_id}))
            assert response.status_code == 200, response.text

        await _each(bid_ids, click)
        return _samples((await client.get("/metrics")).text)


def test_replay_split_calibration_and_alert_condition_against_the_worlds_truth(
    triton: LocalTriton, redis_server: RedisServer, tmp_path: Path
) -> None:
    reset(redis_server.url)
    experiment = tmp_path / "experiment.json"
    experiment.write_text(json.dumps(EXPERIMENT))
    settings = redis_settings(
        redis_server, triton.http_address, experiment_path=experiment, redis_timeout_ms=200.0
    )
    world = w.make_world()
    opps = draw(world, BIDS, CANDIDATES, seed=15, hour=datetime.now(UTC).hour)
    with serve_in_thread(settings) as url:
        result = asyncio.run(_replay(url, opps, np.random.default_rng(1515)))
        bids, won, metrics = result["bids"], result["won"], result["metrics"]

        # -- split and stickiness
        arms_by_user: dict[str, set[str]] = defaultdict(set)
        for i, b in enumerate(bids):
            if b is not None:
                arms_by_user[world.users.ids[opps.rows.user[i]]].add(b["ext"]["experiment"])
                version = {"replay/control": "1", "replay/candidate": "2"}[b["ext"]["experiment"]]
                # "priors": Triton missed the bid's deadline in this GIL-shared process and the fallback
                # scored it (degraded); such bids count under their own version label.
                assert b["ext"]["model_version"] in (version, "priors")
        assert all(len(arms) == 1 for arms in arms_by_user.values())
        per_arm = Counter(b["ext"]["experiment"] for _, b in won)
        share = 100 * per_arm["replay/candidate"] / len(won)
        assert len(won) > 0.9 * result["answered"] > 0.8 * BIDS
        assert abs(share - CANDIDATE_SHARE) <= 2, share

        # -- calibration per version, against the truth on the same won impressions
        report = [
            f"split: candidate arm {share:.2f} % of {len(won)} won bids (configured {CANDIDATE_SHARE} %)"
        ]
        for arm, version in (("replay/control", "1"), ("replay/candidate", "2")):
            rows = [
                j
                for j, (_, b) in enumerate(won)
                if b["ext"]["experiment"] == arm and b["ext"]["model_version"] == version
            ]
            predicted = sum(won[j][1]["ext"]["pctr"] for j in rows)
            p = result["true_ctr"][rows]
            clicks = int(result["clicked"][rows].sum())
            assert _model(metrics, "impressions", version, arm) == len(rows)
            assert _model(metrics, "clicks", version, arm) == clicks
            assert math.isclose(_model(metrics, "predicted_clicks", version, arm), predicted, rel_tol=1e-6)
            sd = math.sqrt(float((p * (1 - p)).sum()))
            # Observed clicks agree with the truth summed over the same impressions (4 sd: a ~6e-5 chance
            # of failing for a correct gateway).
            assert abs(clicks - p.sum()) <= 4 * sd, (version, clicks, p.sum(), sd)
            clicked_rows = [rows[k] for k in np.flatnonzero(result["clicked"][rows])]
            pcvr_pred = sum(won[j][1]["ext"]["pcvr"] for j in clicked_rows)
            conversions = int(result["converted"][clicked_rows].sum()) if clicked_rows else 0
            assert _model(metrics, "conversions", version, arm) == conversions
            true_conv = float(result["true_cvr"][clicked_rows].sum()) if clicked_rows else 0.0
            report.append(
                f"v{version}: {len(rows)} impressions, pCTR predicted {predicted:.1f} / true {p.sum():.1f} "
                f"/ observed {clicks} clicks (sd {sd:.1f}): "
                f"calibration live {predicted / max(clicks, 1):.3f}, "
                f"vs truth {predicted / p.sum():.3f}; pCVR predicted {pcvr_pred:.2f} / true {true_conv:.2f} "
                f"/ observed {conversions} conversions"
            )
        shadow_imps = _model(metrics, "impressions", "2", "replay/control", "shadow")
        assert shadow_imps > 0.3 * per_arm["replay/control"]  # half sampled, less those won before annotation
        shadow_pred = _model(metrics, "predicted_clicks", "2", "replay/control", "shadow")
        shadow_clicks = _model(metrics, "clicks", "2", "replay/control", "shadow")
        report.append(
            f"shadow v2 on control: {shadow_imps:.0f} impressions, predicted {shadow_pred:.1f}, "
            f"observed {shadow_clicks:.0f} clicks"
        )

        # -- a deliberately miscalibrated version: its impressions reported as clicked far beyond the
        # truth (300 extra clicks), the live ratio the alert reads falls far below 0.9
        candidate_rows = [
            b["id"]
            for (_, b), c in zip(won, result["clicked"], strict=True)
            if not c and b["ext"]["experiment"] == "replay/candidate" and b["ext"]["model_version"] == "2"
        ][:300]
        after = asyncio.run(_click_all(url, candidate_rows))
        ratio = _model(after, "predicted_clicks", "2", "replay/candidate") / _model(
            after, "clicks", "2", "replay/candidate"
        )
        assert ratio < 0.9 * 0.5, ratio
        report.append(f"miscalibrated v2 (300 false clicks): live ratio {ratio:.3f}")
        print("\n".join(report))


ROUND_BIDS = 200
RATE_PER_S = 60.0
PAIRS = 5


async def _round_latencies(url: str, opps: Opportunities, first: int) -> tuple[float, float]:
    """(p50, p99) latency (ms) of ROUND_BIDS bids sent open-loop at RATE_PER_S (a fixed rate)."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(k: int) -> None:
            await asyncio.sleep(k / RATE_PER_S)
            started = loop.time()
            response = await client.post("/v1/bid", content=json.dumps(request(opps, first + k)))
            assert response.status_code == 200
            latencies.append((loop.time() - started) * 1000)

        await asyncio.gather(*(one(k) for k in range(ROUND_BIDS)))
    p50, p99 = np.percentile(latencies, [50, 99])
    return float(p50), float(p99)


def test_shadow_scoring_adds_nothing_to_the_bid_p99_at_a_fixed_rate(
    triton: LocalTriton, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Paired rounds (off, on) at the same fixed rate: shadow on every bid vs none, same requests."""
    reset(redis_server.url)
    experiment = tmp_path / "experiment.json"

    def write(sample: float) -> None:
        body = {**EXPERIMENT, "arms": [{"name": "control", "version": "1", "weight": 100}]}
        body["shadow"] = {"version": "2", "sample": sample}
        experiment.write_text(json.dumps(body))

    write(0.0)
    settings = redis_settings(
        redis_server,
        triton.http_address,
        experiment_path=experiment,
        experiment_reload_interval_s=0.1,
        redis_timeout_ms=200.0,
    )
    opps = draw(w.make_world(), ROUND_BIDS * 2 * PAIRS, CANDIDATES, seed=16, hour=datetime.now(UTC).hour)
    rounds: list[dict[float, tuple[float, float]]] = []
    with serve_in_thread(settings) as url:
        asyncio.run(_round_latencies(url, opps, 0))  # warm-up: connections, both versions' first calls
        for pair in range(PAIRS):
            latencies = {}
            for sample in (0.0, 1.0):
                write(sample)
                time_to_reload = 0.5  # several reload intervals, and a new mtime/size either way
                asyncio.run(asyncio.sleep(time_to_reload))
                first = (2 * pair + int(sample)) * ROUND_BIDS
                latencies[sample] = asyncio.run(_round_latencies(url, opps, first))
            rounds.append(latencies)
        shadow_jobs = _samples(httpx.get(f"{url}/metrics").text)
    queued = sum(v for (name, labels), v in shadow_jobs.items() if name == "bidgw_shadow_jobs_total")
    assert queued > 0.5 * ROUND_BIDS * PAIRS  # shadow really ran in the "on" rounds

    def median_paired_difference(quantile: int) -> tuple[float, float]:
        """(median of on-minus-off over the pairs, median of the off rounds) for p50 (0) or p99 (1)."""
        differences = sorted(r[1.0][quantile] - r[0.0][quantile] for r in rounds)
        offs = sorted(r[0.0][quantile] for r in rounds)
        return differences[PAIRS // 2], offs[PAIRS // 2]

    p50_difference, p50_off = median_paired_difference(0)
    p99_difference, p99_off = median_paired_difference(1)
    print(
        f"shadow overhead, (p50, p99) ms off -> on per pair: {[(r[0.0], r[1.0]) for r in rounds]}; "
        f"median difference p50 {p50_difference:+.2f} ms, p99 {p99_difference:+.2f} ms"
    )
    # Shadow work awaited on the bid path would add its Triton call and Redis write to every bid, which the
    # median (a stable statistic) shows; the tail is what the issue asks about, and on this shared 2-core
    # machine a p99 of 200 bids moves by a quarter between identical rounds, so its bound is that noise.
    assert p50_difference < max(0.5, 0.15 * p50_off), rounds
    assert p99_difference < max(2.0, 0.3 * p99_off), rounds
