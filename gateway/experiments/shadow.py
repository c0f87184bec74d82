"""Shadow scoring: the winners of a sampled share of bids scored again on the shadow model version, after
the response, for calibration only (the predictions are written beside the live ones on the bid records).

Never on a bid's latency path: the pipeline's `offer` is an append to a bounded queue (a full queue drops
the job and counts it: under load shadow work is the first thing given up), and one background task per
worker drains the queue, every queued job of a version in one Triton request (the unbatched upstream of
that version's chain, so shadow rows never queue in a live micro-batcher), at most one request in flight.
It yields to the event loop before each request, so responses already decided are written first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gateway.core.experiment_ports import ShadowJob
from gateway.core.ports import Scorer
from gateway.errors import ScoringError, StoreError

__all__ = ["ShadowAnnotator", "ShadowScorer", "ShadowStats"]

log = logging.getLogger(__name__)


class ShadowAnnotator(Protocol):
    """Where shadow predictions go: `gateway.stores.feedback.FeedbackLedger` in production."""

    async def annotate_shadow(
        self,
        version: str,
        bid_ids: Sequence[str],
        pctr: Sequence[float],
        pcvr: Sequence[float],
        deadline: float,
    ) -> int: ...


@dataclass(slots=True)
class ShadowStats:
    """Monotonic counters for metrics."""

    offered: int = 0  # jobs the pipeline offered (sampled bids with winners)
    dropped: int = 0  # jobs refused: queue full
    scored_rows: int = 0
    failed: int = 0  # shadow requests that failed (Triton or Redis): their jobs are lost, never retried
    annotated: int = 0  # bid records that got shadow predictions


class ShadowScorer:
    """A `core.experiment_ports.ShadowSink` with its worker task (`start`, `aclose`)."""

    def __init__(
        self,
        upstream_of: Callable[[str], Scorer | None],
        annotator: ShadowAnnotator,
        *,
        max_queued_rows: int = 4096,
        timeout_s: float = 0.5,
    ) -> None:
        self._upstream_of = upstream_of
        self._annotator = annotator
        self.max_queued_rows = max_queued_rows
        self.timeout_s = timeout_s
        self.stats = ShadowStats()
        self._queue: deque[ShadowJob] = deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def offer(self, job: ShadowJob) -> bool:
        self.stats.offered += 1
        rows = len(job.bid_ids)
        if self._task is None or self._queued_rows + rows > self.max_queued_rows:
            self.stats.dropped += 1
            return False
        self._queue.append(job)
        self._queued_rows += rows
        self._wake.set()
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="shadow-scoring")

    async def aclose(self) -> None:
        """Stop the worker; queued jobs are dropped (shadow predictions are best effort)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await asyncio.sleep(0)  # responses decided in this loop iteration go out first
                await self._score(self._take())

    def _take(self) -> list[ShadowJob]:
        """Every queued job of the oldest job's version (one Triton request carries one version)."""
        version = self._queue[0].version
        taken = [job for job in self._queue if job.version == version]
        self._queue = deque(job for job in self._queue if job.version != version)
        self._queued_rows -= sum(len(job.bid_ids) for job in taken)
        return taken

    async def _score(self, jobs: list[ShadowJob]) -> None:
        version = jobs[0].version
        upstream = self._upstream_of(version)
        if upstream is None:  # the configuration changed under the queued jobs: nothing to score with
            self.stats.failed += 1
            return
        cat = np.concatenate([job.cat_ids for job in jobs])
        dense = np.concatenate([job.dense for job in jobs])
        bid_ids = [bid_id for job in jobs for bid_id in job.bid_ids]
        deadline = time.monotonic() + self.timeout_s
        try:
            scores = await upstream.score(cat, dense, deadline)
            self.stats.scored_rows += len(bid_ids)
            self.stats.annotated += await self._annotator.annotate_shadow(
                version, bid_ids, scores.pctr.reshape(-1).tolist(), scores.pcvr.reshape(-1).tolist(), deadline
            )
        except (ScoringError, StoreError) as exc:
            self.stats.failed += 1
            log.debug("shadow scoring on version %s failed: %s", version, exc)
