"""Budget pacing and the other campaign rules a bid must pass: a pure function of shared state, no I/O.

The rule (see docs/pacing.md) is probabilistic throttling after Agarwal et al., "Budget Pacing for
Targeted Online Advertisements at LinkedIn" (KDD 2014): a campaign takes part in a bid with a
pass-through probability p, and p falls as its spend runs ahead of a planned cumulative-spend curve.
Where the paper adapts p step by step per campaign, here p is recomputed on every bid from the spend all
replicas share, so replicas agree without coordinating and a restart loses nothing:

  plan(t)      = budget * F(t)                 F: the share of the day's traffic seen by t (UTC)
  allowance(t) = budget * F(t + horizon)       what may be spent by now if we run one horizon early
  p            = 1                              committed <= plan(t)        (on or behind plan)
               = (allowance - committed) / (allowance - plan)              (ahead, inside the horizon)
               = 0                              committed >= allowance      (a whole horizon ahead)

`committed` is today's spend plus the open reservations of bids not yet won or expired. F is uniform by
default, or the cumulative sum of 24 hourly traffic weights when the operator knows the day's shape.

Verdicts, in precedence order: budget_exhausted (committed >= budget), frequency_capped (the user has seen
the campaign `freq_cap` times today), paced (the throttle's draw failed). Unmanaged campaigns pass.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.core.ports import CampaignStates

__all__ = [
    "DAY_S",
    "CampaignVerdict",
    "PacingParams",
    "campaign_verdicts",
    "impression_cost_micros",
    "pass_probability",
    "planned_share",
    "seconds_into_day",
    "utc_day",
]

DAY_S: Final = 86_400
_HOUR_S: Final = 3_600
MICROS_PER_USD: Final = 1_000_000
_MICROS_PER_CPM_USD: Final = Decimal(MICROS_PER_USD) / 1000  # one impression costs CPM / 1000


class CampaignVerdict(enum.IntEnum):
    PASS = 0
    BUDGET_EXHAUSTED = 1
    FREQUENCY_CAPPED = 2
    PACED = 3


def _uniform() -> tuple[float, ...]:
    return (1.0,) * 24


@dataclass(frozen=True, slots=True)
class PacingParams:
    """`horizon_s` 0 turns pacing off (a campaign then spends as fast as it wins, up to its budget)."""

    horizon_s: float = 900.0
    hourly_weights: tuple[float, ...] = field(default_factory=_uniform)  # 24 traffic weights, UTC hours
    cumulative_share: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        weights = np.asarray(self.hourly_weights, dtype=np.float64)
        if (
            weights.shape != (24,)
            or not np.isfinite(weights).all()
            or (weights < 0).any()
            or weights.sum() <= 0
        ):
            raise ValueError("hourly_weights must be 24 non-negative finite numbers, not all zero")
        if not (0.0 <= self.horizon_s <= DAY_S):
            raise ValueError(f"horizon_s must be within [0, {DAY_S}], got {self.horizon_s}")
        # F at each hour boundary, 0 .. 1 (25 points); F inside an hour is linear.
        cumulative = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
        object.__setattr__(self, "cumulative_share", cumulative)

    @property
    def enabled(self) -> bool:
        return self.horizon_s > 0


def utc_day(now: float) -> str:
    """The UTC calendar day of epoch instant `now`, as YYYYMMDD (the suffix of per-day keys)."""
    return time.strftime("%Y%m%d", time.gmtime(now))


def seconds_into_day(now: float) -> float:
    return now % DAY_S


def planned_share(seconds: float, params: PacingParams) -> float:
    """F(t): the share of the daily budget the plan has spent `seconds` into the UTC day."""
    clamped = min(max(seconds, 0.0), float(DAY_S))
    hour = min(int(clamped // _HOUR_S), 23)
    within = (clamped - hour * _HOUR_S) / _HOUR_S
    cumulative = params.cumulative_share
    return float(cumulative[hour] + (cumulative[hour + 1] - cumulative[hour]) * within)


def pass_probability(
    committed_micros: npt.NDArray[np.int64],
    budget_micros: npt.NDArray[np.int64],
    now: float,
    params: PacingParams,
) -> npt.NDArray[np.float64]:
    """Per campaign, the throttle's pass-through probability at `now` (1 where pacing is off)."""
    if not params.enabled:
        return np.ones(len(committed_micros), dtype=np.float64)
    t = seconds_into_day(now)
    budget = budget_micros.astype(np.float64)
    committed = committed_micros.astype(np.float64)
    plan = budget * planned_share(t, params)
    allowance = budget * planned_share(t + params.horizon_s, params)
    span = allowance - plan
    with np.errstate(divide="ignore", invalid="ignore"):
        ramp = np.where(span > 0, (allowance - committed) / span, (committed < allowance).astype(np.float64))
    return np.clip(ramp, 0.0, 1.0)


def campaign_verdicts(
    states: CampaignStates,
    campaign_ids: Sequence[str],
    params: PacingParams,
    rng: np.random.Generator,
) -> npt.NDArray[np.int8]:
    """Per candidate, a `CampaignVerdict`: one throttle draw per distinct campaign, so two ads of one
    campaign in a request pass or fail together."""
    count = len(campaign_ids)
    limited_budget = states.managed & (states.budget_micros >= 0)
    exhausted = limited_budget & (states.committed_micros >= states.budget_micros)
    capped = states.managed & (states.freq_cap > 0) & (states.impressions >= states.freq_cap)

    paced = np.zeros(count, dtype=np.bool_)
    throttled = limited_budget & ~exhausted & ~capped
    if params.enabled and throttled.any():
        probability = pass_probability(states.committed_micros, states.budget_micros, states.now, params)
        index: dict[str, int] = {}
        campaign = np.fromiter(
            (index.setdefault(cid, len(index)) for cid in campaign_ids), dtype=np.intp, count=count
        )
        draw = rng.random(len(index))[campaign]
        paced = throttled & (draw >= probability)

    return np.select(
        [exhausted, capped, paced],
        [CampaignVerdict.BUDGET_EXHAUSTED, CampaignVerdict.FREQUENCY_CAPPED, CampaignVerdict.PACED],
        default=CampaignVerdict.PASS,
    ).astype(np.int8)


def impression_cost_micros(price_cpm_usd: float) -> int:
    """What one impression at a CPM price costs, in integer micro-USD, rounded half up.

    Exact for CPM prices with up to 3 decimals (1.234 CPM -> 1234 micro-USD); finer prices round per
    impression. Decimal from repr avoids binary noise (1.234 * 1000 is 1233.9999999999998 in floats)."""
    if not np.isfinite(price_cpm_usd) or price_cpm_usd < 0:
        raise ValueError(f"price must be a non-negative finite number, got {price_cpm_usd!r}")
    micros = (Decimal(repr(float(price_cpm_usd))) * _MICROS_PER_CPM_USD).quantize(Decimal(1), ROUND_HALF_UP)
    return int(micros)
