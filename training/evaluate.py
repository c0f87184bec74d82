"""Held-out evaluation: a model's two heads beside the ground truth (Bayes) and the ad-prior baseline.

pCTR is scored on every impression, pCVR on clicked impressions only (it is P(conversion | click)).
The Bayes row scores the true probabilities, the best any model can do on these rows; the baseline
scores each ad's prior (prior_ctr, prior_cvr), which is what the gateway's fallback scorer serves.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core import feature_spec as fs
from training import metrics
from training.synthetic import Logs

Scores = npt.NDArray[np.floating[Any]]


def head_metrics(labels: npt.NDArray[np.int8], scores: Scores, with_calibration: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "auc": round(metrics.auc(labels, scores), 5),
        "logloss": round(metrics.log_loss(labels, scores), 5),
        "mean_predicted": round(float(np.mean(scores)), 5),
        "observed_rate": round(float(np.mean(labels)), 5),
    }
    if with_calibration:
        result["calibration"] = [
            {key: round(value, 6) if isinstance(value, float) else value for key, value in asdict(b).items()}
            for b in metrics.calibration(labels, scores)
        ]
    return result


def evaluate_scores(logs: Logs, pctr: Scores, pcvr: Scores, with_calibration: bool = True) -> dict[str, Any]:
    clicked = logs.click == 1
    return {
        "pctr": head_metrics(logs.click, pctr, with_calibration),
        "pcvr": head_metrics(logs.conversion[clicked], pcvr[clicked], with_calibration),
    }


def reference_metrics(logs: Logs) -> dict[str, Any]:
    """The Bayes (ground truth) and ad-prior baseline rows of the model card."""
    dense = logs.dense
    return {
        "bayes": evaluate_scores(logs, logs.true_pctr, logs.true_pcvr, with_calibration=False),
        "ad_prior_baseline": evaluate_scores(
            logs,
            dense[:, fs.DENSE_INDEX["ad_prior_ctr"]],
            dense[:, fs.DENSE_INDEX["ad_prior_cvr"]],
            with_calibration=False,
        ),
    }
