"""Count failed Triton calls by kind, below the micro-batcher: one count per Triton request, not per bid.

`ErrorCountingScorer` wraps the circuit breaker (batcher -> this -> breaker -> Triton) and only looks at
exceptions on their way up, so a successful call pays one extra await frame per batch and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from purgatory.domain.model import OpenedState

from gateway.core.ports import Scorer, Scores
from gateway.errors import ScoringError, ScoringTimeout


@dataclass(slots=True)
class TritonErrorCounts:
    """Plain counters, exported by `metrics.MetricsExporter`."""

    timeout: int = 0  # the deadline passed before Triton answered (or Triton's queue timed it out)
    unavailable: int = 0  # unreachable, model not ready, bad answer
    breaker_open: int = 0  # refused at once by the open circuit breaker, Triton not called


class ErrorCountingScorer:
    def __init__(self, upstream: Scorer) -> None:
        self._upstream = upstream
        self.counts = TritonErrorCounts()

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores:
        try:
            return await self._upstream.score(cat_ids, dense, deadline)
        except ScoringTimeout:
            self.counts.timeout += 1
            raise
        except ScoringError as exc:
            # The breaker raises ScoringUnavailable from purgatory's OpenedState when it refuses a call.
            if isinstance(exc.__cause__, OpenedState):
                self.counts.breaker_open += 1
            else:
                self.counts.unavailable += 1
            raise

    async def ready(self) -> bool:
        return await self._upstream.ready()
