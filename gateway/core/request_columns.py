"""A decoded BidRequest as the columns the data plane computes on: candidates column-wise (numpy where the
math is), imps as eligibility records, and each candidate's scoring placement."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gateway.core import auction, eligibility
from gateway.openrtb import BidRequest, Candidate, Imp


def candidate_columns(raw: list[Candidate]) -> eligibility.Candidates:
    return eligibility.Candidates(
        ad_ids=[c.id for c in raw],
        campaign_ids=[c.campaign_id for c in raw],
        advertisers=[c.advertiser for c in raw],
        categories=[tuple(c.cat) for c in raw],
        bid_types=auction.encode_bid_types([c.bid_type for c in raw]),
        bids=np.fromiter((c.bid for c in raw), dtype=np.float64, count=len(raw)),
        imp_ids=[tuple(c.imp_ids) if c.imp_ids is not None else None for c in raw],
        deal_ids=[c.deal_id for c in raw],
        crids=[c.crid or c.id for c in raw],
    )


def impression(imp: Imp) -> eligibility.Impression:
    pmp = imp.pmp
    deals = {d.id: eligibility.Deal(d.bidfloor, d.bidfloorcur) for d in (pmp.deals or [])} if pmp else {}
    return eligibility.Impression(
        id=imp.id,
        bidfloor=imp.bidfloor,
        bidfloorcur=imp.bidfloorcur,
        private_auction=bool(pmp and pmp.private_auction == 1),
        deals=deals,
    )


def scoring_imps(request: BidRequest, candidates: eligibility.Candidates) -> npt.NDArray[np.intp]:
    """Each candidate's scoring placement: the first imp (request order) that its imp_ids allow.

    A candidate is scored once, for one placement: multi-imp requests usually offer similar placements,
    and scoring every (imp, candidate) pair would multiply Triton rows by the imp count for a small gain."""
    position = {imp.id: i for i, imp in enumerate(request.imp)}
    return np.fromiter(
        (
            min((position[i] for i in ids if i in position), default=0) if ids else 0
            for ids in candidates.imp_ids
        ),
        dtype=np.intp,
        count=len(candidates),
    )
