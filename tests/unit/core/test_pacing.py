"""The pure pacing rule and campaign verdicts (no Redis)."""

from __future__ import annotations

import calendar

import numpy as np
import pytest

from gateway.core import eligibility, pacing
from gateway.core.currency import CurrencyTable
from gateway.core.eligibility import Impression, LossReason
from gateway.core.pacing import CampaignVerdict, PacingParams
from gateway.core.ports import CampaignStates
from tests.unit.core.builders import Ad, candidates, cpm_ecpm

MIDNIGHT = calendar.timegm((2025, 3, 1, 0, 0, 0))
NOON = MIDNIGHT + 12 * 3600


def states(
    committed: list[int],
    budget: list[int],
    *,
    managed: list[bool] | None = None,
    cap: list[int] | None = None,
    impressions: list[int] | None = None,
    now: float = NOON,
) -> CampaignStates:
    count = len(committed)
    return CampaignStates(
        managed=np.array(managed if managed is not None else [True] * count),
        budget_micros=np.array(budget, dtype=np.int64),
        committed_micros=np.array(committed, dtype=np.int64),
        freq_cap=np.array(cap if cap is not None else [0] * count, dtype=np.int64),
        impressions=np.array(impressions if impressions is not None else [0] * count, dtype=np.int64),
        now=now,
    )


def test_utc_day_and_time_of_day() -> None:
    assert pacing.utc_day(MIDNIGHT - 1) == "20250228"
    assert pacing.utc_day(MIDNIGHT) == "20250301"
    assert pacing.seconds_into_day(NOON + 5) == pytest.approx(12 * 3600 + 5)


def test_uniform_plan_is_the_elapsed_share_of_the_day() -> None:
    params = PacingParams()
    assert pacing.planned_share(0, params) == 0.0
    assert pacing.planned_share(6 * 3600, params) == pytest.approx(0.25)
    assert pacing.planned_share(86_400, params) == pytest.approx(1.0)
    assert pacing.planned_share(90_000, params) == pytest.approx(1.0)


def test_hourly_weights_shape_the_plan() -> None:
    weights = tuple([0.0] * 12 + [1.0] * 12)  # all traffic in the afternoon
    params = PacingParams(hourly_weights=weights)
    assert pacing.planned_share(11 * 3600, params) == 0.0
    assert pacing.planned_share(18 * 3600, params) == pytest.approx(0.5)
    assert pacing.planned_share(12.5 * 3600, params) == pytest.approx(0.5 / 12)


def test_throttle_passes_behind_plan_ramps_ahead_and_stops_a_horizon_ahead() -> None:
    params = PacingParams(horizon_s=3600)
    budget = 24_000_000  # 1,000,000 per hour
    committed = np.array([11_000_000, 12_000_000, 12_500_000, 13_000_000, 14_000_000], dtype=np.int64)
    p = pacing.pass_probability(committed, np.full(5, budget, dtype=np.int64), NOON, params)
    assert p.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])


def test_pacing_off_always_passes() -> None:
    p = pacing.pass_probability(
        np.array([10**9], dtype=np.int64), np.array([1], dtype=np.int64), NOON, PacingParams(horizon_s=0)
    )
    assert p.tolist() == [1.0]


def test_verdicts_in_precedence_order() -> None:
    found = states(
        committed=[100, 100, 0, 5, 900_000],
        budget=[100, 1_000_000, 1_000_000, 10, 1_000_000],
        managed=[True, True, True, False, True],
        cap=[1, 2, 0, 1, 0],
        impressions=[5, 2, 0, 9, 0],
    )
    verdicts = pacing.campaign_verdicts(
        found, ["a", "b", "c", "d", "e"], PacingParams(), np.random.default_rng(0)
    )
    assert verdicts.tolist() == [
        CampaignVerdict.BUDGET_EXHAUSTED,  # exhausted beats capped
        CampaignVerdict.FREQUENCY_CAPPED,
        CampaignVerdict.PASS,  # far behind plan
        CampaignVerdict.PASS,  # unmanaged: never limited
        CampaignVerdict.PACED,  # 90% spent by noon: a whole horizon ahead of plan
    ]


def test_no_budget_is_never_paced_or_exhausted() -> None:
    found = states(committed=[10**12], budget=[-1])
    verdicts = pacing.campaign_verdicts(found, ["a"], PacingParams(), np.random.default_rng(0))
    assert verdicts.tolist() == [CampaignVerdict.PASS]


def test_ads_of_one_campaign_share_one_throttle_draw() -> None:
    params = PacingParams(horizon_s=3600)
    # committed at plan + half the horizon: p = 0.5 for every row
    found = states(committed=[12_500_000] * 40, budget=[24_000_000] * 40)
    campaigns = [f"c{i // 2}" for i in range(40)]
    verdicts = pacing.campaign_verdicts(found, campaigns, params, np.random.default_rng(7))
    pairs = verdicts.reshape(20, 2)
    assert (pairs[:, 0] == pairs[:, 1]).all()
    assert 0 < int((pairs[:, 0] == CampaignVerdict.PACED).sum()) < 20


def test_pass_rate_matches_the_probability() -> None:
    params = PacingParams(horizon_s=3600)
    found = states(committed=[12_250_000], budget=[24_000_000])  # p = 0.75
    rng = np.random.default_rng(1)
    passed = sum(
        pacing.campaign_verdicts(found, ["c"], params, rng)[0] == CampaignVerdict.PASS for _ in range(4000)
    )
    assert passed / 4000 == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize(
    ("price", "micros"), [(1.234, 1234), (2.0, 2000), (0.0005, 1), (0.0004, 0), (12.3456, 12346), (0.0, 0)]
)
def test_impression_cost_is_exact_integer_micros(price: float, micros: int) -> None:
    assert pacing.impression_cost_micros(price) == micros


def test_impression_cost_rejects_nonsense() -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="price"):
            pacing.impression_cost_micros(bad)


def test_params_validate() -> None:
    with pytest.raises(ValueError, match="hourly_weights"):
        PacingParams(hourly_weights=(1.0,) * 23)
    with pytest.raises(ValueError, match="horizon_s"):
        PacingParams(horizon_s=-1)


def test_campaign_exclusions_make_candidates_ineligible_with_their_reason() -> None:
    ads = [Ad("a", bid=5.0), Ad("b", bid=4.0, advertiser="blocked.com"), Ad("c", bid=3.0), Ad("d", bid=2.0)]
    excluded = np.array(
        [
            eligibility.reason_code(LossReason.BUDGET_EXHAUSTED),
            eligibility.reason_code(LossReason.PACED),  # also blocked: the request's block comes first
            eligibility.NOT_LOST,
            eligibility.reason_code(LossReason.FREQUENCY_CAPPED),
        ],
        dtype=np.int8,
    )
    found = eligibility.build(
        [Impression("1")],
        candidates(ads),
        badv=["blocked.com"],
        bcat=[],
        ecpm=cpm_ecpm(ads),
        currency_table=CurrencyTable.default(),
        excluded=excluded,
    )
    assert found.eligible.tolist() == [[False, False, True, False]]
    assert found.drop_reasons() == [
        LossReason.BUDGET_EXHAUSTED,
        LossReason.BLOCKED_ADVERTISER,
        None,
        LossReason.FREQUENCY_CAPPED,
    ]
