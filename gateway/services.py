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
    scorer: Scorer  # what the pipeline calls: the micro-batcher over Triton
    pipeline: BidPipeline

    async def scorer_ready(self) -> bool:
        return await self.scorer.ready()
