"""Metrics of the experiment machinery: shadow scoring's queue and failures, configuration reloads.

Exported like the other plain counters (deltas of `ShadowStats` / `ExperimentStats` into real counters,
`ExperimentExporter.export` runs with the MetricsExporter). The calibration counters themselves are in
`gateway.observability.calibration`, fed by the event routes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from gateway.experiments.shadow import ShadowStats
from gateway.experiments.watcher import ExperimentStats

__all__ = ["ExperimentExporter", "ExperimentMetrics"]


class ExperimentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.shadow_jobs = Counter(
            "bidgw_shadow_jobs",
            "Sampled bids offered to shadow scoring, by outcome: queued, dropped (queue full)",
            ["outcome"],
            registry=registry,
        )
        self.shadow_rows = Counter(
            "bidgw_shadow_rows", "Winner rows scored on the shadow version", registry=registry
        )
        self.shadow_failures = Counter(
            "bidgw_shadow_failures",
            "Shadow scoring requests that failed (Triton or Redis)",
            registry=registry,
        )
        self.reloads = Counter(
            "bidgw_experiment_reloads",
            "Experiment configuration loads by result: installed, rejected (invalid or version not ready)",
            ["result"],
            registry=registry,
        )


class ExperimentExporter:
    def __init__(
        self, metrics: ExperimentMetrics, shadow: ShadowStats | None, watcher: ExperimentStats | None
    ) -> None:
        self._metrics = metrics
        self._shadow = shadow
        self._watcher = watcher
        self._last: dict[str, int] = {}

    def _delta(self, key: str, current: int) -> int:
        previous = self._last.get(key, 0)
        self._last[key] = current
        return max(0, current - previous)

    def export(self) -> None:
        m = self._metrics
        if self._shadow is not None:
            s = self._shadow
            dropped = self._delta("dropped", s.dropped)
            m.shadow_jobs.labels("queued").inc(max(0, self._delta("offered", s.offered) - dropped))
            m.shadow_jobs.labels("dropped").inc(dropped)
            m.shadow_rows.inc(self._delta("rows", s.scored_rows))
            m.shadow_failures.inc(self._delta("failed", s.failed))
        if self._watcher is not None:
            m.reloads.labels("installed").inc(self._delta("loaded", self._watcher.loaded))
            m.reloads.labels("rejected").inc(self._delta("rejected", self._watcher.rejected))
