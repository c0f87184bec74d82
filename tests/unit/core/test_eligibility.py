from __future__ import annotations

import math
import random

import numpy as np
import pytest

from gateway.core import eligibility
from gateway.core.currency import CurrencyTable, UnknownCurrencyError
from gateway.core.eligibility import Candidates, Deal, Impression, LossReason
from tests.unit.core.builders import Ad, build_eligibility, candidates, cpm_ecpm

BA = LossReason.BLOCKED_ADVERTISER
BC = LossReason.BLOCKED_CATEGORY
NEI = LossReason.NO_ELIGIBLE_IMP
BF = LossReason.BELOW_FLOOR
ONE_IMP = [Impression("i1")]


@pytest.mark.parametrize(
    ("bcat", "ad_categories", "blocked"),
    [
        pytest.param(["IAB25"], ("IAB25-3",), True, id="tier1-blocks-subcategory"),
        pytest.param(["IAB25"], ("IAB25",), True, id="tier1-blocks-itself"),
        pytest.param(["IAB25-3"], ("IAB25-3",), True, id="exact-subcategory"),
        pytest.param(["IAB25-3"], ("IAB25",), False, id="subcategory-does-not-block-parent"),
        pytest.param(["IAB25-3"], ("IAB25-4",), False, id="sibling-subcategory-not-blocked"),
        pytest.param(["IAB2"], ("IAB25-1",), False, id="prefix-is-not-parent"),
        pytest.param(["IAB2"], ("IAB25",), False, id="prefix-is-not-tier1-code"),
        pytest.param(["IAB7", "IAB25"], ("IAB1", "IAB25-2"), True, id="any-category-blocked"),
        pytest.param(["IAB25"], (), False, id="no-categories"),
        pytest.param([], ("IAB25-3",), False, id="empty-bcat"),
    ],
)
def test_bcat(bcat: list[str], ad_categories: tuple[str, ...], blocked: bool) -> None:
    ads = [Ad("a", categories=ad_categories), Ad("clean", categories=("IAB1-1",))]
    elig = build_eligibility(ONE_IMP, ads, bcat=bcat)
    assert elig.drop_reasons() == [BC if blocked else None, None]
    assert elig.eligible.tolist() == [[not blocked, True]]


@pytest.mark.parametrize(
    ("badv", "advertiser", "blocked"),
    [
        pytest.param(["bad.com"], "bad.com", True, id="exact-domain"),
        pytest.param(["BAD.com"], "bad.COM", True, id="case-insensitive"),
        pytest.param(["bad.com"], "notbad.com", False, id="other-domain"),
        pytest.param(["bad.com"], "sub.bad.com", False, id="subdomain-is-not-listed"),
        pytest.param([], "bad.com", False, id="empty-badv"),
    ],
)
def test_badv(badv: list[str], advertiser: str, blocked: bool) -> None:
    elig = build_eligibility(ONE_IMP, [Ad("a", advertiser=advertiser)], badv=badv)
    assert elig.drop_reasons() == [BA if blocked else None]
    assert elig.eligible.tolist() == [[not blocked]]


@pytest.mark.parametrize(
    ("ad", "expected"),
    [
        pytest.param(
            Ad("a", advertiser="bad.com", categories=("IAB25-1",), imp_ids=("nope",), bid=0.1),
            BA,
            id="advertiser-before-category",
        ),
        pytest.param(
            Ad("a", categories=("IAB25-1",), imp_ids=("nope",), bid=0.1), BC, id="category-before-imp"
        ),
        pytest.param(Ad("a", imp_ids=("nope",), bid=0.1), NEI, id="imp-before-floor"),
        pytest.param(Ad("a", bid=0.1), BF, id="floor-last"),
        pytest.param(Ad("a", bid=1.0), None, id="eligible-at-floor-exactly"),
    ],
)
def test_drop_reason_precedence(ad: Ad, expected: LossReason | None) -> None:
    elig = build_eligibility([Impression("i1", bidfloor=1.0)], [ad], badv=["bad.com"], bcat=["IAB25"])
    assert elig.drop_reasons() == [expected]


@pytest.mark.parametrize(
    ("ad", "expected"),
    [
        pytest.param(Ad("a", categories=("IAB25-1",)), BC, id="category-before-campaign"),
        pytest.param(Ad("a", imp_ids=("nope",)), LossReason.PACED, id="campaign-before-imp"),
        pytest.param(Ad("a", bid=0.1), LossReason.PACED, id="campaign-before-floor"),
    ],
)
def test_campaign_exclusions_rank_between_blocks_and_imps(ad: Ad, expected: LossReason) -> None:
    paced = np.array([eligibility.reason_code(LossReason.PACED)], dtype=np.int8)
    elig = eligibility.build(
        [Impression("i1", bidfloor=1.0)],
        candidates([ad]),
        badv=[],
        bcat=["IAB25"],
        ecpm=cpm_ecpm([ad]),
        currency_table=CurrencyTable.default(),
        excluded=paced,
    )
    assert elig.drop_reasons() == [expected]
    assert not elig.eligible.any()


TWO_IMPS = [Impression("i1"), Impression("i2")]


@pytest.mark.parametrize(
    ("imp_ids", "eligible_column", "reason"),
    [
        pytest.param(None, [True, True], None, id="absent-means-all"),
        pytest.param(("i2",), [False, True], None, id="restricted-to-i2"),
        pytest.param(("i2", "i1"), [True, True], None, id="listed-both"),
        pytest.param(("i9",), [False, False], NEI, id="unknown-imp-id"),
        pytest.param((), [False, False], NEI, id="empty-list"),
    ],
)
def test_imp_ids_restriction(
    imp_ids: tuple[str, ...] | None, eligible_column: list[bool], reason: LossReason | None
) -> None:
    elig = build_eligibility(TWO_IMPS, [Ad("a", imp_ids=imp_ids), Ad("open")])
    assert elig.eligible[:, 0].tolist() == eligible_column
    assert elig.eligible[:, 1].tolist() == [True, True]
    assert elig.drop_reasons() == [reason, None]


PRIVATE_I1 = [
    Impression("i1", private_auction=True, deals={"D1": Deal(0.5)}),
    Impression("i2", deals={"D2": Deal(0.5)}),
]


@pytest.mark.parametrize(
    ("ad", "eligible_column", "deal_column", "reason"),
    [
        pytest.param(Ad("a", deal_id="D1"), [True, True], [True, False], None, id="names-private-deal"),
        pytest.param(Ad("a"), [False, True], [False, False], None, id="open-only-where-not-private"),
        pytest.param(Ad("a", deal_id="D2"), [False, True], [False, True], None, id="other-imps-deal"),
        pytest.param(Ad("a", imp_ids=("i1",)), [False, False], [False, False], NEI, id="only-private-imp"),
        pytest.param(
            Ad("a", imp_ids=("i1",), deal_id="D9"), [False, False], [False, False], NEI, id="unknown-deal"
        ),
    ],
)
def test_private_auction(
    ad: Ad, eligible_column: list[bool], deal_column: list[bool], reason: LossReason | None
) -> None:
    elig = build_eligibility(PRIVATE_I1, [ad])
    assert elig.eligible[:, 0].tolist() == eligible_column
    assert elig.deal_applies[:, 0].tolist() == deal_column
    assert elig.drop_reasons() == [reason]


# i1: open floor 0.79 GBP (= 1 USD), deal D1 at 1.84 EUR (= 2 USD); i2: open floor 3 USD, deal D2 0.5 USD.
FLOOR_IMPS = [
    Impression("i1", bidfloor=0.79, bidfloorcur="GBP", deals={"D1": Deal(1.84, "EUR")}),
    Impression("i2", bidfloor=3.0, deals={"D2": Deal(0.5)}),
]


@pytest.mark.parametrize(
    ("ad", "floors", "deal_column", "eligible_column", "reason"),
    [
        pytest.param(Ad("a", bid=1.5), [1.0, 3.0], [False, False], [True, False], None, id="gbp-open-floor"),
        pytest.param(Ad("a", bid=0.99), [1.0, 3.0], [False, False], [False, False], BF, id="under-gbp-floor"),
        pytest.param(
            Ad("a", bid=1.5, deal_id="D1"), [2.0, 3.0], [True, False], [False, False], BF, id="eur-deal-floor"
        ),
        pytest.param(
            Ad("a", bid=2.0, deal_id="D1"),
            [2.0, 3.0],
            [True, False],
            [True, False],
            None,
            id="at-eur-deal-floor",
        ),
        pytest.param(
            Ad("a", bid=1.0, deal_id="D2"),
            [1.0, 0.5],
            [False, True],
            [True, True],
            None,
            id="deal-lowers-floor-on-its-imp-only",
        ),
        pytest.param(
            Ad("a", bid=1.5, deal_id="D7"),
            [1.0, 3.0],
            [False, False],
            [True, False],
            None,
            id="deal-not-in-pmp",
        ),
    ],
)
def test_floors_with_deals_and_currencies(
    ad: Ad,
    floors: list[float],
    deal_column: list[bool],
    eligible_column: list[bool],
    reason: LossReason | None,
) -> None:
    elig = build_eligibility(FLOOR_IMPS, [ad])
    np.testing.assert_allclose(elig.floor_usd[:, 0], floors, rtol=1e-12)
    assert elig.deal_applies[:, 0].tolist() == deal_column
    assert elig.eligible[:, 0].tolist() == eligible_column
    assert elig.drop_reasons() == [reason]


@pytest.mark.parametrize(
    "ecpm",
    [pytest.param(0.0, id="zero"), pytest.param(float("nan"), id="nan"), pytest.param(-1.0, id="negative")],
)
@pytest.mark.filterwarnings("error")  # NaN compares quietly: build needs no errstate block
def test_non_positive_or_nan_ecpm_is_below_any_floor(ecpm: float) -> None:
    elig = eligibility.build(
        ONE_IMP,
        candidates([Ad("a")]),
        badv=(),
        bcat=(),
        ecpm=np.array([ecpm]),
        currency_table=CurrencyTable.default(),
    )
    assert elig.eligible.tolist() == [[False]]
    assert elig.drop_reasons() == [BF]


def test_bid_equal_to_converted_floor_survives_float_noise() -> None:
    # 0.6348 EUR / 0.92 is 0.6900000000000001 in binary floating point; the 0.69 USD bid meets the floor.
    elig = build_eligibility([Impression("i1", bidfloor=0.6348, bidfloorcur="EUR")], [Ad("a", bid=0.69)])
    assert elig.floor_usd[0, 0] > 0.69
    assert elig.eligible.tolist() == [[True]]


@pytest.mark.parametrize(
    "imp",
    [
        pytest.param(Impression("i1", bidfloor=1.0, bidfloorcur="CHF"), id="imp-floor"),
        pytest.param(Impression("i1", deals={"D1": Deal(1.0, "CHF")}), id="deal-floor"),
    ],
)
def test_unknown_floor_currency_raises(imp: Impression) -> None:
    with pytest.raises(UnknownCurrencyError, match="'CHF'"):
        build_eligibility([imp], [Ad("a")])


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="ecpm has 2 entries for 1 candidates"):
        eligibility.build(
            ONE_IMP,
            candidates([Ad("a")]),
            badv=(),
            bcat=(),
            ecpm=np.ones(2),
            currency_table=CurrencyTable.default(),
        )
    with pytest.raises(ValueError, match="bids"):
        Candidates(
            ad_ids=["a"],
            campaign_ids=["c"],
            advertisers=["a.com"],
            categories=[()],
            bid_types=np.zeros(1, dtype=np.int8),
            bids=np.ones(2),
            imp_ids=[None],
            deal_ids=[None],
        )


def test_no_candidates_and_no_imps() -> None:
    assert build_eligibility(ONE_IMP, [], badv=["x.com"], bcat=["IAB1"]).eligible.shape == (1, 0)
    elig = build_eligibility([], [Ad("a")])
    assert elig.eligible.shape == (0, 1)
    assert elig.drop_reasons() == [NEI]


# ---------------------------------------------------------------- against a plain-Python reference


def _reference(
    imps: list[Impression], ads: list[Ad], badv: list[str], bcat: list[str]
) -> tuple[list[list[bool]], list[LossReason | None]]:
    """The module's rules, one (imp, candidate) pair at a time."""
    table = CurrencyTable.default()
    blocked_domains = {domain.lower() for domain in badv}

    def category_blocked(ad: Ad) -> bool:
        return any(code in bcat or code.partition("-")[0] in bcat for code in ad.categories)

    def deal(imp: Impression, ad: Ad) -> Deal | None:
        return imp.deals.get(ad.deal_id) if ad.deal_id else None

    def takes(imp: Impression, ad: Ad) -> bool:
        listed = ad.imp_ids is None or imp.id in ad.imp_ids
        return listed and (not imp.private_auction or deal(imp, ad) is not None)

    def clears_floor(imp: Impression, ad: Ad) -> bool:
        terms = deal(imp, ad) or Deal(imp.bidfloor, imp.bidfloorcur)
        floor = table.to_usd(terms.bidfloor, terms.bidfloorcur)
        return 0.0 < ad.bid < math.inf and ad.bid >= floor - eligibility.FLOOR_TOLERANCE_USD

    eligible: list[list[bool]] = [[] for _ in imps]
    reasons: list[LossReason | None] = []
    for ad in ads:
        blocked = (ad.advertiser or f"{ad.ad_id}.com").lower() in blocked_domains or category_blocked(ad)
        for i, imp in enumerate(imps):
            eligible[i].append(not blocked and takes(imp, ad) and clears_floor(imp, ad))
        if (ad.advertiser or f"{ad.ad_id}.com").lower() in blocked_domains:
            reasons.append(BA)
        elif category_blocked(ad):
            reasons.append(BC)
        elif not any(takes(imp, ad) for imp in imps):
            reasons.append(NEI)
        elif not any(row[-1] for row in eligible):
            reasons.append(BF)
        else:
            reasons.append(None)
    return eligible, reasons


@pytest.mark.parametrize("seed", range(60))
def test_matches_reference_on_random_requests(seed: int) -> None:
    rng = random.Random(seed)
    imps = [
        Impression(
            f"i{i}",
            bidfloor=rng.choice([0.0, 0.5, 1.0]),
            bidfloorcur=rng.choice(["USD", "EUR"]),
            private_auction=rng.random() < 0.2,
            deals={
                d: Deal(rng.choice([0.0, 1.5]), "GBP") for d in rng.sample(["D1", "D2"], rng.randint(0, 2))
            },
        )
        for i in range(rng.choice([1, 1, 2, 3]))
    ]
    ads = [
        Ad(
            f"ad{c}",
            bid=rng.choice([0.0, 0.25, 0.5, 1.0, 2.0, math.nan, math.inf]),
            advertiser=rng.choice(["x.com", "X.COM", "y.com", ""]),
            categories=tuple(rng.sample(["IAB1", "IAB1-2", "IAB25-3", "IAB2"], rng.randint(0, 2))),
            imp_ids=rng.choice([None, None, ("i0",), ("i1", "i2"), ("i9",), ()]),
            deal_id=rng.choice([None, None, "D1", "D2", ""]),
        )
        for c in range(rng.randint(0, 12))
    ]
    badv = rng.sample(["x.com", "Y.COM"], rng.randint(0, 1))
    bcat = rng.sample(["IAB1", "IAB25", "IAB2-1"], rng.randint(0, 2))
    elig = build_eligibility(imps, ads, badv=badv, bcat=bcat)
    eligible, reasons = _reference(imps, ads, badv, bcat)
    assert elig.eligible.tolist() == eligible
    assert elig.drop_reasons() == reasons


def test_imp_restriction_masks_match_the_index_scatter() -> None:
    # The per-candidate bit masks against the index scatter kept for requests wider than a mask.
    for seed in range(300):
        rng = random.Random(seed)
        imps = [Impression(f"i{rng.randint(0, 70)}") for _ in range(rng.choice([0, 1, 2, 3, 63, 64]))]
        names = [imp.id for imp in imps] + ["i99"]
        imp_ids = [
            rng.choice([None, (), tuple(rng.sample(names, min(len(names), rng.randint(1, 3))))])
            for _ in range(rng.randint(0, 12))
        ]
        got = eligibility._imp_restriction(imps, imp_ids)
        expected = eligibility._imp_restriction_by_index(imps, imp_ids)
        assert got.shape == expected.shape, seed
        assert got.tolist() == expected.tolist(), seed
