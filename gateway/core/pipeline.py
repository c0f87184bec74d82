"""The data plane: one decoded BidRequest in, one BidResponse out. No HTTP, no gRPC, no store client here.

Stages, each reading the remaining budget: features (stores + assembly) -> scoring (one Scorer call for
all candidates) -> auction (eCPM, eligibility, winners, prices) -> the OpenRTB response.

A candidate is scored once, for the placement of the first imp it may serve (its first `imp_ids` entry
that exists, else the first imp). Multi-imp requests usually offer similar placements; scoring every
(imp, candidate) pair would multiply Triton rows by the imp count for a small gain.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

from gateway.core import auction, eligibility, features, pacing, request_columns
from gateway.core.currency import CurrencyTable
from gateway.core.experiment_ports import ModelRoute, ModelRouter, ShadowJob, ShadowSink
from gateway.core.ports import (
    AdFeatures,
    AdKeys,
    BidRenderer,
    BidStateStore,
    CampaignStates,
    CandidateSource,
    FeatureStore,
    ImmediateScorer,
    Reservation,
    ReserveOutcome,
    Retrieved,
    Scorer,
    Scores,
    UserFeatures,
    ad_defaults,
    user_defaults,
)
from gateway.errors import ScoringError, StoreError
from gateway.openrtb import (
    Bid,
    BidExt,
    BidRequest,
    BidResponse,
    Candidate,
    NoBidReason,
    ResponseExt,
    SeatBid,
)

log = logging.getLogger(__name__)


class GatewayNoBidReason(enum.IntEnum):
    """Exchange-specific no-bid reasons (OpenRTB reserves 500+ for them): the standard list has no code
    for "the auction had no winner", which is the gateway's most common no-bid."""

    NO_ELIGIBLE_CANDIDATE = 501  # every candidate blocked (badv/bcat) or not allowed on any imp
    ALL_BELOW_FLOOR = 502  # some candidates could serve, none cleared a floor


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    seat: str
    default_tmax_s: float
    network_margin_s: float
    server_cap_s: float
    # Below this much remaining budget, scoring cannot finish: answer nbr 15 at once.
    min_scoring_budget_s: float = 0.002
    # Kept back from the scorer's deadline for the fallback, the auction and encoding after it.
    auction_reserve_s: float = 0.002


@dataclass(slots=True)
class Decision:
    """The response plus what observability needs (outcome, stage timings, degraded flag, and when the
    auction ran its wins and per-candidate loss codes: references to what it computed anyway)."""

    response: BidResponse
    outcome: str  # "bid", or "nobid_<nbr>"
    timings_ms: dict[str, float] = field(default_factory=dict)
    candidates: int = 0
    degraded: bool = False
    wins: list[auction.Win] = field(default_factory=list)  # prices and eCPMs in USD CPM
    loss_codes: npt.NDArray[np.int8] | None = (
        None  # AuctionResult.outcome_code: LOSS_REASONS index or NOT_LOST
    )
    # Set when the candidates came from the catalog (a plain OpenRTB request): what retrieval found.
    retrieved: Retrieved | None = None


@dataclass(slots=True)
class PipelineCounters:
    """Plain counters the metrics layer exports (the pipeline stays free of prometheus)."""

    scoring_failures: int = 0
    store_failures: int = 0
    reservation_failures: int = 0  # winners answered without a budget hold (campaign store failed)


def _new_id() -> str:
    """128 random bits as hex: what uuid4().hex carries, without building a UUID object per bid."""
    return os.urandom(16).hex()


def _now_hour() -> int:
    return datetime.now(UTC).hour


class BidPipeline:
    def __init__(
        self,
        store: FeatureStore,
        scorer: Scorer,
        currencies: CurrencyTable,
        config: PipelineConfig,
        *,
        fallback: ImmediateScorer | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        hour: Callable[[], int] = _now_hour,
        campaigns: BidStateStore | None = None,
        pacing_params: pacing.PacingParams | None = None,
        rng: np.random.Generator | None = None,
        hold_reserve_s: float = 0.003,
        catalog: CandidateSource | None = None,
        renderer: BidRenderer | None = None,
        router: ModelRouter | None = None,
        shadow: ShadowSink | None = None,
    ) -> None:
        """When the scorer fails, `fallback` scores from priors; without one the answer is no-bid nbr 1.
        Either way the response says `ext.degraded: true`.

        With `campaigns` (a store that keeps campaign state, e.g. Redis) features and campaign state come
        in one lookup, campaigns over budget / capped / paced are ineligible, and every returned bid holds
        its price against its campaign's budget first (a winner whose hold is refused is dropped).

        With `catalog`, a request without `ext.candidates` gets its candidates from retrieval, and the
        `renderer` completes each winner with markup and notice URLs; without it such a request has nothing
        to rank (the decoder refuses it first)."""
        if (catalog is None) != (renderer is None):
            raise ValueError("a catalog needs a renderer for its bids, and a renderer needs a catalog")
        self._catalog = catalog
        self._renderer = renderer
        self._store = store
        self._campaigns = campaigns
        self._pacing = pacing_params or pacing.PacingParams()
        self._rng = rng or np.random.default_rng()
        self._hold_reserve_s = hold_reserve_s if campaigns is not None else 0.0
        self._scorer = scorer
        # Experiments: the router picks each bid's arm and version (else `scorer`, arm ""); `shadow`
        # scores the winners again on the shadow version after the response (docs/experiments.md).
        self._router = router
        self._shadow = shadow
        self._fallback = fallback
        self.counters = PipelineCounters()
        self._currencies = currencies
        self._config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self._hour = hour

    def deadline(self, request: BidRequest, received_at: float) -> float:
        """min(tmax - network margin, server cap), as a clock instant."""
        tmax_s = request.tmax / 1000.0 if request.tmax is not None else self._config.default_tmax_s
        budget = min(tmax_s - self._config.network_margin_s, self._config.server_cap_s)
        return received_at + budget

    async def decide(
        self, request: BidRequest, received_at: float, timings: dict[str, float] | None = None
    ) -> Decision:
        """`timings` may arrive holding earlier stages (decode); the pipeline adds its own."""
        deadline = self.deadline(request, received_at)
        timings = {} if timings is None else timings
        raw_candidates = request.ext.candidates if request.ext else []
        if deadline - self._clock() < self._config.min_scoring_budget_s:
            return self._no_bid(request, NoBidReason.INSUFFICIENT_AUCTION_TIME, timings, len(raw_candidates))

        retrieved: Retrieved | None = None
        if not raw_candidates and self._catalog is not None:
            retrieval_at = self._clock()
            retrieved = self._catalog.retrieve(request, self._wall_clock())
            raw_candidates = retrieved.candidates
            timings["retrieval"] = (self._clock() - retrieval_at) * 1000.0
            if not raw_candidates:
                decision = self._no_bid(request, GatewayNoBidReason.NO_ELIGIBLE_CANDIDATE, timings, 0)
                decision.retrieved = retrieved
                return decision

        decision = await self._rank(request, raw_candidates, deadline, timings)
        decision.retrieved = retrieved
        if retrieved is not None and decision.outcome == "bid":
            decision.response = self._render(request, decision.response, retrieved, decision.wins)
        return decision

    async def _rank(
        self, request: BidRequest, raw_candidates: list[Candidate], deadline: float, timings: dict[str, float]
    ) -> Decision:
        """Features, scoring, auction and budget holds: the same whatever the candidates' source."""
        started = self._clock()
        candidates = request_columns.candidate_columns(raw_candidates)
        imps = [request_columns.impression(imp) for imp in request.imp]
        imp_of_candidate = request_columns.scoring_imps(request, candidates)
        context = features.context_from_request(request, self._hour())
        keys = AdKeys(
            ad_ids=candidates.ad_ids,
            campaign_ids=candidates.campaign_ids,
            advertisers=candidates.advertisers,
            categories=[cats[0] if cats else "" for cats in candidates.categories],
        )
        user_key = features.user_key(request)
        user, ads, campaign_states = await self._features(user_key, keys, deadline)
        cat_ids, dense = features.assemble(context, user, ads, imp_of_candidate)
        scored_at = self._clock()
        timings["features"] = (scored_at - started) * 1000.0

        degraded = False
        route = self._router.route(user_key, request.id) if self._router is not None else None
        scorer = route.scorer if route is not None else self._scorer
        try:
            # The scorer gets the deadline minus what the fallback, auction and encoding need after it.
            # With campaign state it also keeps back the budget holds' round trip.
            scores = await scorer.score(
                cat_ids, dense, deadline - self._config.auction_reserve_s - self._hold_reserve_s
            )
        except ScoringError as exc:
            log.debug("scoring failed (%s): %s", "priors" if self._fallback else "no-bid", exc)
            self.counters.scoring_failures += 1
            if self._fallback is None:
                timings["scoring"] = (self._clock() - scored_at) * 1000.0
                return self._no_bid(
                    request, NoBidReason.TECHNICAL_ERROR, timings, len(candidates), degraded=True
                )
            scores = self._fallback.score_now(dense)
            degraded = True
        auction_at = self._clock()
        timings["scoring"] = (auction_at - scored_at) * 1000.0

        ecpm = auction.compute_ecpm(candidates.bid_types, candidates.bids, scores.pctr, scores.pcvr)
        allowed = eligibility.build(
            imps,
            candidates,
            badv=request.badv or [],
            bcat=request.bcat or [],
            ecpm=ecpm,
            currency_table=self._currencies,
            excluded=self._campaign_exclusions(campaign_states, candidates.campaign_ids),
        )
        result = auction.run(ecpm, allowed, candidates, imps, auction.AuctionType(request.at))
        bid_ids = [_new_id() for _ in result.wins]
        unheld = False
        # No state read (the store failed): holds would fail too, so answer unheld at once (counted).
        if result.wins and self._campaigns is not None and campaign_states is None:
            self.counters.reservation_failures += 1
            unheld = True
        elif result.wins and self._campaigns is not None:
            # Ids from the campaign store: its win notice finds the bid record (and its shard) by the id.
            bid_ids = [
                self._campaigns.new_bid_id(
                    raw_candidates[w.candidate].campaign_id, signed_notices_only=self._signed_only(request)
                )
                for w in result.wins
            ]
            result, bid_ids, unheld = await self._reserve(
                request,
                raw_candidates=raw_candidates,
                result=result,
                bid_ids=bid_ids,
                user_key=user_key,
                deadline=deadline,
                attribution=(scores, route.arm if route is not None else ""),
            )
        timings["auction"] = (self._clock() - auction_at) * 1000.0
        if unheld and self._signed_only(request):
            # A catalog bid without its record could never be billed (its notices would find no bid): the
            # exchange would charge the advertiser and the gateway would record nothing. Bidder services'
            # bids still go out unheld (fail open), as before.
            return self._no_bid(
                request,
                NoBidReason.TECHNICAL_ERROR,
                timings,
                len(candidates),
                degraded=degraded,
                loss_codes=result.outcome_code,
            )

        debug = _debug_info(raw_candidates, result, ecpm, timings) if _wants_debug(request) else None
        if not result.wins:
            reason = (
                GatewayNoBidReason.ALL_BELOW_FLOOR
                if (allowed.drop_code == eligibility.reason_code(eligibility.LossReason.BELOW_FLOOR)).any()
                else GatewayNoBidReason.NO_ELIGIBLE_CANDIDATE
            )
            return self._no_bid(
                request,
                reason,
                timings,
                len(candidates),
                debug=debug,
                degraded=degraded,
                loss_codes=result.outcome_code,
            )
        if route is not None and route.shadow_version is not None and not degraded:
            self._offer_shadow(route, result.wins, bid_ids, cat_ids, dense)
        response = self._bid_response(
            request,
            raw_candidates,
            result,
            scores=scores,
            debug=debug,
            degraded=degraded,
            bid_ids=bid_ids,
            arm=route.arm if route is not None else "",
        )
        return Decision(
            response=response,
            outcome="bid",
            timings_ms=timings,
            candidates=len(candidates),
            degraded=degraded,
            wins=result.wins,
            loss_codes=result.outcome_code,
        )

    async def _features(
        self, user_key: str | None, keys: AdKeys, deadline: float
    ) -> tuple[UserFeatures, AdFeatures, CampaignStates | None]:
        """Store lookups; a failing store degrades to defaults (counted), it never fails the bid."""
        if self._campaigns is not None:
            # One round trip for user, ads and campaign state, leaving the scorer its minimum budget.
            try:
                found = await self._campaigns.lookup(
                    user_key, keys, deadline - self._config.min_scoring_budget_s
                )
            except StoreError as exc:
                log.debug("store failed, using defaults: %s", exc)
                self.counters.store_failures += 1
                return user_defaults(), ad_defaults(keys), None
            if found.degraded:
                self.counters.store_failures += 1
            return found.user, found.ads, found.campaigns
        try:
            user = await self._store.user_features(user_key)
        except StoreError as exc:
            log.warning("user store failed, using defaults: %s", exc)
            self.counters.store_failures += 1
            user = user_defaults()
        try:
            ads = await self._store.ad_features(keys)
        except StoreError as exc:
            log.warning("ad store failed, using defaults: %s", exc)
            self.counters.store_failures += 1
            ads = ad_defaults(keys)
        return user, ads, None

    def _campaign_exclusions(
        self, states: CampaignStates | None, campaign_ids: Sequence[str]
    ) -> npt.NDArray[np.int8] | None:
        if states is None:  # no campaign state (embedded store, or Redis unreachable): nothing limited
            return None
        verdicts = pacing.campaign_verdicts(states, campaign_ids, self._pacing, self._rng)
        return _VERDICT_LOSS_CODES[verdicts]

    async def _reserve(
        self,
        request: BidRequest,
        *,
        raw_candidates: list[Candidate],
        result: auction.AuctionResult,
        bid_ids: list[str],
        user_key: str | None,
        deadline: float,
        attribution: tuple[Scores, str] | None = None,
    ) -> tuple[auction.AuctionResult, list[str], bool]:
        """Hold each winner's price against its campaign's budget before answering. A refused hold (the
        budget or the user's cap ran out since the lookup: another replica won) drops that win; its imp
        goes unfilled rather than paying a second round trip for the runner-up. When holds cannot be made
        at all (Redis failed), the bids go out unheld: bidding continues, counted. The flag says so."""
        assert self._campaigns is not None
        currency = self._currencies.response_currency(request.cur)
        rate = self._currencies.rate(currency)
        reservations = [
            Reservation(
                bid_id=bid_id,
                campaign_id=raw_candidates[win.candidate].campaign_id,
                user_key=user_key,
                price=self._currencies.price_from_usd(win.price_usd, currency),
                currency=currency,
                rate=rate,
                cost_micros=pacing.impression_cost_micros(win.price_usd),
                **_model_attribution(attribution, win.candidate, raw_candidates[win.candidate]),
            )
            for win, bid_id in zip(result.wins, bid_ids, strict=True)
        ]
        try:
            outcomes = await self._campaigns.reserve(reservations, deadline)
        except StoreError as exc:
            log.debug("bid holds failed, answering unheld: %s", exc)  # counted; an outage would flood logs
            self.counters.reservation_failures += 1
            return result, bid_ids, True
        if all(outcome is ReserveOutcome.RESERVED for outcome in outcomes):
            return result, bid_ids, False
        codes = result.outcome_code.copy()
        kept_wins, kept_ids = [], []
        for win, bid_id, outcome in zip(result.wins, bid_ids, outcomes, strict=True):
            if outcome is ReserveOutcome.RESERVED:
                kept_wins.append(win)
                kept_ids.append(bid_id)
            else:
                codes[win.candidate] = _REFUSED_HOLD_CODES[outcome]
        return auction.AuctionResult(wins=kept_wins, outcome_code=codes), kept_ids, False

    def _bid_response(
        self,
        request: BidRequest,
        raw_candidates: list[Candidate],
        result: auction.AuctionResult,
        *,
        scores: Scores,
        debug: dict[str, Any] | None,
        degraded: bool,
        bid_ids: list[str] | None = None,
        arm: str = "",
    ) -> BidResponse:
        currency = self._currencies.response_currency(request.cur)
        bids = []
        ids = bid_ids if bid_ids is not None else [_new_id() for _ in result.wins]
        for win, bid_id in zip(result.wins, ids, strict=True):
            ad = raw_candidates[win.candidate]
            bids.append(
                Bid(
                    id=bid_id,
                    impid=request.imp[win.imp].id,
                    price=self._currencies.price_from_usd(win.price_usd, currency),
                    adid=ad.id,
                    adomain=[ad.advertiser],
                    cid=ad.campaign_id,
                    crid=ad.crid or ad.id,
                    cat=ad.cat,
                    dealid=win.deal_id,
                    # .item: a Python float without numpy's deprecated (and warning, ~0.6 us) float() of
                    # the [1]-shaped row of Triton's [N, 1] outputs. win.ecpm is float(ecpm[candidate]).
                    ext=BidExt(
                        ecpm=round(win.ecpm, 6),
                        pctr=scores.pctr.item(win.candidate),
                        pcvr=scores.pcvr.item(win.candidate),
                        bid_type=ad.bid_type,
                        model_version=scores.model_version,
                        experiment=arm,
                    ),
                )
            )
        return BidResponse(
            id=request.id,
            bidid=_new_id(),
            cur=currency,
            seatbid=[SeatBid(seat=self._config.seat, bid=bids)],
            ext=ResponseExt(degraded=degraded, debug=debug),
        )

    def _offer_shadow(
        self,
        route: ModelRoute,
        wins: list[auction.Win],
        bid_ids: list[str],
        cat_ids: npt.NDArray[np.int64],
        dense: npt.NDArray[np.float32],
    ) -> None:
        """Hand the winners' rows to the shadow scorer: a gather of a few rows and a non-blocking put."""
        if self._shadow is None or route.shadow_version is None or not wins:
            return
        rows = [win.candidate for win in wins]
        self._shadow.offer(ShadowJob(route.shadow_version, cat_ids[rows], dense[rows], list(bid_ids)))

    def _signed_only(self, request: BidRequest) -> bool:
        """A catalog bid (a plain request's): billed only through the signed notice URLs it carries."""
        return self._renderer is not None and not (request.ext and request.ext.candidates)

    def _render(
        self, request: BidRequest, response: BidResponse, retrieved: Retrieved, wins: list[auction.Win]
    ) -> BidResponse:
        """Markup and notice URLs for each catalog bid, and the bids grouped by buyer seat. The bids of
        the one seatbid `_bid_response` wrote are in `wins` order."""
        assert self._renderer is not None
        assert response.seatbid
        bidid = response.bidid or ""
        by_seat: dict[str, list[Bid]] = {}
        for bid, win in zip(response.seatbid[0].bid, wins, strict=True):
            rendered = self._renderer.render(request, bid, retrieved.creatives[win.candidate], bidid)
            seat = retrieved.seats[win.candidate] if retrieved.seats else None
            by_seat.setdefault(seat or self._config.seat, []).append(rendered)
        seatbid = [SeatBid(seat=seat, bid=bids) for seat, bids in by_seat.items()]
        return msgspec.structs.replace(response, seatbid=seatbid)

    def _no_bid(
        self,
        request: BidRequest,
        reason: int,
        timings: dict[str, float],
        candidates: int,
        *,
        debug: dict[str, Any] | None = None,
        degraded: bool = False,
        loss_codes: npt.NDArray[np.int8] | None = None,
    ) -> Decision:
        if debug is None and _wants_debug(request):
            debug = {"timings_ms": timings, "dropped": []}
        response = BidResponse(
            id=request.id, seatbid=[], nbr=int(reason), ext=ResponseExt(degraded=degraded, debug=debug)
        )
        return Decision(
            response=response,
            outcome=f"nobid_{int(reason)}",
            timings_ms=timings,
            candidates=candidates,
            degraded=degraded,
            loss_codes=loss_codes,
        )


# CampaignVerdict value -> the LossReason code eligibility applies (PASS: not excluded).
_VERDICT_LOSS_CODES: Final = np.array(
    [
        eligibility.NOT_LOST,
        eligibility.reason_code(eligibility.LossReason.BUDGET_EXHAUSTED),
        eligibility.reason_code(eligibility.LossReason.FREQUENCY_CAPPED),
        eligibility.reason_code(eligibility.LossReason.PACED),
    ],
    dtype=np.int8,
)
_REFUSED_HOLD_CODES: Final = {
    ReserveOutcome.BUDGET_EXHAUSTED: eligibility.reason_code(eligibility.LossReason.BUDGET_EXHAUSTED),
    ReserveOutcome.FREQUENCY_CAPPED: eligibility.reason_code(eligibility.LossReason.FREQUENCY_CAPPED),
}


def _model_attribution(
    attribution: tuple[Scores, str] | None, candidate: int, ad: Candidate
) -> dict[str, Any]:
    """What the bid record keeps for click/conversion calibration: the version, arm and predictions."""
    if attribution is None:
        return {}
    scores, arm = attribution
    return {
        "model_version": scores.model_version,
        "arm": arm,
        "pctr": scores.pctr.item(candidate),
        "pcvr": scores.pcvr.item(candidate),
        "bid_type": ad.bid_type,
    }


def _wants_debug(request: BidRequest) -> bool:
    return bool(request.ext and request.ext.debug)


def _debug_info(
    raw: list[Candidate],
    result: auction.AuctionResult,
    ecpm: npt.NDArray[np.float64],
    timings: dict[str, float],
) -> dict[str, Any]:
    dropped = [
        {"id": ad.id, "reason": str(reason), "ecpm": round(float(value), 6)}
        for ad, reason, value in zip(raw, result.outcomes(), ecpm.tolist(), strict=True)
        if reason is not None
    ]
    return {"timings_ms": timings, "dropped": dropped}
