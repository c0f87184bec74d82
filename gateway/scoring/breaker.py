"""A circuit breaker around the model server (purgatory's asyncio breaker).

After `failure_threshold` consecutive failed Triton calls the circuit opens: calls fail at once with
ScoringUnavailable (the pipeline falls back to priors) instead of each waiting out its deadline against a
dead or drowning server. After `reset_timeout_s` the next calls go through as probes (half-open): one
success closes the circuit, one failure opens it again. So a restarted Triton is back in use within about
`reset_timeout_s` plus one call, without restarting the gateway.

It wraps the Triton scorer *below* the micro-batcher, so it counts Triton calls (batches), not bids.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from gateway.core.ports import Scorer, Scores
from gateway.errors import ScoringError, ScoringUnavailable

CIRCUIT: Final = "triton"
BreakerState = Literal["closed", "half-opened", "opened"]


class CircuitBreakerScorer:
    def __init__(self, upstream: Scorer, *, failure_threshold: int = 5, reset_timeout_s: float = 1.0) -> None:
        if failure_threshold < 1 or reset_timeout_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_timeout_s > 0")
        self._upstream = upstream
        # Only the gateway's own scoring errors count as failures; a bug or a cancellation propagates
        # without tripping the breaker, so it is seen rather than masked as an outage.
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=failure_threshold,
            default_ttl=reset_timeout_s,
            exclude=[(BaseException, lambda exc: not isinstance(exc, ScoringError))],
        )
        self._state: BreakerState = "closed"
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores:
        breaker = await self._factory.get_breaker(CIRCUIT)
        try:
            async with breaker:
                return await self._upstream.score(cat_ids, dense, deadline)
        except OpenedState as exc:
            raise ScoringUnavailable(
                "circuit breaker open: Triton failed repeatedly; probing again soon"
            ) from exc
        finally:
            self._note(breaker.context.state)

    def _note(self, state: str) -> None:
        if state == "opened" and self._state != "opened":
            self.opened_count += 1
        self._state = state  # type: ignore[assignment]

    async def ready(self) -> bool:
        return await self._upstream.ready()
