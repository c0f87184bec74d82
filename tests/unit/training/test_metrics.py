from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from training import metrics


def _pairwise_auc(labels: npt.NDArray[Any], scores: npt.NDArray[Any]) -> float:
    """AUC by its definition: P(score of a positive > score of a negative), ties counting 1/2."""
    pos = scores[labels == 1][:, None]
    neg = scores[labels == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def test_auc_hand_computed() -> None:
    # Pairs (pos, neg): (0.35, 0.1) win, (0.35, 0.4) loss, (0.8, 0.1) win, (0.8, 0.4) win -> 3/4.
    assert metrics.auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_auc_counts_ties_as_half() -> None:
    # Pairs: (0.5 vs 0.5) tie = 0.5, (0.5 vs 0.2) 1, (0.9 vs 0.5) 1, (0.9 vs 0.2) 1 -> 3.5/4.
    assert metrics.auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(0.875)
    assert metrics.auc(np.array([0, 1, 1, 0]), np.full(4, 0.3)) == pytest.approx(0.5)


def test_auc_extremes() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert metrics.auc(labels, scores) == pytest.approx(1.0)
    assert metrics.auc(labels, -scores) == pytest.approx(0.0)


def test_auc_matches_pairwise_definition_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=600)
    scores = rng.integers(0, 12, size=600).astype(np.float64)  # few distinct values: many ties
    assert metrics.auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


def test_auc_rejects_single_class_and_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="positive and one negative"):
        metrics.auc(np.zeros(3), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="shape"):
        metrics.auc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))


def test_log_loss_hand_computed() -> None:
    expected = -(math.log(0.8) + math.log(0.7)) / 2
    assert metrics.log_loss(np.array([1, 0]), np.array([0.8, 0.3])) == pytest.approx(expected)


def test_log_loss_stays_finite_at_certain_mistakes() -> None:
    loss = metrics.log_loss(np.array([1, 0]), np.array([0.0, 1.0]))
    assert math.isfinite(loss)
    assert loss == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_calibration_deciles() -> None:
    probabilities = np.repeat(np.linspace(0.05, 0.95, 10), 10)  # 100 rows, 10 per level
    labels = np.zeros(100)
    labels[90:] = 1  # only the top decile converts
    bins = metrics.calibration(labels, probabilities)
    assert len(bins) == 10
    assert [b.count for b in bins] == [10] * 10
    assert bins[0].mean_predicted == pytest.approx(0.05)
    assert bins[-1].mean_predicted == pytest.approx(0.95)
    assert [b.observed_rate for b in bins] == [0.0] * 9 + [1.0]
    assert bins[3].lower <= bins[3].mean_predicted <= bins[3].upper


def test_calibration_needs_a_row_per_bin() -> None:
    with pytest.raises(ValueError, match="at least 10 rows"):
        metrics.calibration(np.array([0, 1]), np.array([0.1, 0.2]))
