"""What the data plane needs to run model experiments, as small Protocols (implemented in experiments/).

A `ModelRouter` says, per bid, which arm it is in and which Scorer (one per model version, each with its
own micro-batcher) scores it. A `ShadowSink` takes the winners' rows of a bid to score them again on the
shadow version later: `offer` must be O(1) and never block or raise, since it runs on the bid's path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from gateway.core.ports import Scorer


@dataclass(frozen=True, slots=True)
class ModelRoute:
    arm: str  # "<experiment>/<arm>": what ext.experiment and the calibration metrics say
    version: str  # the model version the arm scores with
    scorer: Scorer
    shadow_version: str | None = None  # also score this version in shadow when the sampler says so


class ModelRouter(Protocol):
    def route(self, user_key: str | None, request_id: str) -> ModelRoute: ...


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """The model inputs of a bid's winners (rows in `bid_ids` order) and the bid records to annotate."""

    version: str
    cat_ids: npt.NDArray[np.int64]
    dense: npt.NDArray[np.float32]
    bid_ids: Sequence[str]


class ShadowSink(Protocol):
    def offer(self, job: ShadowJob) -> bool:
        """Queue the job if there is room; False when it was dropped (sampling or a full queue)."""
        ...
