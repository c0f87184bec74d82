"""eCPM, per-imp winners and clearing prices.

All amounts are USD CPM (per mille). The auction walks the imps in request order; at each imp the best
eligible candidate still available wins it, where "available" means its ad has not won yet and its
advertiser has not won yet (one imp per ad and per advertiser in a response; advertiser domains compare
case-insensitively, as for `badv`). "Best" is the higher eCPM, ties broken by the smaller ad id in string
(code point) order; that order is fixed once per request by one sort, so each imp costs a few array
operations over the candidates, not a Python loop. A one-imp request (most traffic) needs no full order:
its winner is the top contender and the runner-up the next, unless the top eCPM is tied.

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

import math
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
_BID_TYPE_COUNT: Final = len(BidType)


class AuctionType(IntEnum):
    """OpenRTB `BidRequest.at`."""

    FIRST_PRICE = 1
    SECOND_PRICE = 2


def encode_bid_types(names: Sequence[str]) -> npt.NDArray[np.int8]:
    """ "cpm"/"cpc"/"cpa" (case-insensitive) to `BidType` codes; raises ValueError naming an unknown one."""
    try:
        # Decoded requests spell them in lower case (the schema's Literal): one C-level dict pass, ~3x
        # cheaper than lower-casing each name first, into a bytearray (the codes fit a byte), which numpy
        # reads in C where np.fromiter converts each Python int: 2.3 against 4.5 us at 50 candidates.
        # Writable: the column is the caller's.
        return np.frombuffer(bytearray(map(_LOWER_CASE_CODES.__getitem__, names)), dtype=np.int8)
    except KeyError:
        pass
    try:
        return np.fromiter((BID_TYPE_CODES[name.lower()] for name in names), dtype=np.int8, count=len(names))
    except KeyError as exc:
        raise ValueError(
            f"unknown bid type {exc.args[0]!r}; expected one of {sorted(BID_TYPE_CODES)}"
        ) from None


_LOWER_CASE_CODES: Final[Mapping[str, int]] = {name: int(code) for name, code in BID_TYPE_CODES.items()}


def compute_ecpm(
    bid_types: npt.NDArray[np.int8],
    bids: npt.NDArray[np.float64],
    pctr: npt.NDArray[np.floating[Any]],
    pcvr: npt.NDArray[np.floating[Any]],
) -> npt.NDArray[np.float64]:
    """USD eCPM per candidate. `pctr`/`pcvr` may be [N] or Triton's [N, 1]; computed in float64."""
    count = len(bids)
    ctr = pctr.reshape(-1)
    cvr = pcvr.reshape(-1)
    if not (len(bid_types) == len(ctr) == len(cvr) == count):
        raise ValueError(
            f"length mismatch: bid_types {len(bid_types)}, bids {count}, pctr {len(ctr)}, pcvr {len(cvr)}"
        )
    # Row k holds the factor from a bid of type k to USD CPM, in float64 (pCTR/pCVR cast exactly first);
    # `choose` picks each candidate's row and rejects a code outside 0..2. The method rather than
    # np.choose, whose Python wrapper alone costs ~3 us: 20 -> 5.5 us at 50 candidates. The CPC row is
    # cast and scaled in one call, and the bids multiply the choice in place: 21.7 -> 19.8 us per bid in an
    # A/B stage harness.
    per_mille = np.empty((_BID_TYPE_COUNT, count))
    per_mille[BidType.CPM] = 1.0
    np.multiply(ctr, _CPM_PER_UNIT, out=per_mille[BidType.CPC], dtype=np.float64)
    np.multiply(per_mille[BidType.CPC], cvr, out=per_mille[BidType.CPA])
    try:
        ecpm: npt.NDArray[np.float64] = bid_types.choose(per_mille)
    except ValueError:
        unknown = bid_types.astype(np.uint8) > max(BidType)  # a negative code wraps above 2
        raise ValueError(f"unknown bid type code(s): {sorted(set(bid_types[unknown].tolist()))}") from None
    ecpm *= bids  # as float64 (exact for float32), the same product as bids x factor
    return ecpm


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
    if type(auction_type) is not AuctionType:  # the pipeline passes the enum: no lookup (~0.5 us)
        auction_type = AuctionType(auction_type)  # a bare int from the decoder is fine; 3 is a ValueError
    count = len(candidates)
    if len(ecpm) != count or eligibility.eligible.shape != (len(imps), count):
        raise ValueError(
            f"shape mismatch: ecpm {len(ecpm)}, eligible {eligibility.eligible.shape}, "
            f"{len(imps)} imps x {count} candidates"
        )
    if len(imps) == 1:
        decided = _single_imp(ecpm, eligibility, candidates, auction_type)
        if decided is not None:
            return decided
    return _walk_imps(ecpm, eligibility, candidates, len(imps), auction_type)


def _single_imp(
    ecpm: npt.NDArray[np.float64],
    eligibility: Eligibility,
    candidates: Candidates,
    auction_type: AuctionType,
) -> AuctionResult | None:
    """The one-imp request (80% of traffic) without ranking every candidate: the winner is the contender
    with the highest eCPM, the runner-up's eCPM the next highest, and with no later imp no advertiser holds
    anyone back. None when the top eCPM is tied (or NaN): then the walk's ad id tie-break decides.

    Same result as `_walk_imps` (a unit test checks both on random requests), at half its cost (5.7 vs
    11.8 us at 50 candidates): it sorts the contenders' eCPMs instead of ranking every candidate and
    reordering the eligibility mask."""
    contenders = eligibility.eligible[0].nonzero()[0]
    wins: list[Win] = []
    if len(contenders):
        values = ecpm[contenders]
        best = int(values.argmax())
        values.sort()  # ascending, NaN last
        top = float(values[-1])
        runner_up_ecpm = float(values[-2]) if len(values) > 1 else None
        if math.isnan(top) or runner_up_ecpm == top:
            return None
        winner = int(contenders[best])
        wins.append(
            _win(
                0,
                winner,
                runner_up_ecpm,
                ecpm=ecpm,
                eligibility=eligibility,
                candidates=candidates,
                auction_type=auction_type,
            )
        )
    return AuctionResult(wins=wins, outcome_code=_outcome_codes(eligibility.drop_code, wins))


def _walk_imps(
    ecpm: npt.NDArray[np.float64],
    eligibility: Eligibility,
    candidates: Candidates,
    imp_count: int,
    auction_type: AuctionType,
) -> AuctionResult:
    """Any request: the imps in order, each to its best contender still available."""
    # Work in preference order: position 0 is the best candidate, so the first contender at an imp is its
    # winner and the next one its runner-up; no per-imp sort.
    order = _preference_order(ecpm, candidates.ad_ids)
    eligible = eligibility.eligible[:, order]
    # Per position: (its ad won an earlier imp, its advertiser did); None until a win leaves imps to fill.
    taken: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None = None
    domains: Sequence[str] = ()  # the advertisers lower-cased, at the first win that leaves imps to fill
    # Per position: eligible at some imp after its advertiser won one and before its own ad won (never,
    # for a loser). Then the one-imp-per-advertiser rule, not the bids, is why it lost.
    held_back: npt.NDArray[np.bool_] | None = None
    wins: list[Win] = []
    for i in range(imp_count):
        contenders = eligible[i]
        if taken is not None:
            ad_won, advertiser_won = taken
            held_here = contenders & advertiser_won & ~ad_won
            held_back = held_here if held_back is None else held_back | held_here
            contenders = contenders & ~(ad_won | advertiser_won)
        positions = contenders.nonzero()[0]
        if not len(positions):
            continue
        first = int(positions[0])
        runner_up_ecpm = float(ecpm[order[positions[1]]]) if len(positions) > 1 else None
        wins.append(
            _win(
                i,
                int(order[first]),
                runner_up_ecpm,
                ecpm=ecpm,
                eligibility=eligibility,
                candidates=candidates,
                auction_type=auction_type,
            )
        )
        if i + 1 < imp_count:
            domains = domains or _lower_case(candidates.advertisers)
            won_now = (
                _same_at_positions(candidates.ad_ids, int(order[first]), order, first),
                _same_at_positions(domains, int(order[first]), order, first),
            )
            taken = won_now if taken is None else (taken[0] | won_now[0], taken[1] | won_now[1])

    held_back_by_candidate = None
    if held_back is not None:
        held_back_by_candidate = np.empty_like(held_back)
        held_back_by_candidate[order] = held_back
    return AuctionResult(
        wins=wins, outcome_code=_outcome_codes(eligibility.drop_code, wins, held_back_by_candidate)
    )


def _win(
    imp: int,
    winner: int,
    runner_up_ecpm: float | None,
    *,
    ecpm: npt.NDArray[np.float64],
    eligibility: Eligibility,
    candidates: Candidates,
    auction_type: AuctionType,
) -> Win:
    # item() reads a Python scalar without the NumPy scalar in between.
    winner_ecpm = float(ecpm.item(winner))
    floor = float(eligibility.floor_usd.item(imp, winner))
    return Win(
        imp=imp,
        candidate=winner,
        ecpm=winner_ecpm,
        price_usd=_price(auction_type, winner_ecpm, runner_up_ecpm, floor),
        deal_id=candidates.deal_ids[winner] if eligibility.deal_applies.item(imp, winner) else None,
    )


def _lost_unless_dropped() -> npt.NDArray[np.int8]:
    """Drop code -> outcome code of a candidate that did not win, as a table indexed by the code's byte
    (NOT_LOST, -1, is byte 255): one gather, ~2 us cheaper than comparing, masking and assigning."""
    table = np.arange(256, dtype=np.uint8).view(np.int8)
    table[NOT_LOST] = reason_code(LossReason.LOST_AUCTION)
    table.flags.writeable = False
    return table


_LOST_UNLESS_DROPPED: Final = _lost_unless_dropped()


def _outcome_codes(
    drop_code: npt.NDArray[np.int8], wins: list[Win], held_back: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.int8]:
    """Eligibility's drop codes; of the candidates still in, winners stay NOT_LOST, the held back lost to
    their advertiser's win and the rest lost the auction."""
    outcome_code = _LOST_UNLESS_DROPPED.take(drop_code.view(np.uint8))  # ~0.5 us less than indexing
    if held_back is not None:
        outcome_code[held_back & (drop_code == NOT_LOST)] = reason_code(LossReason.ADVERTISER_ALREADY_WON)
    for win in wins:
        outcome_code[win.candidate] = drop_code.item(win.candidate)
    return outcome_code


def _preference_order(ecpm: npt.NDArray[np.float64], ad_ids: Sequence[str]) -> npt.NDArray[np.intp]:
    """Candidate indices best first: higher eCPM, ties by the smaller ad id (code point order).

    The ad id only decides among equal eCPMs, which real scores rarely produce: one stable argsort by
    eCPM gives the same order when no two are equal (NaNs, sorted last, count as equal to each other), and
    only then is the lexsort over a numpy string array needed (8.6 vs 4.9 us at 50 candidates)."""
    order = (-ecpm).argsort(kind="stable")
    ranked = ecpm[order]
    if len(ranked) > 1 and (np.count_nonzero(ranked[1:] == ranked[:-1]) or np.isnan(ranked[-2])):
        order = np.lexsort((np.asarray(ad_ids, dtype=np.str_), -ecpm))
    return order


def _lower_case(advertisers: Sequence[str]) -> Sequence[str]:
    """The advertiser domains lower-cased (compared case-insensitively, as for `badv`). They nearly always
    are already: one check of the joined string, not a `lower()` per domain (0.7 vs 2.6 us at 50). Only
    Σ lower-cases by context, and it changes either way, so an unchanged join means unchanged domains."""
    joined = "\0".join(advertisers)
    if joined == joined.lower():
        return advertisers
    return [advertiser.lower() for advertiser in advertisers]


def _same_at_positions(
    values: Sequence[str], winner: int, order: npt.NDArray[np.intp], winner_position: int
) -> npt.NDArray[np.bool_]:
    """Per position in preference order: the same value (ad id or lower-cased domain) as `winner`, which
    sits at `winner_position`. Ad ids are unique and most advertisers bring one ad, so one C-level count
    usually shows the winner alone; otherwise one string pass (4 us at 50), of which a request has one or
    two per win that leaves imps to fill: cheaper than numbering every ad and advertiser first."""
    value = values[winner]
    if values.count(value) == 1:
        same = np.zeros(len(order), dtype=np.bool_)
        same[winner_position] = True
        return same
    same_by_candidate = np.fromiter(map(value.__eq__, values), dtype=np.bool_, count=len(order))
    return same_by_candidate.take(order)


def _price(
    auction_type: AuctionType, winner_ecpm: float, runner_up_ecpm: float | None, floor: float
) -> float:
    if auction_type == AuctionType.FIRST_PRICE:
        return winner_ecpm
    pressure = floor if runner_up_ecpm is None else max(runner_up_ecpm, floor)
    return min(winner_ecpm, pressure + SECOND_PRICE_INCREMENT_USD)
