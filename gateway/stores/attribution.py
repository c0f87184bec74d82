"""The model attribution a bid record carries: which version and arm priced it, and what they predicted.

The reserve script writes the live fields with the record (`mv`, `ar`, `pc`, `pv`, `bt`); the shadow
scorer adds `sv`, `sc`, `sp` afterwards when the bid was sampled for shadow scoring. Win, click and
conversion notices read them back to feed the calibration counters. A record written before this
existed (or by a bid without a router) has none: its events are billed and deduplicated as always and
count toward no calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ModelAttribution", "Prediction", "attribution_of"]


@dataclass(frozen=True, slots=True)
class Prediction:
    version: str
    pctr: float
    pcvr: float


@dataclass(frozen=True, slots=True)
class ModelAttribution:
    arm: str
    bid_type: str
    live: Prediction
    shadow: Prediction | None = None


def _text(record: dict[bytes, bytes], field: bytes) -> str:
    raw = record.get(field)
    return raw.decode() if raw is not None else ""


def attribution_of(record: dict[bytes, bytes]) -> ModelAttribution | None:
    """The attribution in a bid record (an HGETALL reply), or None when it holds none or a bad number."""
    version = _text(record, b"mv")
    if not version:
        return None
    try:
        live = Prediction(version, float(record[b"pc"]), float(record[b"pv"]))
        shadow = (
            Prediction(_text(record, b"sv"), float(record[b"sc"]), float(record[b"sp"]))
            if record.get(b"sv")
            else None
        )
    except (KeyError, ValueError):
        return None
    scores = (live.pctr, live.pcvr, *((shadow.pctr, shadow.pcvr) if shadow is not None else ()))
    if not all(math.isfinite(score) for score in scores):
        # A broken model's NaN would stick in every calibration sum it touches: such a bid is not counted
        # (its version's impressions fall short, which the dashboard's volume panels show).
        return None
    return ModelAttribution(_text(record, b"ar"), _text(record, b"bt"), live, shadow)
