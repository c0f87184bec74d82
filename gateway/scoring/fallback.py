"""Scores from priors when the model cannot answer: each ad's historical CTR and CVR.

The priors are already in every row the gateway assembles (the ad store's `ad_prior_ctr`/`ad_prior_cvr`
dense features), so the fallback needs no extra lookup and costs two column reads.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.core import feature_spec
from gateway.core.ports import Scores

PRIORS_VERSION: Final = "priors"
_CTR: Final = feature_spec.DENSE_INDEX["ad_prior_ctr"]
_CVR: Final = feature_spec.DENSE_INDEX["ad_prior_cvr"]


class PriorScorer:
    """An ImmediateScorer: never fails, never waits; the pipeline flags what it scored as degraded."""

    def score_now(self, dense: npt.NDArray[np.float32]) -> Scores:
        return Scores(
            pctr=np.ascontiguousarray(dense[:, _CTR]),
            pcvr=np.ascontiguousarray(dense[:, _CVR]),
            model_version=PRIORS_VERSION,
        )
