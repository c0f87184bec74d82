"""Offline ranking metrics in plain numpy (no sklearn at training or test time)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike


def _average_ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks, tied values sharing the mean of their ranks (what makes AUC count a tie as 1/2)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the run each sorted position belongs to.
    run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_ends = np.r_[run_starts[1:], values.size]
    mean_rank = (run_starts + 1 + run_ends) / 2.0  # mean of ranks start+1 .. end
    run_of = np.repeat(np.arange(run_starts.size), run_ends - run_starts)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank[run_of]
    return ranks


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC by the Mann-Whitney rank statistic; ties count half. Needs both classes present."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    rank_sum = float(_average_ranks(s)[y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(labels: ArrayLike, probabilities: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy in nats; probabilities clipped to [eps, 1-eps] so 0 and 1 stay finite."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in shape")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


@dataclass(frozen=True, slots=True)
class CalibrationBin:
    lower: float  # smallest prediction in the bin
    upper: float  # largest prediction in the bin
    count: int
    mean_predicted: float
    observed_rate: float


def calibration(labels: ArrayLike, probabilities: ArrayLike, bins: int = 10) -> list[CalibrationBin]:
    """Equal-count bins by predicted probability (deciles by default): mean prediction vs observed rate."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y.size < bins:
        raise ValueError(f"need at least {bins} rows for {bins} bins, got {y.size}")
    order = np.argsort(p, kind="mergesort")
    return [
        CalibrationBin(
            lower=float(p[chunk[0]]),
            upper=float(p[chunk[-1]]),
            count=int(chunk.size),
            mean_predicted=float(p[chunk].mean()),
            observed_rate=float(y[chunk].mean()),
        )
        for chunk in np.array_split(order, bins)
    ]
