"""Readable request fixtures for the auction tests: ads as small records, turned into column-wise arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.core import auction, eligibility
from gateway.core.currency import CurrencyTable
from gateway.core.eligibility import Candidates, Eligibility, Impression, LossReason


@dataclass(frozen=True)
class Ad:
    ad_id: str
    bid: float = 1.0
    bid_type: str = "cpm"
    advertiser: str = ""  # "" -> "<ad_id>.com", so ads are distinct advertisers unless a test says so
    categories: tuple[str, ...] = ()
    imp_ids: tuple[str, ...] | None = None
    deal_id: str | None = None


def candidates(ads: Sequence[Ad]) -> Candidates:
    return Candidates(
        ad_ids=[ad.ad_id for ad in ads],
        campaign_ids=[f"camp-{ad.ad_id}" for ad in ads],
        advertisers=[ad.advertiser or f"{ad.ad_id}.com" for ad in ads],
        categories=[ad.categories for ad in ads],
        bid_types=auction.encode_bid_types([ad.bid_type for ad in ads]),
        bids=np.asarray([ad.bid for ad in ads], dtype=np.float64),
        imp_ids=[ad.imp_ids for ad in ads],
        deal_ids=[ad.deal_id for ad in ads],
    )


def cpm_ecpm(ads: Sequence[Ad]) -> npt.NDArray[np.float64]:
    """eCPM with pCTR = pCVR = 1, i.e. the bid itself for CPM ads."""
    ones = np.ones(len(ads), dtype=np.float64)
    cands = candidates(ads)
    return auction.compute_ecpm(cands.bid_types, cands.bids, ones, ones)


def build_eligibility(
    imps: Sequence[Impression],
    ads: Sequence[Ad],
    *,
    badv: Sequence[str] = (),
    bcat: Sequence[str] = (),
    table: CurrencyTable | None = None,
) -> Eligibility:
    return eligibility.build(
        imps,
        candidates(ads),
        badv=badv,
        bcat=bcat,
        ecpm=cpm_ecpm(ads),
        currency_table=table or CurrencyTable.default(),
    )


@dataclass(frozen=True)
class Outcome:
    """wins: (imp id, ad id, price USD to 6 places, deal id); reasons: ad id -> reason (None = won)."""

    wins: list[tuple[str, str, float, str | None]]
    reasons: Mapping[str, LossReason | None]


def decide(
    imps: Sequence[Impression],
    ads: Sequence[Ad],
    *,
    at: auction.AuctionType = auction.AuctionType.SECOND_PRICE,
    badv: Sequence[str] = (),
    bcat: Sequence[str] = (),
) -> Outcome:
    elig = build_eligibility(imps, ads, badv=badv, bcat=bcat)
    result = auction.run(cpm_ecpm(ads), elig, candidates(ads), imps, at)
    wins = [
        (imps[win.imp].id, ads[win.candidate].ad_id, round(win.price_usd, 6), win.deal_id)
        for win in result.wins
    ]
    reasons = dict(zip((ad.ad_id for ad in ads), result.outcomes(), strict=True))
    return Outcome(wins=wins, reasons=reasons)
