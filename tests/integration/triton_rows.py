"""Valid random model rows, and small helpers to call the real Triton and read its metrics."""

from __future__ import annotations

import urllib.request

import numpy as np
import numpy.typing as npt
from prometheus_client.parser import text_string_to_metric_families

from gateway.core import feature_spec


def random_rows(n: int, seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    cat = (rng.random((n, len(feature_spec.BUCKETS))) * feature_spec.BUCKETS).astype(np.int64)
    dense = np.empty((n, len(feature_spec.DENSE_FIELDS)), dtype=np.float32)
    dense[:, 0] = rng.beta(2, 60, n)  # user_ctr_hist
    dense[:, 1] = rng.uniform(0, 6, n)  # user_activity
    dense[:, 2] = rng.beta(2, 60, n)  # ad_prior_ctr
    dense[:, 3] = rng.beta(2, 20, n)  # ad_prior_cvr
    hours = rng.integers(0, 24, n)
    dense[:, 4] = np.sin(2 * np.pi * hours / 24)
    dense[:, 5] = np.cos(2 * np.pi * hours / 24)
    cat[:, feature_spec.CAT_INDEX["hour"]] = hours
    return cat, dense


def metric_values(metrics_url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric family, keyed by its sorted labels."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    values: dict[tuple[tuple[str, str], ...], float] = {}
    # The parser names counter samples `<family>_total`; match the family, as Triton names it.
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name in (name, f"{name}_total"):
                values[tuple(sorted(sample.labels.items()))] = sample.value
    return values
