"""The ranking model's input contract, shared by training and serving.

The model card (`triton_models/ranker/README.md`) documents the same spec for people; this module is the
spec for code. Training (`training/`) and the gateway's feature assembly both hash through `hash_value`, so
a value seen in training lands in the same embedding bucket at serving time, in every process (xxh3 is
stable across processes and machines, unlike Python's salted `hash()`).

Rows are two arrays:
  cat_ids  INT64 [N, len(CATEGORICAL_FIELDS)]  bucket index per field, in [0, field.buckets)
  dense    FP32  [N, len(DENSE_FIELDS)]        documented scalars
and the model answers pctr FP32 [N, 1] = P(click | impression), pcvr FP32 [N, 1] = P(conversion | click).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import xxhash

MODEL_NAME: Final = "ranker"
INPUT_CAT: Final = "cat_ids"
INPUT_DENSE: Final = "dense"
OUTPUT_PCTR: Final = "pctr"
OUTPUT_PCVR: Final = "pcvr"

# What a missing value hashes as; one bucket per field absorbs every unknown.
MISSING: Final = ""


@dataclass(frozen=True, slots=True)
class CategoricalField:
    name: str
    buckets: int


# Order is the column order of `cat_ids`. Changing it (or a bucket count) is a new model input contract.
CATEGORICAL_FIELDS: Final[tuple[CategoricalField, ...]] = (
    CategoricalField("user_id", 1 << 15),
    CategoricalField("user_age", 16),
    CategoricalField("user_gender", 8),
    CategoricalField("user_interest1", 64),
    CategoricalField("user_interest2", 64),
    CategoricalField("ad_id", 1 << 12),
    CategoricalField("campaign_id", 1 << 10),
    CategoricalField("advertiser", 1 << 10),
    CategoricalField("ad_category", 64),
    CategoricalField("publisher", 1 << 12),
    CategoricalField("pub_category", 64),
    CategoricalField("device_type", 16),
    CategoricalField("os", 32),
    CategoricalField("country", 256),
    CategoricalField("tagid", 1 << 10),
    CategoricalField("ad_size", 64),
    CategoricalField("position", 16),
    CategoricalField("hour", 24),
)
CAT_INDEX: Final[dict[str, int]] = {field.name: i for i, field in enumerate(CATEGORICAL_FIELDS)}
BUCKETS: Final[npt.NDArray[np.int64]] = np.array([f.buckets for f in CATEGORICAL_FIELDS], dtype=np.int64)

# Order is the column order of `dense`.
DENSE_FIELDS: Final[tuple[str, ...]] = (
    "user_ctr_hist",  # the user's observed historical CTR (store), global mean when unknown
    "user_activity",  # log1p(the user's impressions in the last 30 days) (store), 0 when unknown
    "ad_prior_ctr",  # the ad's historical CTR (ad store); also the fallback scorer's prior
    "ad_prior_cvr",  # the ad's historical CVR per click (ad store)
    "hour_sin",  # sin(2*pi*hour/24): hour of day (UTC) as a smooth cycle
    "hour_cos",  # cos(2*pi*hour/24)
)
DENSE_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(DENSE_FIELDS)}

# Defaults for unknown users and ads; the generator's population means, so an unknown row scores average.
DEFAULT_USER_CTR: Final = 0.03
DEFAULT_USER_ACTIVITY: Final = 0.0
DEFAULT_AD_CTR: Final = 0.03
DEFAULT_AD_CVR: Final = 0.08


def hash_value(field_index: int, value: str) -> int:
    """Bucket of `value` for the categorical field at `field_index` (xxh3-64, seed = field index)."""
    return (
        xxhash.xxh3_64_intdigest(value.encode("utf-8"), seed=field_index)
        % CATEGORICAL_FIELDS[field_index].buckets
    )


def hash_field(name: str, value: str) -> int:
    """`hash_value` by field name."""
    return hash_value(CAT_INDEX[name], value)


def hash_vocabulary(name: str, values: list[str]) -> npt.NDArray[np.int64]:
    """Buckets of many values of one field (hash a vocabulary once, then gather by index)."""
    index = CAT_INDEX[name]
    return np.fromiter((hash_value(index, v) for v in values), dtype=np.int64, count=len(values))


def hour_bucket(hour: int) -> int:
    """The hour field is the hour itself, not a hash: 24 values, one bucket each."""
    if not 0 <= hour < 24:
        raise ValueError(f"hour must be in [0, 24), got {hour}")
    return hour


def hour_cycle(hour: float) -> tuple[float, float]:
    angle = 2.0 * math.pi * hour / 24.0
    return math.sin(angle), math.cos(angle)


def iab_tier1(category: str) -> str:
    """'IAB3-1' -> 'IAB3': the model sees tier-1 categories; sub-categories are too sparse to learn."""
    return category.split("-", 1)[0].strip().upper()


def ad_size(width: int | None, height: int | None) -> str:
    return f"{width}x{height}" if width and height else MISSING
