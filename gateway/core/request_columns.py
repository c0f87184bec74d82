"""A decoded BidRequest as the columns the data plane computes on: candidates column-wise (numpy where the
math is), imps as eligibility records, and each candidate's scoring placement."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gateway.core import auction, eligibility
from gateway.openrtb import BidRequest, Candidate, Imp


def candidate_columns(raw: list[Candidate]) -> eligibility.Candidates:
    # A list comprehension per column: on msgspec structs that beats list(map(attrgetter)) and a single
    # zip(*rows) transpose (~0.9 us per 50-candidate column); for the bids too, handed to np.array: 2.9 us
    # against 3.5 us for np.fromiter(map(attrgetter)). The request's own `cat` and `imp_ids` lists are
    # shared, not copied into tuples (~1.7 us): the data plane only reads them.
    return eligibility.Candidates(
        ad_ids=[c.id for c in raw],
        campaign_ids=[c.campaign_id for c in raw],
        advertisers=[c.advertiser for c in raw],
        categories=[c.cat for c in raw],
        bid_types=auction.encode_bid_types([c.bid_type for c in raw]),
        bids=np.array([c.bid for c in raw], dtype=np.float64),
        imp_ids=[c.imp_ids for c in raw],
        deal_ids=[c.deal_id for c in raw],
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
    count = len(candidates)
    if len(request.imp) == 1 or candidates.imp_ids.count(None) == count:
        return np.zeros(count, dtype=np.intp)  # every candidate on the first imp: no per-candidate pass
    position = {imp.id: i for i, imp in enumerate(request.imp)}
    # Most restricted candidates name one imp: a dict probe for those, the generator only for longer lists.
    # 6 us against 18.4 us (a generator and min() for every candidate) on the 2-3 imp requests.
    first_allowed = [0] * count  # unrestricted (None or []): the first imp
    for c, ids in enumerate(candidates.imp_ids):
        if not ids:
            continue
        if len(ids) == 1:
            first_allowed[c] = position.get(ids[0], 0)
        else:
            first_allowed[c] = min((position[i] for i in ids if i in position), default=0)
    return np.array(first_allowed, dtype=np.intp)
