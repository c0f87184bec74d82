"""The long-lived objects one worker owns (created in the app's lifespan, closed at shutdown)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.api.decode import RequestLimits
from gateway.core.pipeline import BidPipeline
from gateway.core.ports import FeatureStore, Scorer


@dataclass(slots=True)
class Services:
    limits: RequestLimits
    store: FeatureStore
    scorer: Scorer  # what the pipeline calls: the micro-batcher over the breaker over Triton
    pipeline: BidPipeline
    max_inflight_bids: int
    inflight_bids: int = 0  # one event loop per worker: a plain int is race-free
    shed_bids: int = 0
    draining: bool = False

    def mark_draining(self) -> None:
        self.draining = True

    async def scorer_ready(self) -> bool:
        return await self.scorer.ready()
