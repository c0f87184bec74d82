"""`create_app(settings)`: the FastAPI app; its lifespan owns every client (one gRPC channel per worker)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.api import errors, events, feedback, notices, routes
from gateway.api.admission import LoopLagAdmission
from gateway.api.bid_endpoint import BID_PATH, BidEndpoint
from gateway.api.bid_limit import BidConcurrencyLimit
from gateway.api.decode import RequestLimits
from gateway.api.notices import NoticeService
from gateway.catalog.redis_catalog import RedisCatalogSource
from gateway.catalog.reloader import CatalogHolder, CatalogReloader, CatalogSource, FileCatalogSource
from gateway.catalog.retrieval import CatalogRetriever
from gateway.config import Settings
from gateway.core.currency import CurrencyTable
from gateway.core.pacing import PacingParams
from gateway.core.pipeline import BidPipeline, PipelineConfig
from gateway.experiments.pool import VersionChain
from gateway.experiments.wiring import start_experiments, version_chain_factory
from gateway.heap import settle_startup_heap
from gateway.lifecycle import drain_on_sigterm
from gateway.markup.native import native_fits
from gateway.markup.render import CatalogBidRenderer
from gateway.notices.setup import notice_keyring, notice_signer
from gateway.observability.calibration import CalibrationMetrics
from gateway.observability.experiment_metrics import ExperimentExporter, ExperimentMetrics
from gateway.observability.logging import BidLog, RequestIdMiddleware
from gateway.observability.metrics import (
    BidTally,
    CatalogExporter,
    CatalogMetrics,
    GatewayMetrics,
    MetricsExporter,
    NoticeMetrics,
    RedisShardExporter,
    RedisShardMetrics,
    StatsSources,
    add_metrics_route,
    exposition_registry,
    instrument_http,
    worker_exited,
)
from gateway.observability.triton_errors import ErrorCountingScorer
from gateway.scoring.batcher import MicroBatcher
from gateway.scoring.breaker import CircuitBreakerScorer
from gateway.scoring.fallback import PriorScorer
from gateway.scoring.fleet import ServerScorer, TritonFleet
from gateway.scoring.limiter import AdaptiveConcurrencyLimit
from gateway.scoring.targets import parse_target
from gateway.scoring.triton import TritonScorer
from gateway.scoring.triton_http import TritonHttpScorer
from gateway.services import Services
from gateway.stores.embedded import EmbeddedFeatureStore
from gateway.stores.feedback import FeedbackLedger
from gateway.stores.redis_store import RedisFeatureStore


def triton_fleet(settings: Settings) -> TritonFleet:
    """Every Triton server behind `triton_url`, each called over `triton_protocol` (gateway.scoring.fleet)."""

    def connect(address: str) -> ServerScorer:
        if settings.triton_protocol == "http":
            return TritonHttpScorer(
                address,
                model_name=settings.model_name,
                model_version=settings.model_version,
                queue_margin_s=settings.batch_upstream_latency_us / 1e6,
                max_connections=settings.triton_http_connections,
            )
        return TritonScorer(
            address,
            model_name=settings.model_name,
            model_version=settings.model_version,
            queue_margin_s=settings.batch_upstream_latency_us / 1e6,
        )

    return TritonFleet(
        parse_target(settings.triton_url),
        connect,
        resolve_interval_s=settings.triton_resolve_interval_s,
        probe_interval_s=settings.triton_probe_interval_s,
        eject_after_silent=settings.triton_eject_after_silent,
    )


def pipeline_config(settings: Settings) -> PipelineConfig:
    return PipelineConfig(
        seat=settings.seat,
        default_tmax_s=settings.default_tmax_ms / 1000.0,
        network_margin_s=settings.network_margin_ms / 1000.0,
        server_cap_s=settings.server_cap_ms / 1000.0,
        auction_reserve_s=settings.auction_reserve_ms / 1000.0,
    )


async def _open_store(
    settings: Settings,
) -> tuple[EmbeddedFeatureStore | RedisFeatureStore, RedisFeatureStore | None]:
    """The feature store by `store_backend`, and the campaign-state store (Redis only)."""
    if settings.store_backend == "redis":
        # No I/O here: a gateway starts, and bids on defaults, while Redis is still down.
        redis = RedisFeatureStore.connect(
            settings.redis_url,
            timeout_s=settings.redis_timeout_ms / 1000.0,
            connect_timeout_s=settings.redis_connect_timeout_ms / 1000.0,
            max_connections=settings.redis_max_connections,
            cache_size=settings.store_cache_size,
            cache_ttl_s=settings.store_cache_ttl_s,
            bid_ttl_s=settings.bid_ttl_s,
            win_dedupe_ttl_s=settings.win_dedupe_ttl_s,
            win_timeout_s=settings.redis_win_timeout_ms / 1000.0,
            win_replicas=settings.redis_win_replicas,
        )
        return redis, redis
    # Snapshot parsing is CPU work at start-up, off the loop so health probes still answer.
    return await asyncio.to_thread(EmbeddedFeatureStore.load, settings.snapshot_dir), None


async def _open_catalog(
    settings: Settings, campaign_store: RedisFeatureStore | None
) -> tuple[CatalogRetriever, CatalogReloader] | None:
    """The catalog plain requests are bid from, loaded (a bad catalog fails the start, naming its line) and
    reloaded every `catalog_reload_interval_s`; None when `catalog_source` is off."""
    if settings.catalog_source == "off":
        return None
    source: CatalogSource
    if settings.catalog_source == "redis":
        assert campaign_store is not None  # Settings refuses catalog_source=redis without the redis backend
        source = RedisCatalogSource(campaign_store.shards)
    else:
        source = FileCatalogSource(settings.catalog_path)
    holder = CatalogHolder()
    reloader = CatalogReloader(holder, source, interval_s=settings.catalog_reload_interval_s)
    await reloader.load_initial()  # the index is built in a thread: health probes still answer
    reloader.start()
    retriever = CatalogRetriever(
        holder, seat=settings.seat, top_k=settings.retrieval_top_k, native_fits=native_fits
    )
    return retriever, reloader


class GatewayApp(FastAPI):
    """FastAPI, with POST /v1/bid handed to the raw `BidEndpoint` before routing and middleware (see
    `gateway.api.bid_endpoint` for why); every other request takes FastAPI's usual path."""

    bid_endpoint: BidEndpoint | None = None  # set by create_app, once the HTTP metrics exist

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.bid_endpoint
        if (
            endpoint is not None
            and scope["type"] == "http"
            and scope["path"] == BID_PATH
            and scope["method"] == "POST"
        ):
            await endpoint(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> GatewayApp:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Snapshot parsing is CPU work at start-up, off the loop so health probes still answer.
        store, campaign_store = await _open_store(settings)
        triton = triton_fleet(settings)
        await triton.start()
        breaker = CircuitBreakerScorer(
            triton,
            failure_threshold=settings.breaker_failure_threshold,
            reset_timeout_s=settings.breaker_reset_s,
        )
        counted = ErrorCountingScorer(breaker)
        batcher = MicroBatcher(
            counted,
            max_rows=settings.batch_max_rows,
            max_wait_s=settings.batch_max_wait_us / 1e6,
            max_concurrent=settings.batch_concurrency,
            expected_latency_s=settings.batch_upstream_latency_us / 1e6,
            limiter=AdaptiveConcurrencyLimit(
                min_limit=settings.batch_concurrency_min,
                max_limit=settings.batch_concurrency,
            )
            if settings.batch_concurrency_mode == "adaptive"
            else None,
        )
        currencies = CurrencyTable(settings.currency_rates)
        admission = LoopLagAdmission(
            target_s=settings.overload_lag_target_ms / 1000.0,
            interval_s=settings.overload_lag_interval_ms / 1000.0,
        )
        admission.start()
        fallback = PriorScorer() if settings.on_scoring_failure == "priors" else None
        catalog = await _open_catalog(settings, campaign_store)
        renderer = (
            CatalogBidRenderer(
                notice_signer(settings, app.state.notices.keyring),
                currencies,  # the pipeline's own: the notice URLs sign the response's currency
                notice_ttl_s=settings.notice_ttl_s,
            )
            if catalog is not None
            else None
        )
        # Experiments: per-version chains beside this default one, the router, shadow scoring.
        feedback_ledger = (
            FeedbackLedger(campaign_store.shards, timeout_s=settings.redis_win_timeout_ms / 1000.0)
            if campaign_store is not None
            else None
        )
        experiments = await start_experiments(
            settings,
            VersionChain(upstream=counted, live=batcher),
            version_chain_factory(
                settings, lambda version: triton_fleet(settings.model_copy(update={"model_version": version}))
            ),
            feedback_ledger,
        )
        pipeline = BidPipeline(
            store,
            batcher,
            currencies,
            pipeline_config(settings),
            fallback=fallback,
            campaigns=campaign_store,
            pacing_params=PacingParams(
                horizon_s=settings.pacing_horizon_s, hourly_weights=settings.pacing_hourly_weights
            ),
            catalog=catalog[0] if catalog is not None else None,
            renderer=renderer,
            router=experiments.router,
            shadow=experiments.shadow,
        )
        services = Services(
            limits=RequestLimits(
                known_currencies=currencies.codes,
                max_body_bytes=settings.max_body_bytes,
                max_imps=settings.max_imps,
                max_candidates=settings.max_candidates,
                candidates_required=catalog is None,
            ),
            store=store,
            scorer=batcher,
            pipeline=pipeline,
            max_inflight_bids=settings.max_inflight_bids,
            bid_limit=BidConcurrencyLimit(
                min_limit=settings.bid_concurrency_min,
                max_limit=settings.max_inflight_bids,
                tolerance=settings.bid_concurrency_tolerance,
                interval_s=settings.bid_concurrency_interval_ms / 1000.0,
                headroom=settings.bid_concurrency_headroom,
                burst=settings.bid_concurrency_burst,
            )
            if settings.bid_concurrency_mode == "adaptive"
            else None,
            bids_without_model=fallback is not None,
            admission=admission,
            trust_request_start=settings.trust_request_start,
            plain_nobid_status=settings.plain_nobid_status,
            tally=BidTally(),
            bid_log=BidLog(settings.log_bid_sample_rate),
            ledger=campaign_store.ledger if campaign_store is not None else None,
            feedback=feedback_ledger,
            calibration=calibration_metrics,
        )
        exporter = MetricsExporter(
            gateway_metrics,
            services.tally,
            StatsSources(
                store=store.stats,
                batcher=batcher.stats,
                pipeline=pipeline.counters,
                triton_errors=counted.counts,
                fleet=triton.stats,
                admission=admission.stats,
            ),
            inflight=lambda: services.inflight_bids,
            shed=lambda: services.shed_bids,
            bid_concurrency_limit=lambda: services.bid_concurrency_limit,
            bid_limit_standing_queues=lambda: (
                services.bid_limit.standing_queues if services.bid_limit is not None else 0
            ),
            breaker_state=lambda: breaker.state,
            breaker_opens=lambda: breaker.opened_count,
            also=[
                *(
                    [RedisShardExporter(shard_metrics, campaign_store.shards.all_nodes).export]
                    if campaign_store is not None and shard_metrics is not None
                    else []
                ),
                *([CatalogExporter(catalog_metrics, catalog[1].holder.stats).export] if catalog else []),
                ExperimentExporter(
                    experiment_metrics,
                    experiments.shadow.stats if experiments.shadow is not None else None,
                    experiments.watcher.stats if experiments.watcher is not None else None,
                ).export,
            ],
        )
        app.state.services = services
        app.state.metrics_exporter = exporter
        settle_startup_heap()
        export_task = asyncio.create_task(exporter.run(settings.metrics_sync_interval_s))
        # Connections and scripts ready before the first bids need them (in the background: see warm_up).
        warm_up = asyncio.create_task(campaign_store.shards.warm_up()) if campaign_store is not None else None
        drain_on_sigterm(services.mark_draining, settings.drain_delay_s)
        try:
            yield
        finally:
            export_task.cancel()
            if warm_up is not None:
                warm_up.cancel()
            admission.stop()
            if catalog is not None:
                await catalog[1].stop()
            with contextlib.suppress(asyncio.CancelledError):
                await export_task
            await experiments.aclose()
            await batcher.aclose()
            await triton.aclose()
            if campaign_store is not None:
                await campaign_store.aclose()
            exporter.export()
            worker_exited(settings.prometheus_multiproc_dir)

    app = GatewayApp(
        title="bid-gateway",
        version="0.1.0",
        summary="OpenRTB 2.6 ad ranking in front of NVIDIA Triton",
        lifespan=lifespan,
    )
    # Middleware order: the request id is set outermost, so the HTTP metrics and every log line see it.
    registry = CollectorRegistry(auto_describe=True)
    gateway_metrics = GatewayMetrics(registry)
    catalog_metrics = CatalogMetrics(registry)
    calibration_metrics = CalibrationMetrics(registry)
    experiment_metrics = ExperimentMetrics(registry)
    # Per Redis shard, only with Redis: an embedded gateway exports no empty families for it.
    shard_metrics = RedisShardMetrics(registry) if settings.store_backend == "redis" else None
    http_metrics = instrument_http(app, registry)
    app.add_middleware(RequestIdMiddleware)
    app.bid_endpoint = BidEndpoint(lambda: getattr(app.state, "services", None), http_metrics)
    # Registered for FastAPI's routing only so other methods on the path get 405: GatewayApp.__call__ takes
    # every POST to this path first (the gateway is served at the root; no root_path).
    app.router.routes.append(Route(BID_PATH, app.bid_endpoint, methods=["POST"], include_in_schema=False))
    app.include_router(routes.router)
    app.include_router(events.router)
    # Keys are read (and checked) here, at start: a gateway that cannot verify its notices does not start.
    # The catalog renderer signs with the same keyring: app.state.notices.keyring.
    notices.install(app, NoticeService(notice_keyring(settings), settings.bill_on, NoticeMetrics(registry)))
    app.include_router(feedback.router)
    add_metrics_route(app, exposition_registry(registry, settings.prometheus_multiproc_dir))
    errors.install(app)
    _attach_msgspec_schemas(app)
    return app


def _attach_msgspec_schemas(app: FastAPI) -> None:
    """Merge the msgspec-generated OpenRTB schemas into FastAPI's generated document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            document.setdefault("components", {}).setdefault("schemas", {}).update(routes.OPENAPI_COMPONENTS)
            # Served outside FastAPI's routing, so described by hand; first, as it always was.
            document["paths"] = {BID_PATH: {"post": routes.BID_OPERATION}, **document["paths"]}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
