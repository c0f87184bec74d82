"""Router, shadow scorer and configuration watcher over fake scorers (no Triton here)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from gateway.core.experiment_ports import ShadowJob
from gateway.core.ports import Scores
from gateway.errors import ScoringUnavailable
from gateway.experiments.config import decode_experiment, single_arm
from gateway.experiments.pool import ScorerPool, VersionChain
from gateway.experiments.router import ExperimentRouter
from gateway.experiments.shadow import ShadowScorer
from gateway.experiments.watcher import ExperimentWatcher


class FakeScorer:
    """Scores pctr = cat[:, 0] / 1000 under its version; counts calls; `ready_now` decides readiness."""

    def __init__(self, version: str, ready_now: bool = True) -> None:
        self.version = version
        self.ready_now = ready_now
        self.calls: list[int] = []

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores:
        self.calls.append(int(cat_ids.shape[0]))
        if not self.ready_now:
            raise ScoringUnavailable("not ready")
        pctr = (cat_ids[:, 0] / 1000).astype(np.float32)
        return Scores(pctr=pctr, pcvr=pctr / 2, model_version=self.version)

    async def ready(self) -> bool:
        return self.ready_now


class Annotations:
    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, float, float]] = {}

    async def annotate_shadow(
        self,
        version: str,
        bid_ids: Sequence[str],
        pctr: Sequence[float],
        pcvr: Sequence[float],
        deadline: float,
    ) -> int:
        for bid_id, c, v in zip(bid_ids, pctr, pcvr, strict=True):
            self.rows[bid_id] = (version, c, v)
        return len(bid_ids)


def experiment(candidate_weight: int = 50, sample: float = 0.0, version: str = "2") -> bytes:
    body = {
        "name": "e",
        "salt": "s",
        "arms": [
            {"name": "control", "version": "1", "weight": 100 - candidate_weight},
            {"name": "candidate", "version": version, "weight": candidate_weight},
        ],
        "shadow": {"version": "2", "sample": sample} if sample else None,
    }
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_routes_carry_the_arm_label_and_shadow_only_on_the_sampled_share() -> None:
    one, two = FakeScorer("1"), FakeScorer("2")
    router = ExperimentRouter(
        decode_experiment(experiment(0, sample=0.3)), {"1": one, "2": two}, random.Random(1)
    )
    routes = [router.route(f"u{i}", "r") for i in range(4000)]
    assert {r.arm for r in routes} == {"e/control"}
    assert all(r.scorer is one for r in routes)
    shadowed = sum(r.shadow_version == "2" for r in routes) / len(routes)
    assert 0.27 < shadowed < 0.33
    with pytest.raises(ValueError, match="no scorer"):
        router.install(decode_experiment(experiment(50, version="3")), {"1": one, "2": two})
    assert router.config.name == "e"  # a refused install leaves the plan in force


def job(version: str, first: int, rows: int) -> ShadowJob:
    cat = np.zeros((rows, 18), np.int64)
    cat[:, 0] = np.arange(first, first + rows)
    return ShadowJob(version, cat, np.zeros((rows, 6), np.float32), [f"bid-{first + i}" for i in range(rows)])


async def test_shadow_jobs_are_batched_per_version_and_dropped_when_the_queue_is_full() -> None:
    two = FakeScorer("2")
    annotations = Annotations()
    shadow = ShadowScorer(lambda v: two if v == "2" else None, annotations, max_queued_rows=5)
    assert not shadow.offer(job("2", 0, 1))  # not started: dropped, never queued forever
    shadow.start()
    assert shadow.offer(job("2", 10, 2))
    assert shadow.offer(job("2", 20, 3))
    assert not shadow.offer(job("2", 30, 1))  # 6 rows > 5: the newest is dropped
    for _ in range(20):
        await asyncio.sleep(0)
    await shadow.aclose()
    assert two.calls == [5]  # both queued jobs in one Triton request
    version, pctr, pcvr = annotations.rows["bid-21"]
    assert (version, round(pctr, 6), round(pcvr, 6)) == ("2", 0.021, 0.0105)
    assert shadow.stats.dropped == 2
    assert shadow.stats.annotated == 5


async def test_the_watcher_never_replaces_a_good_configuration_with_a_bad_one(tmp_path: Path) -> None:
    one, two = FakeScorer("1"), FakeScorer("2", ready_now=False)
    chains = {"1": VersionChain(one, one)}

    async def build(version: str) -> VersionChain:
        scorer = two if version == "2" else FakeScorer(version, ready_now=False)
        return VersionChain(scorer, scorer)

    pool = ScorerPool(build, chains)
    router = ExperimentRouter(single_arm("1"), {"1": one})
    path = tmp_path / "experiment.json"
    watcher = ExperimentWatcher(path, pool, router, interval_s=0.01)
    assert not await watcher.poll()  # no file: the default stays

    def write(raw: bytes) -> None:
        path.write_bytes(raw)
        stamp = time.time() + len(raw)  # a distinct mtime per write, whatever the filesystem's resolution
        os.utime(path, (stamp, stamp))

    write(experiment(10))
    assert not await watcher.poll()  # version 2 is not ready on "Triton": refused, retried later
    assert router.config.name == "none"
    assert "not ready" in watcher.stats.last_error
    two.ready_now = True
    assert await watcher.poll()  # same file, now installable
    assert router.config.name == "e"
    write(b'{"name": "e", "salt": "s", "arms": [{"name": "c", "version": "1", "weight": 95}]}')
    assert not await watcher.poll()
    assert router.config.name == "e"
    assert "sum to 100" in watcher.stats.last_error
    assert not await watcher.poll()  # the same bad bytes are not re-parsed every interval
    assert watcher.stats.rejected == 2
    assert watcher.stats.loaded == 1
    # The candidate breaks; the documented rollback (candidate to 0 %) installs though version 2 is down.
    two.ready_now = False
    write(
        b'{"name": "e", "salt": "s", "arms": [{"name": "c", "version": "1", "weight": 100},'
        b' {"name": "t", "version": "2", "weight": 0}]}'
    )
    assert await watcher.poll()
    assert router.route("any-user", "r1").version == "1"
