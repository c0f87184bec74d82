"""Every metric the gateway exports, defined once (`GatewayMetrics`), and how values reach them.

Two paths, both off the hot path as far as Prometheus is concerned:
  * per-bid observations (stage latencies, outcome, candidates, prices, dropped candidates) go into a
    `BidTally`: plain ints and floats in this worker, a bisect and an add each (about 1 us per bid);
  * the plain counters other modules already keep (StoreStats, BatcherStats, PipelineCounters,
    Services.inflight_bids/shed_bids, the breaker, TritonErrorCounts) are read where they live.
`MetricsExporter.export()` moves both into the prometheus_client metrics: every `sync_interval_s` in the
background, and right before each scrape of this worker.

Why not a custom Collector read at scrape time: under several uvicorn workers a scrape reaches ONE worker,
and prometheus_client's multiprocess mode only aggregates metrics stored in its mmap files; a Collector
would report the scraped worker alone. Exporting deltas into real (mmap-backed) counters keeps every
worker's share, including a worker that exited (its counter file stays), at the price of values up to
`sync_interval_s` old for workers other than the scraped one. Gauges are per-worker snapshots combined by
`multiprocess_mode`: in-flight bids `livesum` (all live workers), breaker state `livemax` (the worst).
A worker that exits cleanly removes its live-gauge files (`worker_exited`); one that crashes leaves its
last gauge values until the serve command restarts and clears the directory.

Labels are bounded: route templates, stage names, outcome (bid, nobid_<nbr>, shed), LossReason codes,
error kinds, flush reasons. Never an id.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_fastapi_instrumentator import metrics as http_metrics
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.types import ASGIApp

from gateway.api.admission import AdmissionStats
from gateway.catalog.reloader import CatalogStats
from gateway.core.eligibility import LOSS_REASONS, NOT_LOST
from gateway.core.pipeline import Decision, PipelineCounters
from gateway.observability.triton_errors import TritonErrorCounts
from gateway.scoring.batcher import CALLERS_BUCKETS, BatcherStats
from gateway.scoring.breaker import BreakerState
from gateway.scoring.fleet import FleetStats
from gateway.stores.embedded import StoreStats
from gateway.stores.shards import SHARD_LATENCY_BUCKETS_S, Shard

log = logging.getLogger(__name__)

# HTTP latency: the SLO thresholds (5, 10, 25, 50 ms) are bucket bounds, so ratios under them are exact.
HTTP_LATENCY_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
STAGES: Final = ("decode", "retrieval", "features", "scoring", "auction", "encode")
STAGE_BUCKETS_S: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
CANDIDATE_BUCKETS: Final = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
# Catalog creatives matching one imp before the top-K cut: from none (a no-bid) to a whole large catalog.
RETRIEVED_BUCKETS: Final = (0.0, 1.0, 10.0, 50.0, 200.0, 1000.0, 5000.0, 20000.0, 100000.0)
PRICE_BUCKETS_USD: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
# Outcomes that exist from the start (so ratios have a denominator before the first such bid).
INITIAL_OUTCOMES: Final = (("bid", "false"), ("bid", "true"), ("shed", "false"))
TRITON_ERROR_KINDS: Final = ("timeout", "unavailable", "breaker_open")
FLUSH_REASONS: Final = ("size", "deadline", "wait", "close")
BATCHER_REJECTIONS: Final = ("queue_timeout", "queue_full", "cancelled")
BREAKER_STATE_CODES: Final[dict[BreakerState, int]] = {"closed": 0, "half-opened": 1, "opened": 2}
# Loss-code arrays queued between exports before they are folded into counts (bounds memory).
_MAX_PENDING_LOSS_ARRAYS: Final = 1024


class _Buckets:
    """One histogram's worth of plain counts: per bucket (non-cumulative, last = +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus' `le` semantics.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def take(self) -> tuple[list[int], float]:
        counts, total = self.counts, self.total
        self.counts = [0] * len(counts)
        self.total = 0.0
        return counts, total


class BidTally:
    """Per-bid observations of one worker since the last export. The only metrics code on the hot path."""

    __slots__ = (
        "_loss_counts",
        "_pending_loss",
        "candidates",
        "ecpm",
        "outcomes",
        "price",
        "retrieved_per_imp",
        "stages",
    )

    def __init__(self) -> None:
        self.stages = {stage: _Buckets(STAGE_BUCKETS_S) for stage in STAGES}
        self.outcomes: dict[tuple[str, bool], int] = {}
        self.candidates = _Buckets(CANDIDATE_BUCKETS)
        self.retrieved_per_imp = _Buckets(RETRIEVED_BUCKETS)
        self.price = _Buckets(PRICE_BUCKETS_USD)
        self.ecpm = _Buckets(PRICE_BUCKETS_USD)
        # The auction's per-candidate loss codes, counted at export (one bincount for many bids).
        self._pending_loss: list[npt.NDArray[np.int8]] = []
        self._loss_counts = np.zeros(len(LOSS_REASONS), dtype=np.int64)

    def record(self, decision: Decision, encode_s: float) -> None:
        stages = self.stages
        for stage, ms in decision.timings_ms.items():
            buckets = stages.get(stage)
            if buckets is None:  # a stage the pipeline added later: names come from code, so bounded
                buckets = stages[stage] = _Buckets(STAGE_BUCKETS_S)
            buckets.observe(ms / 1000.0)
        stages["encode"].observe(encode_s)
        key = (decision.outcome, decision.degraded)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        self.candidates.observe(decision.candidates)
        if decision.retrieved is not None:
            for matched in decision.retrieved.per_imp:
                self.retrieved_per_imp.observe(matched)
        for win in decision.wins:
            self.price.observe(win.price_usd)
            self.ecpm.observe(win.ecpm)
        if decision.loss_codes is not None:
            self._pending_loss.append(decision.loss_codes)
            if len(self._pending_loss) >= _MAX_PENDING_LOSS_ARRAYS:
                self._fold_losses()

    def take_losses(self) -> list[int]:
        """Dropped candidates per `LOSS_REASONS` index since the last call."""
        self._fold_losses()
        counts = [int(count) for count in self._loss_counts]
        self._loss_counts[:] = 0
        return counts

    def _fold_losses(self) -> None:
        if not self._pending_loss:
            return
        codes = np.concatenate(self._pending_loss)
        self._pending_loss.clear()
        self._loss_counts += np.bincount(codes[codes != NOT_LOST], minlength=len(LOSS_REASONS))


class _BulkHistogram(Histogram):
    """A Histogram that can also add counts aggregated elsewhere (a `_Buckets`) in one call.

    prometheus_client has no public bulk update; `_buckets` (non-cumulative per bucket) and `_sum` are the
    values `observe()` itself increments, in memory or in the multiprocess mmap files alike.
    tests/integration/test_observability.py checks the exposed buckets, so a library change fails there.
    """

    def add(self, counts: Sequence[int], total: float) -> None:
        if len(counts) != len(self._buckets):
            raise ValueError(f"{len(counts)} bucket counts for {len(self._buckets)} buckets")
        for value, count in zip(self._buckets, counts, strict=True):
            if count:
                value.inc(count)
        if total:
            self._sum.inc(total)


@dataclass(frozen=True, slots=True)
class StatsSources:
    """The plain counters of one worker that the exporter reads (each owned by its module)."""

    store: StoreStats
    batcher: BatcherStats
    pipeline: PipelineCounters
    triton_errors: TritonErrorCounts
    fleet: FleetStats
    admission: AdmissionStats


class GatewayMetrics:
    """The gateway's own metrics, registered on `registry` (one per app, so tests can build many apps)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.stage_duration = _BulkHistogram(
            "bidgw_stage_duration_seconds",
            "Time spent in each stage of a bid: decode, features, scoring (Triton or fallback), auction, "
            "encode",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=registry,
        )
        self.bids = Counter(
            "bidgw_bids",
            "Bid requests by outcome (bid, nobid_<nbr>, shed = refused by admission control) and whether "
            "scoring fell back to priors",
            ["outcome", "degraded"],
            registry=registry,
        )
        self.candidates = _BulkHistogram(
            "bidgw_bid_candidates",
            "Candidate ads per bid request",
            buckets=CANDIDATE_BUCKETS,
            registry=registry,
        )
        self.retrieved_per_imp = _BulkHistogram(
            "bidgw_retrieval_matches",
            "Catalog creatives matching one imp of a plain request (format, targeting, blocks), before the "
            "top-K cut by prior eCPM",
            buckets=RETRIEVED_BUCKETS,
            registry=registry,
        )
        self.clearing_price = _BulkHistogram(
            "bidgw_clearing_price_usd",
            "Clearing price of each winning bid, USD CPM",
            buckets=PRICE_BUCKETS_USD,
            registry=registry,
        )
        self.win_ecpm = _BulkHistogram(
            "bidgw_win_ecpm_usd",
            "eCPM of each winning bid, USD CPM",
            buckets=PRICE_BUCKETS_USD,
            registry=registry,
        )
        self.dropped = Counter(
            "bidgw_candidates_dropped",
            "Candidates that did not win, by LossReason",
            ["reason"],
            registry=registry,
        )
        self.triton_errors = Counter(
            "bidgw_triton_errors",
            "Failed Triton calls (batches) by kind: timeout, unavailable, breaker_open (refused at once)",
            ["kind"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "bidgw_breaker_state",
            "Triton circuit breaker: 0 closed, 1 half-open, 2 open (the worst live worker)",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.breaker_opens = Counter(
            "bidgw_breaker_opens", "Times the Triton circuit breaker opened", registry=registry
        )
        self.inflight = Gauge(
            "bidgw_inflight_bids",
            "Bids being decided now (all live workers)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.store_lookups = Counter(
            "bidgw_store_lookups",
            "Feature store lookups by table (user, ad) and result (hit, miss, anonymous)",
            ["table", "result"],
            registry=registry,
        )
        self.store_failures = Counter(
            "bidgw_store_failures", "Store calls that failed (defaults served instead)", registry=registry
        )
        self.scoring_failures = Counter(
            "bidgw_scoring_failures",
            "Bids whose scoring failed (fallback priors or no-bid nbr 1)",
            registry=registry,
        )
        self.batches = Counter(
            "bidgw_batcher_batches",
            "Micro-batches sent to Triton, by what made them leave (size, deadline, wait, close)",
            ["reason"],
            registry=registry,
        )
        self.batch_rows = Counter(
            "bidgw_batcher_rows", "Candidate rows sent to Triton in micro-batches", registry=registry
        )
        self.batch_callers = Counter(
            "bidgw_batcher_callers", "Bids scored through the micro-batcher", registry=registry
        )
        self.callers_per_batch = _BulkHistogram(
            "bidgw_batcher_callers_per_batch",
            "Bids merged into one Triton request",
            buckets=tuple(float(b) for b in CALLERS_BUCKETS),
            registry=registry,
        )
        self.batch_rejected = Counter(
            "bidgw_batcher_rejected",
            "Bids the micro-batcher did not score: queue_timeout, queue_full, cancelled",
            ["reason"],
            registry=registry,
        )
        # The tightest worker: every worker's limit falls when the Triton they share queues.
        self.batch_concurrency_limit = Gauge(
            "bidgw_batcher_concurrency_limit",
            "Triton calls a worker's micro-batcher may have in flight now (adaptive: lowered while Triton "
            "queues); the lowest of any live worker",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.bid_concurrency_limit = Gauge(
            "bidgw_bid_concurrency_limit",
            "Bids the workers admit at once now, summed over live workers: the learnt limit (lowered while "
            "bids queue, in the event loop or behind Triton) or max_inflight_bids; beyond it a bid is shed",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.bid_limit_standing_queues = Counter(
            "bidgw_bid_limit_standing_queues",
            "Intervals in which even the fastest bid took over the tolerance times its no-load latency: "
            "each one cut the learnt bids-in-flight limit (BIDGW_BID_CONCURRENCY_MODE=adaptive)",
            registry=registry,
        )
        # The Triton fleet as this worker sees it (gateway.scoring.fleet).
        self.triton_healthy = Gauge(
            "bidgw_triton_servers_healthy",
            "Triton servers behind BIDGW_TRITON_URL that get calls; the fewest any live worker sees",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.triton_ejected = Gauge(
            "bidgw_triton_servers_ejected",
            "Triton servers ejected (probed until their model is ready); the most any live worker has",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.triton_ejections = Counter(
            "bidgw_triton_ejections",
            "Triton servers ejected: a connection failure, or calls left unanswered to their deadline",
            registry=registry,
        )
        self.triton_retries = Counter(
            "bidgw_triton_retries",
            "Triton calls sent again to another server after the first one was unreachable",
            registry=registry,
        )
        self.triton_resolutions = Counter(
            "bidgw_triton_resolutions",
            "Re-resolutions of the Triton name by result (ok, failed: the fleet kept its servers)",
            ["result"],
            registry=registry,
        )
        # Create the known label sets at zero: a ratio or rate over them has data before the first event.
        for outcome, degraded in INITIAL_OUTCOMES:
            self.bids.labels(outcome, degraded)
        self.stage_children = {stage: self.stage_duration.labels(stage) for stage in STAGES}
        self.dropped_children = [self.dropped.labels(str(reason)) for reason in LOSS_REASONS]
        self.triton_children = {kind: self.triton_errors.labels(kind) for kind in TRITON_ERROR_KINDS}
        self.batch_children = {reason: self.batches.labels(reason) for reason in FLUSH_REASONS}
        self.rejected_children = {reason: self.batch_rejected.labels(reason) for reason in BATCHER_REJECTIONS}
        self.store_children = {
            key: self.store_lookups.labels(*key)
            for key in (
                ("user", "hit"),
                ("user", "miss"),
                ("user", "anonymous"),
                ("ad", "hit"),
                ("ad", "miss"),
            )
        }
        self.resolution_children = {r: self.triton_resolutions.labels(r) for r in ("ok", "failed")}
        # CPU saturation (gateway.api.admission).
        self.loop_lag = Gauge(
            "bidgw_event_loop_lag_seconds",
            "How late the event loop runs a timer due now: the wait of a request arriving now; the worst "
            "live worker",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.loop_lag_sheds = Counter(
            "bidgw_loop_lag_sheds",
            "Bids shed because the event loop had a standing queue (the worker's CPU saturated); a part of "
            'bidgw_bids_total{outcome="shed"}',
            registry=registry,
        )
        self.breaker_state.set(0)
        self.inflight.set(0)


class MetricsExporter:
    """Moves one worker's tallies and plain counters into `GatewayMetrics` (deltas since the last export)."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        tally: BidTally,
        sources: StatsSources,
        *,
        inflight: Callable[[], int],
        shed: Callable[[], int],
        bid_concurrency_limit: Callable[[], int],
        bid_limit_standing_queues: Callable[[], int],
        breaker_state: Callable[[], BreakerState],
        breaker_opens: Callable[[], int],
        also: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._metrics = metrics
        self._also = tuple(also)  # exports of other blocks below (Redis shards), run with this one
        self._tally = tally
        self._sources = sources
        self._inflight = inflight
        self._shed = shed
        self._bid_concurrency_limit = bid_concurrency_limit
        self._bid_limit_standing_queues = bid_limit_standing_queues
        self._breaker_state = breaker_state
        self._breaker_opens = breaker_opens
        self._last: dict[str, int] = {}
        self._last_callers_per_batch = [0] * (len(CALLERS_BUCKETS) + 1)

    def export(self) -> None:
        """Synchronous and short (tens of microseconds): run on the event loop between bids."""
        self._export_tally()
        self._export_counters()
        m = self._metrics
        m.inflight.set(self._inflight())
        m.bid_concurrency_limit.set(self._bid_concurrency_limit())
        m.breaker_state.set(BREAKER_STATE_CODES.get(self._breaker_state(), 2))
        fleet = self._sources.fleet
        m.triton_healthy.set(fleet.healthy)
        m.triton_ejected.set(fleet.ejected)
        m.loop_lag.set(self._sources.admission.lag_s)
        m.batch_concurrency_limit.set(self._sources.batcher.concurrency_limit)
        for export in self._also:
            export()

    async def run(self, interval_s: float) -> None:
        """Export every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.export()

    def _export_tally(self) -> None:
        m, tally = self._metrics, self._tally
        for stage, buckets in tally.stages.items():
            _add(m.stage_children.get(stage) or m.stage_duration.labels(stage), buckets)
        outcomes, tally.outcomes = tally.outcomes, {}
        for (outcome, degraded), count in outcomes.items():
            m.bids.labels(outcome, "true" if degraded else "false").inc(count)
        _add(m.candidates, tally.candidates)
        _add(m.retrieved_per_imp, tally.retrieved_per_imp)
        _add(m.clearing_price, tally.price)
        _add(m.win_ecpm, tally.ecpm)
        for counter, count in zip(m.dropped_children, tally.take_losses(), strict=True):
            if count:
                counter.inc(count)

    def _export_counters(self) -> None:
        m, src = self._metrics, self._sources
        store, batcher, pipeline, triton = src.store, src.batcher, src.pipeline, src.triton_errors
        delta = self._delta
        m.bids.labels("shed", "false").inc(delta("shed", self._shed()))
        m.bid_limit_standing_queues.inc(delta("bid_limit_standing_queues", self._bid_limit_standing_queues()))
        m.breaker_opens.inc(delta("breaker_opens", self._breaker_opens()))
        stores = m.store_children
        stores["user", "hit"].inc(delta("user_hits", store.user_hits))
        stores["user", "miss"].inc(delta("user_misses", store.user_misses))
        stores["user", "anonymous"].inc(delta("user_anonymous", store.user_anonymous))
        stores["ad", "hit"].inc(delta("ad_hits", store.ad_hits))
        stores["ad", "miss"].inc(delta("ad_misses", store.ad_misses))
        m.store_failures.inc(delta("store_failures", pipeline.store_failures))
        m.scoring_failures.inc(delta("scoring_failures", pipeline.scoring_failures))
        errors = m.triton_children
        errors["timeout"].inc(delta("triton_timeout", triton.timeout))
        errors["unavailable"].inc(delta("triton_unavailable", triton.unavailable))
        errors["breaker_open"].inc(delta("triton_breaker_open", triton.breaker_open))
        batches = m.batch_children
        batches["size"].inc(delta("flush_size", batcher.flush_size))
        batches["deadline"].inc(delta("flush_deadline", batcher.flush_deadline))
        batches["wait"].inc(delta("flush_wait", batcher.flush_wait))
        batches["close"].inc(delta("flush_close", batcher.flush_close))
        m.batch_rows.inc(delta("rows", batcher.rows))
        callers = delta("callers", batcher.callers)
        m.batch_callers.inc(callers)
        rejected = m.rejected_children
        rejected["queue_timeout"].inc(delta("queue_timeouts", batcher.queue_timeouts))
        rejected["queue_full"].inc(delta("queue_full", batcher.queue_full))
        rejected["cancelled"].inc(delta("cancelled", batcher.cancelled))
        m.loop_lag_sheds.inc(delta("loop_lag_sheds", src.admission.shed_by_lag))
        fleet = src.fleet
        m.triton_ejections.inc(delta("triton_ejections", fleet.ejections))
        m.triton_retries.inc(delta("triton_retries", fleet.retries))
        failed = delta("resolution_failures", fleet.resolution_failures)
        m.resolution_children["ok"].inc(max(0, delta("resolutions", fleet.resolutions) - failed))
        m.resolution_children["failed"].inc(failed)
        now = list(batcher.callers_per_batch)
        per_bucket = [max(0, a - b) for a, b in zip(now, self._last_callers_per_batch, strict=True)]
        self._last_callers_per_batch = now
        if any(per_bucket):
            m.callers_per_batch.add(per_bucket, float(callers))

    def _delta(self, key: str, current: int) -> int:
        previous = self._last.get(key, 0)
        self._last[key] = current
        return max(0, current - previous)


def _add(histogram: _BulkHistogram, buckets: _Buckets) -> None:
    counts, total = buckets.take()
    if any(counts):
        histogram.add(counts, total)


# -- Redis shards: round trips and failures per shard (gateway.stores.shards) --


class RedisShardMetrics:
    """Per Redis shard, labelled by node address (host:port; a handful, the cluster's primaries): round
    trip latency, and round trips that failed or ran late (the caller took its store-failure path)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.round_trip = _BulkHistogram(
            "bidgw_redis_round_trip_seconds",
            "One round trip to one Redis shard (a bid's lookup, its holds, a win notice), by shard",
            ["shard"],
            buckets=SHARD_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.errors = Counter(
            "bidgw_redis_errors",
            "Round trips to a Redis shard that failed or ran out of time, by shard (the bid used defaults "
            "and no campaign limits for what that shard holds; a win notice retried or answered 503)",
            ["shard"],
            registry=registry,
        )


class RedisShardExporter:
    """Moves each shard's `ShardStats` into `RedisShardMetrics` (deltas since the last export)."""

    def __init__(self, metrics: RedisShardMetrics, shards: Callable[[], Sequence[Shard]]) -> None:
        self._metrics = metrics
        self._shards = shards
        self._last: dict[str, tuple[list[int], float, int]] = {}

    def export(self) -> None:
        for shard in self._shards():
            stats = shard.stats
            counts, total, errors = list(stats.latency_counts), stats.latency_sum, stats.errors
            last_counts, last_total, last_errors = self._last.get(shard.name, ([0] * len(counts), 0.0, 0))
            self._last[shard.name] = (counts, total, errors)
            added = [max(0, a - b) for a, b in zip(counts, last_counts, strict=True)]
            if any(added):
                self._metrics.round_trip.labels(shard.name).add(added, max(0.0, total - last_total))
            if errors > last_errors:
                self._metrics.errors.labels(shard.name).inc(errors - last_errors)


# -- The catalog plain requests are bid from (gateway.catalog.reloader) --


class CatalogMetrics:
    """Which catalog each worker serves and how its reloads go. The version is a label of an info-style
    gauge (1 for the version served, 0 for one it left): a handful of values over a process's life."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.version = Gauge(
            "bidgw_catalog_version_info",
            "1 for the catalog version a worker serves (0 for versions it served before)",
            ["version"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.loaded_at = Gauge(
            "bidgw_catalog_loaded_timestamp_seconds",
            "When the catalog being served was loaded (epoch seconds); the oldest live worker's",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.creatives = Gauge(
            "bidgw_catalog_creatives",
            "Creatives in the served catalog's index (paused campaigns excluded)",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "bidgw_catalog_reloads",
            "Catalog loads by result: ok (a new version swapped in) or failed (rejected, the old one kept)",
            ["result"],
            registry=registry,
        )
        self.reload_children = {result: self.reloads.labels(result) for result in ("ok", "failed")}


class CatalogExporter:
    """Moves `CatalogHolder.stats()` into `CatalogMetrics` (counter deltas since the last export)."""

    def __init__(self, metrics: CatalogMetrics, stats: Callable[[], CatalogStats]) -> None:
        self._metrics = metrics
        self._stats = stats
        self._version = ""
        self._ok = 0
        self._failed = 0

    def export(self) -> None:
        stats, m = self._stats(), self._metrics
        if stats.version != self._version:
            if self._version:
                m.version.labels(self._version).set(0)
            m.version.labels(stats.version).set(1)
            self._version = stats.version
        m.loaded_at.set(stats.loaded_at)
        m.creatives.set(stats.creatives)
        m.reload_children["ok"].inc(max(0, stats.reloads_ok - self._ok))
        m.reload_children["failed"].inc(max(0, stats.reloads_failed - self._failed))
        self._ok, self._failed = stats.reloads_ok, stats.reloads_failed


# -- HTTP metrics, exposition and multiprocess plumbing --


class _RouteCachingMiddleware(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware, remembering each path's route template: its own lookup matches
    the path against every route on every request (about a third of its cost per bid)."""

    _MAX_CACHED_PATHS: Final = 256  # routes with path parameters would add one entry per distinct path

    def __init__(self, app: ASGIApp, /, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._handlers: dict[str, tuple[str, bool]] = {}

    def _get_handler(self, request: Request) -> tuple[str, bool]:
        path: str = request.scope["path"]
        found = self._handlers.get(path)
        if found is None:
            found = super()._get_handler(request)
            if found[1] and len(self._handlers) < self._MAX_CACHED_PATHS:
                self._handlers[path] = found  # templated only: unknown paths (scans, 404s) are not kept
        return found


class HttpMetrics:
    """`http_requests_total` and `http_request_duration_seconds` (labels handler, method, status), as the
    instrumentator defines them, owned here so the raw bid endpoint records into the same families as the
    instrumentator's middleware does for every FastAPI route: dashboards and SLO rules see one family.

    `record` keeps each label set's children: `labels()` takes a lock and builds a key per call, and the bid
    endpoint records on every bid (measured about 20 us per bid through the instrumentator's own closures,
    which also build a starlette Request and an Info)."""

    _LABELS: Final = ("handler", "method", "status")
    _MAX_CACHED: Final = 256  # bounded: a client choosing odd methods must not grow it without end

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests_total",
            "Total number of requests by method, status and handler.",
            self._LABELS,
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Duration of HTTP requests in seconds",
            self._LABELS,
            buckets=HTTP_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def record(self, handler: str, method: str, status: str, duration_s: float) -> None:
        """One answered request; `status` grouped as the middleware groups it ("2xx", "4xx", ...)."""
        key = (handler, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(*key))
            if len(self._children) < self._MAX_CACHED:
                self._children[key] = children
        children[0].inc()
        children[1].observe(duration_s)

    def instrumentation(self, info: http_metrics.Info) -> None:
        """The instrumentator middleware's hook (every FastAPI route)."""
        self.record(info.modified_handler, info.method, info.modified_status, info.modified_duration)


def instrument_http(app: FastAPI, registry: CollectorRegistry) -> HttpMetrics:
    """RED metrics per route template, status codes grouped (2xx, 4xx, 5xx) and unknown paths ignored, so
    cardinality stays bounded. Returns the metrics, for routes served outside the middleware."""
    metrics = HttpMetrics(registry)
    app.add_middleware(
        _RouteCachingMiddleware,
        should_group_status_codes=True,
        should_ignore_untemplated=True,
        excluded_handlers=["^/metrics$"],
        instrumentations=[metrics.instrumentation],
        registry=registry,
    )
    return metrics


def multiprocess_dir_in_use() -> bool:
    """True when prometheus_client stores values in PROMETHEUS_MULTIPROC_DIR (decided at its import)."""
    return values.ValueClass is not values.MutexValue


def exposition_registry(registry: CollectorRegistry, multiprocess_dir: Path | None) -> CollectorRegistry:
    """What /metrics serves: this app's registry, or, with several workers, every worker's mmap files."""
    if multiprocess_dir is None:
        if multiprocess_dir_in_use():
            raise RuntimeError("prometheus_client is in multiprocess mode but no multiprocess dir is set")
        return registry
    if not multiprocess_dir_in_use():
        raise RuntimeError(
            "PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported "
            "(the serve command sets it before starting workers)"
        )
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    return merged


def add_metrics_route(app: FastAPI, exposed: CollectorRegistry) -> None:
    async def metrics_endpoint(request: Request) -> Response:
        exporter: MetricsExporter | None = getattr(request.app.state, "metrics_exporter", None)
        if exporter is not None:
            exporter.export()  # this worker's values are exact; other workers' at most one interval old
        # Multiprocess mode reads every worker's files: off the event loop.
        body = await asyncio.to_thread(generate_latest, exposed)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)


def prepare_multiprocess_dir(directory: Path) -> None:
    """Create the directory and drop a previous run's files (they would be summed into this run's)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def worker_exited(multiprocess_dir: Path | None) -> None:
    """Remove this worker's live-gauge files, so `livesum`/`livemax` stop counting it."""
    if multiprocess_dir is not None:
        with contextlib.suppress(FileNotFoundError):
            multiprocess.mark_process_dead(os.getpid(), str(multiprocess_dir))  # type: ignore[no-untyped-call]


# -- Notices: the win, bill and loss notices exchanges send to the signed URLs (gateway.api.notices) --

NOTICE_KINDS: Final = ("win", "bill", "loss")
# Every result a notice can have; counted from the start so rates have a denominator.
NOTICE_RESULTS: Final = (
    "recorded",  # billed (win/bill) or loss recorded
    "acknowledged",  # win notice while bill_on=burl: answered, nothing recorded
    "duplicate",
    "already_won",  # a loss notice for a bid already billed
    "unknown_bid",
    "forged",
    "unsubstituted_macro",
    "invalid_price",
    "invalid_reason",
    "price_above_bid",
    "currency_mismatch",
    "malformed",
    "disabled",  # embedded backend: no bid records
    "store_unavailable",
)
# OpenRTB 2.6 section 5.25 Loss Reason Codes; 1000+ are exchange-specific, anything else is "unknown".
LOSS_REASON_CODES: Final = frozenset((*range(11), *range(100, 105), *range(200, 214)))


def loss_reason_label(code: int) -> str:
    """A bounded label for a loss reason code."""
    if code in LOSS_REASON_CODES:
        return str(code)
    return "exchange_specific" if code >= 1000 else "unknown"


class NoticeMetrics:
    """Notices by kind and result, and recorded losses by reason (labels bounded: kinds, results, the
    spec's reason codes). Counted directly: a notice is not on the bid path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.notices = Counter(
            "bidgw_notices",
            "Notices received on the signed notice URLs, by kind (win, bill, loss) and result (recorded, "
            "duplicate, forged, unsubstituted_macro, invalid_price, unknown_bid, ...)",
            ["kind", "result"],
            registry=registry,
        )
        self.losses = Counter(
            "bidgw_notice_losses",
            "Loss notices recorded (once per bid), by OpenRTB 2.6 loss reason code "
            "(exchange_specific: 1000+, unknown: not in the spec)",
            ["reason"],
            registry=registry,
        )
        for kind in NOTICE_KINDS:
            for result in NOTICE_RESULTS:
                self.notices.labels(kind, result)

    def count(self, kind: str, result: str) -> None:
        self.notices.labels(kind, result).inc()

    def loss(self, reason: int) -> None:
        self.losses.labels(loss_reason_label(reason)).inc()
