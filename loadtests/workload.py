"""Realistic OpenRTB bid traffic for bid-gateway, shared by the locustfile and the benchmark.

Built from the committed snapshots (data/snapshots): the same users, ads and publisher placements the
gateway's embedded store serves, so known users hit the store and the model sees the buckets it learned.

  users        Zipf popularity over the snapshot users (a few heavy users, a long tail), plus a share of
               unknown users (ids the store has never seen: the store-miss path) and anonymous requests
  candidates   per bid from a configurable distribution (default: log-normal with mean 50, capped), ads
               drawn without replacement, bid type from a mix, a bid per type (CPM, CPC or CPA in USD)
  imps         1 to 3 placements of one publisher (app or site), floors per imp; with several imps some
               candidates are restricted to one of them (`imp_ids`)
  tmax         a mix of exchange deadlines (ms)

Everything is drawn from a seeded `random.Random`, so a seed reproduces the same requests.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_SNAPSHOTS",
    "CandidateDistribution",
    "Workload",
    "WorkloadConfig",
]

DEFAULT_SNAPSHOTS: Final = Path(__file__).resolve().parent.parent / "data" / "snapshots"

CandidateDistribution = Literal["fixed", "lognormal", "uniform"]

# Bid amounts in USD per bid type: a CPM price, a price per click, a price per acquisition.
_BID_RANGES: Final = {"cpm": (0.5, 6.0), "cpc": (0.05, 1.5), "cpa": (1.0, 25.0)}


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """The traffic shape. Shares are probabilities in [0, 1]; mixes are (value, weight) pairs."""

    candidates_mean: float = 50.0
    candidates_distribution: CandidateDistribution = "lognormal"
    candidates_sigma: float = 0.5  # log-normal shape; the mean stays `candidates_mean`
    candidates_max: int = 500
    bid_type_mix: tuple[tuple[str, float], ...] = (("cpm", 0.5), ("cpc", 0.35), ("cpa", 0.15))
    imp_count_mix: tuple[tuple[int, float], ...] = ((1, 0.8), (2, 0.15), (3, 0.05))
    tmax_mix_ms: tuple[tuple[int, float], ...] = ((80, 0.2), (120, 0.5), (250, 0.3))
    zipf_exponent: float = 1.1
    unknown_user_share: float = 0.05  # a user id the store does not hold
    anonymous_share: float = 0.02  # no user object at all
    restricted_candidate_share: float = 0.3  # of a multi-imp request's candidates, bound to one imp
    floor_range_usd: tuple[float, float] = (0.05, 1.0)

    def __post_init__(self) -> None:
        if self.candidates_mean < 1:
            raise ValueError(f"candidates_mean must be >= 1, got {self.candidates_mean}")
        if self.candidates_max < math.ceil(self.candidates_mean):
            raise ValueError("candidates_max must be at least candidates_mean")
        for name in ("unknown_user_share", "anonymous_share", "restricted_candidate_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {share}")
        if self.unknown_user_share + self.anonymous_share > 1.0:
            raise ValueError("unknown_user_share + anonymous_share must be <= 1")
        for kind, _ in self.bid_type_mix:
            if kind not in _BID_RANGES:
                raise ValueError(f"unknown bid type {kind!r} in bid_type_mix")

    @classmethod
    def fixed(cls, candidates: int, **overrides: Any) -> WorkloadConfig:
        """Exactly `candidates` per bid (the benchmark's shape), the other mixes unchanged."""
        return cls(
            candidates_mean=float(candidates),
            candidates_distribution="fixed",
            candidates_max=max(candidates, 1),
            **overrides,
        )


def _read_snapshot(directory: Path, name: str) -> list[dict[str, Any]]:
    with gzip.open(directory / f"{name}.jsonl.gz", "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


@dataclass(slots=True)
class _Mix:
    values: list[Any]
    cumulative: list[float]

    @classmethod
    def of(cls, pairs: Sequence[tuple[Any, float]]) -> _Mix:
        if not pairs or any(w < 0 for _, w in pairs) or sum(w for _, w in pairs) <= 0:
            raise ValueError(f"a mix needs non-negative weights, not all zero: {pairs}")
        return cls([v for v, _ in pairs], list(itertools.accumulate(w for _, w in pairs)))

    def draw(self, rng: random.Random) -> Any:
        return rng.choices(self.values, cum_weights=self.cumulative)[0]


@dataclass(slots=True)
class Workload:
    """`Workload.load(config)`, then `request(rng)` for one bid request (a JSON-ready dict)."""

    config: WorkloadConfig
    users: list[dict[str, Any]]
    ads: list[dict[str, Any]]
    publishers: list[dict[str, Any]]
    _user_weights: list[float] = field(default_factory=list)
    _bid_types: _Mix | None = None
    _imp_counts: _Mix | None = None
    _tmax: _Mix | None = None
    _serial: Iterator[int] = field(default_factory=itertools.count)

    @classmethod
    def load(
        cls, config: WorkloadConfig | None = None, snapshots: Path = DEFAULT_SNAPSHOTS, seed: int = 7
    ) -> Workload:
        """Reads the snapshots; `seed` fixes which users are popular (the Zipf ranking)."""
        config = config or WorkloadConfig()
        users = _read_snapshot(snapshots, "users")
        ads = _read_snapshot(snapshots, "ads")
        publishers = [p for p in _read_snapshot(snapshots, "publishers") if p.get("placements")]
        if not users or not publishers or len(ads) < config.candidates_max:
            raise ValueError(
                f"snapshots in {snapshots} hold {len(users)} users, {len(ads)} ads, {len(publishers)} "
                f"publishers with placements; need some of each and >= {config.candidates_max} ads"
            )
        ranked = users[:]
        random.Random(seed).shuffle(ranked)  # popularity independent of id order
        cumulative = list(
            itertools.accumulate(1.0 / (rank**config.zipf_exponent) for rank in range(1, len(ranked) + 1))
        )
        return cls(
            config=config,
            users=ranked,
            ads=ads,
            publishers=publishers,
            _user_weights=cumulative,
            _bid_types=_Mix.of(config.bid_type_mix),
            _imp_counts=_Mix.of(config.imp_count_mix),
            _tmax=_Mix.of(config.tmax_mix_ms),
        )

    def candidate_count(self, rng: random.Random) -> int:
        c = self.config
        if c.candidates_distribution == "fixed":
            count = round(c.candidates_mean)
        elif c.candidates_distribution == "uniform":
            count = rng.randint(1, max(1, round(2 * c.candidates_mean - 1)))
        else:
            # E[lognormal(mu, sigma)] = exp(mu + sigma^2 / 2): pick mu so the mean is candidates_mean.
            mu = math.log(c.candidates_mean) - c.candidates_sigma**2 / 2
            count = round(rng.lognormvariate(mu, c.candidates_sigma))
        return min(max(count, 1), c.candidates_max)

    def _user(self, rng: random.Random) -> dict[str, Any] | None:
        """The snapshot user (Zipf), or a synthetic unknown one, or None (anonymous)."""
        roll = rng.random()
        if roll < self.config.anonymous_share:
            return None
        if roll < self.config.anonymous_share + self.config.unknown_user_share:
            seen = rng.choice(self.users)  # an unknown id on a plausible device
            return {**seen, "id": f"unknown-{rng.getrandbits(48):012x}"}
        return rng.choices(self.users, cum_weights=self._user_weights)[0]

    def request(self, rng: random.Random) -> dict[str, Any]:
        assert self._bid_types is not None
        assert self._imp_counts is not None
        assert self._tmax is not None
        c = self.config
        publisher = rng.choice(self.publishers)
        placements = publisher["placements"]
        imp_count = min(int(self._imp_counts.draw(rng)), len(placements))
        imps = [
            {
                "id": str(k + 1),
                "tagid": placement["tagid"],
                "bidfloor": round(rng.uniform(*c.floor_range_usd), 2),
                "banner": {"w": placement["w"], "h": placement["h"], "pos": placement["pos"]},
            }
            for k, placement in enumerate(rng.sample(placements, imp_count))
        ]
        candidates = []
        for ad in rng.sample(self.ads, self.candidate_count(rng)):
            bid_type = str(self._bid_types.draw(rng))
            low, high = _BID_RANGES[bid_type]
            candidate: dict[str, Any] = {
                "id": ad["id"],
                "campaign_id": ad["campaign_id"],
                "advertiser": ad["advertiser"],
                "bid_type": bid_type,
                "bid": round(rng.uniform(low, high), 3),
                "cat": [ad["cat"]],
            }
            if imp_count > 1 and rng.random() < c.restricted_candidate_share:
                candidate["imp_ids"] = [rng.choice(imps)["id"]]
            candidates.append(candidate)
        channel_key = "app" if publisher["kind"] == "app" else "site"
        channel = {"id": publisher["id"], "cat": [publisher["cat"]]}
        if channel_key == "app":
            channel["bundle"] = publisher["bundle"]
        else:
            channel["domain"] = publisher["domain"]
        request: dict[str, Any] = {
            "id": f"lt-{next(self._serial)}-{rng.getrandbits(32):08x}",
            "tmax": int(self._tmax.draw(rng)),
            "cur": ["USD"],
            "imp": imps,
            channel_key: channel,
            "ext": {"candidates": candidates},
        }
        user = self._user(rng)
        if user is not None:
            request["device"] = {
                "devicetype": user["devicetype"],
                "os": user["os"],
                "geo": {"country": user["country"]},
            }
            request["user"] = {"id": user["id"]}
        return request

    def requests(self, count: int, seed: int) -> list[dict[str, Any]]:
        rng = random.Random(seed)
        return [self.request(rng) for _ in range(count)]
