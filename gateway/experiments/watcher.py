"""Reload the experiment configuration from a file (a ConfigMap mount in the chart) without a restart.

Every `interval_s` the watcher looks at the file's modification time and size; on a change it parses and
validates the document (`config.decode_experiment`), makes sure every version it names has a scoring
chain whose model Triton reports ready, and only then installs it in the router. A bad document, or one
naming a version Triton does not serve, never replaces the configuration in force: it is logged, counted
(`ExperimentStats.rejected`) and tried again at the next interval (Triton may still be loading the model).

A missing file keeps whatever is in force (at start: every bid on `model_version`, arm "none/default"):
deleting a ConfigMap key by mistake must not end an experiment mid-way. Roll back by writing the control
at 100 % (docs/experiments.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from gateway.core.ports import Scorer
from gateway.errors import InvalidRequest
from gateway.experiments.config import ExperimentConfig, decode_experiment
from gateway.experiments.pool import ScorerPool
from gateway.experiments.router import ExperimentRouter

__all__ = ["ExperimentStats", "ExperimentWatcher"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ExperimentStats:
    loaded: int = 0  # configurations installed
    rejected: int = 0  # attempts refused (invalid, or a version not ready)
    last_error: str = ""


class ExperimentWatcher:
    def __init__(
        self, path: Path, pool: ScorerPool, router: ExperimentRouter, *, interval_s: float = 5.0
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self.stats = ExperimentStats()
        self._pool = pool
        self._router = router
        self._seen: tuple[float, int] | None = None  # (mtime, size) last installed or refused for good
        self._task: asyncio.Task[None] | None = None

    async def poll(self) -> bool:
        """Look once; True when a new configuration was installed."""
        try:
            stat = await asyncio.to_thread(self.path.stat)
        except FileNotFoundError:
            return False
        except OSError as exc:
            return self._refuse(f"{self.path}: {exc}")
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._seen:
            return False
        try:
            raw = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:  # e.g. a ConfigMap's symlink swapped between stat and read: next interval
            return self._refuse(f"{self.path}: {exc}")
        try:
            config = decode_experiment(raw)
        except InvalidRequest as exc:
            self._seen = stamp  # the same bytes will not become valid: wait for the next edit
            return self._refuse(f"{self.path}: {exc.message}")
        scorers = await self._ready_scorers(config)
        if scorers is None:
            return False  # not marked seen: retried next interval, once Triton has loaded the version
        self._router.install(config, scorers)
        self._seen = stamp
        self.stats.loaded += 1
        log.info(
            "experiment %r installed: %s", config.name, [(a.name, a.version, a.weight) for a in config.arms]
        )
        return True

    async def _ready_scorers(self, config: ExperimentConfig) -> dict[str, Scorer] | None:
        scorers: dict[str, Scorer] = {}
        for version in sorted(config.versions):
            chain = await self._pool.chain(version)
            if not await chain.live.ready():
                self._refuse(f"{self.path}: model version {version!r} is not ready on Triton")
                return None
            scorers[version] = chain.live
        return scorers

    def _refuse(self, message: str) -> bool:
        self.stats.rejected += 1
        self.stats.last_error = message
        log.error("experiment configuration refused, keeping the one in force: %s", message)
        return False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="experiment-watcher")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.interval_s)
