"""eCPM, per-imp winners and clearing prices.

All amounts are USD CPM (per mille). The auction walks the imps in request order; at each imp the best
eligible candidate still available wins it, where "available" means its ad has not won yet and its
advertiser has not won yet (one imp per ad and per advertiser in a response). "Best" is the higher eCPM,
ties broken by the smaller ad id in string (code point) order; that order is fixed once per request by one
lexsort, so each imp costs a few array operations over the candidates, not a Python loop.

Prices (OpenRTB `at`):
  first price (1)   the winner's eCPM.
  second price (2)  min(winner eCPM, max(runner-up eCPM, floor) + 0.01). `floor` is the one the winner faced
                    at that imp (its deal floor or the open floor). The runner-up is the best *other*
                    candidate that could still take that imp at its turn: eligible there (so above its own
                    floor), its ad not already a winner, its advertiser not already winning. Candidates
                    removed by earlier imps do not set the price: they could not have won this imp, so they
                    exert no competitive pressure on it. With no runner-up the winner pays floor + 0.01.
                    The 0.01 is USD CPM, added before any conversion to the response currency.
Converting and rounding a price for the response is `CurrencyTable.price_from_usd`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.core.eligibility import (
    NOT_LOST,
    Candidates,
    Eligibility,
    Impression,
    LossReason,
    decode_reasons,
    factorise,
    reason_code,
)

SECOND_PRICE_INCREMENT_USD: Final = 0.01
_CPM_PER_UNIT: Final = 1000.0


class BidType(IntEnum):
    """How a candidate's bid is denominated; the int8 code stored in `Candidates.bid_types`."""

    CPM = 0  # bid is the price per mille
    CPC = 1  # bid per click: eCPM = 1000 x bid x pCTR
    CPA = 2  # bid per action (conversion after a click): eCPM = 1000 x bid x pCTR x pCVR


BID_TYPE_CODES: Final[Mapping[str, BidType]] = MappingProxyType(
    {"cpm": BidType.CPM, "cpc": BidType.CPC, "cpa": BidType.CPA}
)


class AuctionType(IntEnum):
    """OpenRTB `BidRequest.at`."""

    FIRST_PRICE = 1
    SECOND_PRICE = 2


def encode_bid_types(names: Sequence[str]) -> npt.NDArray[np.int8]:
    """ "cpm"/"cpc"/"cpa" (case-insensitive) to `BidType` codes; raises ValueError naming an unknown one."""
    try:
        return np.fromiter((BID_TYPE_CODES[name.lower()] for name in names), dtype=np.int8, count=len(names))
    except KeyError as exc:
        raise ValueError(
            f"unknown bid type {exc.args[0]!r}; expected one of {sorted(BID_TYPE_CODES)}"
        ) from None


def compute_ecpm(
    bid_types: npt.NDArray[np.int8],
    bids: npt.NDArray[np.float64],
    pctr: npt.NDArray[np.floating[Any]],
    pcvr: npt.NDArray[np.floating[Any]],
) -> npt.NDArray[np.float64]:
    """USD eCPM per candidate. `pctr`/`pcvr` may be [N] or Triton's [N, 1]; computed in float64."""
    count = len(bids)
    ctr = np.asarray(pctr, dtype=np.float64).reshape(-1)
    cvr = np.asarray(pcvr, dtype=np.float64).reshape(-1)
    if not (len(bid_types) == len(ctr) == len(cvr) == count):
        raise ValueError(
            f"length mismatch: bid_types {len(bid_types)}, bids {count}, pctr {len(ctr)}, pcvr {len(cvr)}"
        )
    # Codes are 0..2; as uint8 a negative code wraps above 2, so one comparison catches both ends.
    unknown = bid_types.astype(np.uint8) > max(BidType)
    if unknown.any():
        raise ValueError(f"unknown bid type code(s): {sorted(set(bid_types[unknown].tolist()))}")
    bids64 = np.asarray(bids, dtype=np.float64)
    # Two np.where passes instead of np.select: several times cheaper at tens of candidates (profiled).
    per_action = np.where(bid_types == BidType.CPA, cvr, 1.0)
    per_mille: npt.NDArray[np.float64] = np.where(
        bid_types == BidType.CPM, 1.0, _CPM_PER_UNIT * ctr * per_action
    )
    return bids64 * per_mille


@dataclass(frozen=True, slots=True)
class Win:
    """Candidate `candidate` wins imp `imp`; `deal_id` is set when it won on its deal's terms."""

    imp: int
    candidate: int
    ecpm: float
    price_usd: float
    deal_id: str | None


@dataclass(frozen=True, slots=True)
class AuctionResult:
    """Wins in imp order, and per candidate a `LOSS_REASONS` code (`NOT_LOST` for winners)."""

    wins: list[Win]
    outcome_code: npt.NDArray[np.int8]

    def outcomes(self) -> list[LossReason | None]:
        """Per candidate: None for a winner, else why it lost (debug output)."""
        return decode_reasons(self.outcome_code)


def run(
    ecpm: npt.NDArray[np.float64],
    eligibility: Eligibility,
    candidates: Candidates,
    imps: Sequence[Impression],
    auction_type: AuctionType,
) -> AuctionResult:
    """Winners for `imps` (request order) among `eligibility`; prices per the module notes, in USD."""
    auction_type = AuctionType(auction_type)  # a bare int from the decoder is fine; 3 is a ValueError
    count = len(candidates)
    if len(ecpm) != count or eligibility.eligible.shape != (len(imps), count):
        raise ValueError(
            f"shape mismatch: ecpm {len(ecpm)}, eligible {eligibility.eligible.shape}, "
            f"{len(imps)} imps x {count} candidates"
        )
    # Work in preference order: position 0 is the best candidate, so the first contender at an imp is its
    # winner and the next one its runner-up; no per-imp sort.
    order = np.lexsort((np.asarray(candidates.ad_ids, dtype=np.str_), -np.asarray(ecpm, dtype=np.float64)))
    eligible = eligibility.eligible[:, order]
    ad = _ad_groups(candidates.ad_ids)[order]
    advertiser = eligibility.advertiser_group[order]
    available = np.ones(count, dtype=np.bool_)  # its ad has not won and its advertiser has not won
    winner_positions: list[int] = []

    wins: list[Win] = []
    for i in range(len(imps) if count else 0):  # argmax of an empty row would raise
        contenders = eligible[i] & available
        first = int(contenders.argmax())
        if not contenders[first]:
            continue
        rest = contenders[first + 1 :]
        runner_up_ecpm = float(ecpm[order[first + 1 + int(rest.argmax())]]) if rest.any() else None
        winner = int(order[first])
        winner_ecpm = float(ecpm[winner])
        wins.append(
            Win(
                imp=i,
                candidate=winner,
                ecpm=winner_ecpm,
                price_usd=_price(
                    auction_type, winner_ecpm, runner_up_ecpm, float(eligibility.floor_usd[i, winner])
                ),
                deal_id=candidates.deal_ids[winner] if eligibility.deal_applies[i, winner] else None,
            )
        )
        winner_positions.append(first)
        available &= (ad != ad[first]) & (advertiser != advertiser[first])

    # Held back by its advertiser: eligible at some imp after its advertiser won one and before its own ad
    # won (never, for a loser). Then the one-imp-per-advertiser rule, not the bids, is why it lost.
    won_imps = np.fromiter((win.imp for win in wins), dtype=np.intp, count=len(wins))
    ad_won_at = _first_win_by_group(ad, winner_positions, won_imps, len(imps))
    advertiser_won_at = _first_win_by_group(advertiser, winner_positions, won_imps, len(imps))
    imp_index = np.arange(len(imps))[:, None]
    held_back = (eligible & (imp_index > advertiser_won_at) & (imp_index <= ad_won_at)).any(axis=0)
    held_back_by_advertiser = np.empty(count, dtype=np.bool_)
    held_back_by_advertiser[order] = held_back

    outcome_code = eligibility.drop_code.copy()
    winner_mask = np.zeros(count, dtype=np.bool_)
    winner_mask[[win.candidate for win in wins]] = True
    lost = (outcome_code == NOT_LOST) & ~winner_mask
    outcome_code[lost & held_back_by_advertiser] = reason_code(LossReason.ADVERTISER_ALREADY_WON)
    outcome_code[lost & ~held_back_by_advertiser] = reason_code(LossReason.LOST_AUCTION)
    return AuctionResult(wins=wins, outcome_code=outcome_code)


def _price(
    auction_type: AuctionType, winner_ecpm: float, runner_up_ecpm: float | None, floor: float
) -> float:
    if auction_type == AuctionType.FIRST_PRICE:
        return winner_ecpm
    pressure = floor if runner_up_ecpm is None else max(runner_up_ecpm, floor)
    return min(winner_ecpm, pressure + SECOND_PRICE_INCREMENT_USD)


def _first_win_by_group(
    group: npt.NDArray[np.intp], winner_positions: list[int], won_imps: npt.NDArray[np.intp], no_win: int
) -> npt.NDArray[np.intp]:
    """Per position: the imp at which its group (ad or advertiser) won, `no_win` if it never did. Each
    group wins at most once, so a plain scatter suffices."""
    won_at = np.full(int(group.max(initial=-1)) + 1, no_win, dtype=np.intp)
    won_at[group[winner_positions]] = won_imps
    return won_at[group]


def _ad_groups(ad_ids: Sequence[str]) -> npt.NDArray[np.intp]:
    """Equal ad ids to equal ints. Ids are unique in a valid request, so that case costs one set()."""
    if len(set(ad_ids)) == len(ad_ids):
        return np.arange(len(ad_ids))
    codes, _ = factorise(ad_ids)
    return codes
