"""`create_app(settings)`: the FastAPI app; its lifespan owns every client (one gRPC channel per worker)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.api import errors, routes
from gateway.api.decode import RequestLimits
from gateway.config import Settings
from gateway.core.currency import CurrencyTable
from gateway.core.pipeline import BidPipeline, PipelineConfig
from gateway.lifecycle import drain_on_sigterm
from gateway.scoring.batcher import MicroBatcher
from gateway.scoring.breaker import CircuitBreakerScorer
from gateway.scoring.fallback import PriorScorer
from gateway.scoring.triton import TritonScorer
from gateway.services import Services
from gateway.stores.embedded import EmbeddedFeatureStore


def pipeline_config(settings: Settings) -> PipelineConfig:
    return PipelineConfig(
        seat=settings.seat,
        default_tmax_s=settings.default_tmax_ms / 1000.0,
        network_margin_s=settings.network_margin_ms / 1000.0,
        server_cap_s=settings.server_cap_ms / 1000.0,
        auction_reserve_s=settings.auction_reserve_ms / 1000.0,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Snapshot parsing is CPU work at start-up, off the loop so health probes still answer.
        store = await asyncio.to_thread(EmbeddedFeatureStore.load, settings.snapshot_dir)
        triton = TritonScorer(
            settings.triton_url, model_name=settings.model_name, model_version=settings.model_version
        )
        await triton.start()
        breaker = CircuitBreakerScorer(
            triton,
            failure_threshold=settings.breaker_failure_threshold,
            reset_timeout_s=settings.breaker_reset_s,
        )
        batcher = MicroBatcher(
            breaker,
            max_rows=settings.batch_max_rows,
            max_wait_s=settings.batch_max_wait_us / 1e6,
            max_concurrent=settings.batch_concurrency,
            expected_latency_s=settings.batch_upstream_latency_us / 1e6,
        )
        currencies = CurrencyTable(settings.currency_rates)
        fallback = PriorScorer() if settings.on_scoring_failure == "priors" else None
        services = Services(
            limits=RequestLimits(
                known_currencies=currencies.codes,
                max_body_bytes=settings.max_body_bytes,
                max_imps=settings.max_imps,
                max_candidates=settings.max_candidates,
            ),
            store=store,
            scorer=batcher,
            pipeline=BidPipeline(store, batcher, currencies, pipeline_config(settings), fallback=fallback),
            max_inflight_bids=settings.max_inflight_bids,
        )
        app.state.services = services
        drain_on_sigterm(services.mark_draining, settings.drain_delay_s)
        try:
            yield
        finally:
            await batcher.aclose()
            await triton.aclose()

    app = FastAPI(
        title="bid-gateway",
        version="0.1.0",
        summary="OpenRTB 2.6 ad ranking in front of NVIDIA Triton",
        lifespan=lifespan,
    )
    app.include_router(routes.router)
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
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
