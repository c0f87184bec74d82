"""Sticky assignment of a bid to an experiment arm: a stable hash of (salt, user key) picks a bucket.

xxh3 (never Python's `hash()`, which is salted per process) of the salt and the user key, modulo 10,000,
so every replica and every restart puts a user in the same arm for as long as the salt stays. Anonymous
requests (no user key) are assigned by request id: each such bid is its own "user". Arms own contiguous
bucket ranges in configuration order, so raising a candidate from 10 % to 50 % keeps its first 10 % of
users and adds new ones (a user never flips from candidate back to control while the share only grows).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Final

import xxhash

from gateway.experiments.config import BUCKETS, Arm, ExperimentConfig

__all__ = ["ArmAssigner", "bucket_of"]

_SEPARATOR: Final = b"\x00"


def bucket_of(salt: str, key: str) -> int:
    """0..9999, uniform over keys, stable across processes and hosts."""
    digest = xxhash.xxh3_64_intdigest(salt.encode("utf-8") + _SEPARATOR + key.encode("utf-8"))
    return int(digest % BUCKETS)


@dataclass(frozen=True, slots=True)
class ArmAssigner:
    """Maps a user key to its arm under one configuration (immutable: a new config is a new assigner)."""

    config: ExperimentConfig
    _upper: tuple[int, ...]  # exclusive upper bucket of each arm, cumulative
    _arms: tuple[Arm, ...]  # the arms with a non-zero share, in `_upper` order

    @classmethod
    def build(cls, config: ExperimentConfig) -> ArmAssigner:
        upper: list[int] = []
        arms: list[Arm] = []
        total = 0
        for arm in config.arms:
            share = round(arm.weight * 100)
            if share == 0:
                continue  # a 0 % arm is configured but gets no traffic
            total += share
            upper.append(total)
            arms.append(arm)
        return cls(config, tuple(upper), tuple(arms))

    def assign(self, user_key: str | None, request_id: str) -> Arm:
        if len(self._arms) == 1:
            return self._arms[0]
        bucket = bucket_of(self.config.salt, user_key or request_id)
        return self._arms[bisect.bisect_right(self._upper, bucket)]
