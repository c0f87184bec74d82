"""The long-lived objects one worker owns (created in the app's lifespan, closed at shutdown)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.api.admission import LoopLagAdmission
from gateway.api.bid_limit import BidConcurrencyLimit
from gateway.api.decode import RequestLimits
from gateway.core.pipeline import BidPipeline
from gateway.core.ports import FeatureStore, Scorer
from gateway.observability.calibration import CalibrationMetrics
from gateway.observability.logging import BidLog
from gateway.observability.metrics import BidTally
from gateway.stores.campaigns import CampaignLedger
from gateway.stores.feedback import FeedbackLedger


@dataclass(slots=True)
class Services:
    limits: RequestLimits
    store: FeatureStore
    scorer: Scorer  # what the pipeline calls: the micro-batcher over the breaker over Triton
    pipeline: BidPipeline
    max_inflight_bids: int
    # Learns how many bids this worker can work on at once from their latency; None: max_inflight_bids.
    bid_limit: BidConcurrencyLimit | None = None
    # Fallback scoring is on: with Triton down this worker still bids (on priors), so it stays ready.
    bids_without_model: bool = False
    tally: BidTally = field(default_factory=BidTally)  # per-bid metrics, exported by the MetricsExporter
    bid_log: BidLog = field(default_factory=lambda: BidLog(0.0))
    ledger: CampaignLedger | None = None  # campaign state for win notices (redis backend only)
    feedback: FeedbackLedger | None = None  # click and conversion notices (redis backend only)
    calibration: CalibrationMetrics | None = None  # counted by win, click and conversion notices
    # Sheds while the event loop has a standing queue; its lag counts against each bid's budget.
    admission: LoopLagAdmission = field(default_factory=lambda: LoopLagAdmission(target_s=0.0))
    plain_nobid_status: int = 204  # a no-bid to a request without ext.candidates: 204, or 200 with nbr
    trust_request_start: bool = False  # count a proxy's X-Request-Start age against the budget too
    inflight_bids: int = 0  # one event loop per worker: a plain int is race-free
    shed_bids: int = 0
    draining: bool = False

    @property
    def bid_concurrency_limit(self) -> int:
        if self.bid_limit is None:
            return self.max_inflight_bids
        return min(self.max_inflight_bids, self.bid_limit.limit)

    def mark_draining(self) -> None:
        self.draining = True

    async def scorer_ready(self) -> bool:
        """Whether some Triton server reports the model ready (asks them: one short call each)."""
        return await self.scorer.ready()
