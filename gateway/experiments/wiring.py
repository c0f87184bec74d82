"""Builds a worker's experiment machinery from Settings: the scorer pool, the router, the watcher of the
experiment file and the shadow scorer; `Experiments.aclose()` stops them in order at shutdown."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import Settings
from gateway.core.ports import Scorer
from gateway.experiments.config import single_arm
from gateway.experiments.pool import ChainFactory, ScorerPool, VersionChain
from gateway.experiments.router import ExperimentRouter
from gateway.experiments.shadow import ShadowAnnotator, ShadowScorer
from gateway.experiments.watcher import ExperimentWatcher
from gateway.scoring.batcher import MicroBatcher
from gateway.scoring.breaker import CircuitBreakerScorer
from gateway.scoring.fleet import TritonFleet
from gateway.scoring.limiter import AdaptiveConcurrencyLimit

__all__ = ["Experiments", "start_experiments", "version_chain_factory"]


def batcher_for(settings: Settings, upstream: CircuitBreakerScorer) -> MicroBatcher:
    """A micro-batcher with the same settings as the default version's (gateway.app)."""
    return MicroBatcher(
        upstream,
        max_rows=settings.batch_max_rows,
        max_wait_s=settings.batch_max_wait_us / 1e6,
        max_concurrent=settings.batch_concurrency,
        expected_latency_s=settings.batch_upstream_latency_us / 1e6,
        limiter=AdaptiveConcurrencyLimit(
            min_limit=settings.batch_concurrency_min, max_limit=settings.batch_concurrency
        )
        if settings.batch_concurrency_mode == "adaptive"
        else None,
    )


def version_chain_factory(settings: Settings, fleet_for: Callable[[str], TritonFleet]) -> ChainFactory:
    """Chains for the versions an experiment adds: fleet (`fleet_for(version)`), breaker, batcher."""

    async def build(version: str) -> VersionChain:
        fleet = fleet_for(version)
        await fleet.start()
        breaker = CircuitBreakerScorer(
            fleet,
            failure_threshold=settings.breaker_failure_threshold,
            reset_timeout_s=settings.breaker_reset_s,
        )
        batcher = batcher_for(settings, breaker)
        return VersionChain(upstream=breaker, live=batcher, closers=[batcher.aclose, fleet.aclose])

    return build


@dataclass(slots=True)
class Experiments:
    pool: ScorerPool
    router: ExperimentRouter
    watcher: ExperimentWatcher | None
    shadow: ShadowScorer | None

    async def aclose(self) -> None:
        if self.watcher is not None:
            await self.watcher.aclose()
        if self.shadow is not None:
            await self.shadow.aclose()
        await self.pool.aclose()


async def start_experiments(
    settings: Settings,
    default_chain: VersionChain,
    factory: ChainFactory,
    annotator: ShadowAnnotator | None,
) -> Experiments:
    """Every bid on `model_version` until `experiment_path` (if set) holds a valid configuration. Shadow
    scoring needs somewhere to write its predictions (`annotator`: the Redis bid records)."""
    default_version = settings.model_version or "default"
    pool = ScorerPool(factory, {default_version: default_chain})
    router = ExperimentRouter(single_arm(default_version), {default_version: default_chain.live})
    watcher = None
    if settings.experiment_path is not None:
        watcher = ExperimentWatcher(
            settings.experiment_path, pool, router, interval_s=settings.experiment_reload_interval_s
        )
        await watcher.poll()  # the configuration in force from the first bid, when Triton is up already
        watcher.start()
    shadow = None
    if annotator is not None:

        def upstream_of(version: str) -> Scorer | None:
            chain = pool.known(version)
            return None if chain is None else chain.upstream

        shadow = ShadowScorer(
            upstream_of,
            annotator,
            max_queued_rows=settings.shadow_max_queued_rows,
            timeout_s=settings.shadow_timeout_ms / 1000.0,
        )
        shadow.start()
    return Experiments(pool, router, watcher, shadow)
