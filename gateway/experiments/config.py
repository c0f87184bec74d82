"""The experiment configuration an operator writes: arms (name, model version, weight) and a shadow.

A JSON document, e.g. (docs/experiments.md)::

    {"name": "ranker-v2", "salt": "2024-06-01",
     "arms": [{"name": "control", "version": "1", "weight": 90},
              {"name": "candidate", "version": "2", "weight": 10}],
     "shadow": {"version": "2", "sample": 0.1}}

Weights are percentages of traffic, non-negative, at most two decimals (the split has 10,000 buckets), and
sum to 100. The salt re-draws every user's bucket: a new salt is a new experiment with fresh groups. The
shadow version, when set, is also scored for a `sample` share of the bids that won something, after the
response is sent, for calibration only.
"""

from __future__ import annotations

import math
from typing import Annotated, Final

import msgspec

from gateway.errors import InvalidRequest

__all__ = ["Arm", "ExperimentConfig", "Shadow", "decode_experiment", "single_arm"]

BUCKETS: Final = 10_000  # weights are percentages with two decimals: 1 bucket = 0.01 %
_NAME: Final = msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class Arm(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, _NAME]
    version: Annotated[str, _NAME]
    weight: Annotated[float, msgspec.Meta(ge=0, le=100)]


class Shadow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: Annotated[str, _NAME]
    sample: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0


class ExperimentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, _NAME]
    salt: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    arms: Annotated[list[Arm], msgspec.Meta(min_length=1, max_length=16)]
    shadow: Shadow | None = None

    @property
    def versions(self) -> set[str]:
        """The model versions the configuration scores with: arms that take traffic, and the shadow when it
        samples any. A 0 % arm needs no ready model: a rollback (candidate weight 0) is written exactly
        when the candidate is broken, and must install."""
        found = {arm.version for arm in self.arms if arm.weight > 0}
        if self.shadow is not None and self.shadow.sample > 0:
            found.add(self.shadow.version)
        return found


_DECODER: Final = msgspec.json.Decoder(ExperimentConfig)


def decode_experiment(raw: bytes) -> ExperimentConfig:
    """Parse and validate; raises InvalidRequest naming the problem (the watcher logs it, keeps the old)."""
    try:
        config = _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRequest("invalid_experiment", f"experiment config: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest("invalid_experiment", f"experiment config is not valid JSON: {exc}") from exc
    names = [arm.name for arm in config.arms]
    if len(set(names)) != len(names):
        raise InvalidRequest("invalid_experiment", f"arm names must be unique, got {names}", "arms")
    for arm in config.arms:
        if not math.isclose(arm.weight * 100, round(arm.weight * 100), abs_tol=1e-6):
            raise InvalidRequest(
                "invalid_experiment", f"arm {arm.name!r}: weight {arm.weight} has over two decimals", "arms"
            )
    total = sum(round(arm.weight * 100) for arm in config.arms)
    if total != BUCKETS:
        raise InvalidRequest(
            "invalid_experiment", f"arm weights must sum to 100, got {total / 100:g}", "arms"
        )
    return config


def single_arm(version: str) -> ExperimentConfig:
    """No experiment: every bid on `version` (Settings.model_version), arm "default"."""
    return ExperimentConfig(name="none", salt="none", arms=[Arm("default", version or "default", 100.0)])
