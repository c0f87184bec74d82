"""BidPipeline with a catalog: a request without ext.candidates is ranked from what the CandidateSource
retrieves, winners are completed by the BidRenderer and grouped by buyer seat; requests that bring their own
candidates never reach the catalog."""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec
import numpy as np
import pytest

from gateway.core.currency import CurrencyTable
from gateway.core.pipeline import BidPipeline, GatewayNoBidReason, PipelineConfig
from gateway.core.ports import (
    AdKeys,
    BidLookup,
    CampaignStates,
    Reservation,
    ReserveOutcome,
    Retrieved,
    ad_defaults,
    user_defaults,
)
from gateway.errors import StoreError
from gateway.openrtb import Bid, BidRequest, Candidate
from tests.unit.core.test_pipeline import FixedScorer, UnknownEverything, candidate


class ListedCatalog:
    """A CandidateSource answering a fixed list (with one opaque creative label and seat per candidate)."""

    def __init__(self, candidates: list[Candidate], seats: list[str | None]) -> None:
        self.candidates = candidates
        self.seats = seats
        self.calls: list[float] = []

    def retrieve(self, request: BidRequest, now: float) -> Retrieved:
        self.calls.append(now)
        return Retrieved(
            candidates=self.candidates,
            creatives=[f"creative-of-{c.id}" for c in self.candidates],
            per_imp=[len(self.candidates)] * len(request.imp),
            catalog_version="v7",
            seats=self.seats,
        )


class MarkingRenderer:
    """A BidRenderer that writes which creative it was handed into adm."""

    def render(self, request: BidRequest, bid: Bid, creative: object, response_bidid: str) -> Bid:
        return msgspec.structs.replace(bid, adm=f"{creative}|{response_bidid}", mtype=1)


def catalog_pipeline(catalog: ListedCatalog, pctr: list[float]) -> BidPipeline:
    config = PipelineConfig(seat="gw", default_tmax_s=0.1, network_margin_s=0.01, server_cap_s=0.2)
    return BidPipeline(
        UnknownEverything(),
        FixedScorer(pctr),
        CurrencyTable.default(),
        config,
        hour=lambda: 12,
        wall_clock=lambda: 1_700_000_000.0,
        catalog=catalog,
        renderer=MarkingRenderer(),
    )


def plain_request(imps: int = 2) -> BidRequest:
    return msgspec.convert({"id": "r", "imp": [{"id": str(i)} for i in range(imps)]}, BidRequest)


def listed(ad_id: str, imp: str, bid: float) -> Candidate:
    return msgspec.convert({**candidate(ad_id, f"{ad_id}.com", bid), "imp_ids": [imp]}, Candidate)


async def test_plain_request_bids_with_rendered_markup_grouped_by_seat() -> None:
    catalog = ListedCatalog([listed("a", "0", 1.0), listed("b", "1", 1.0)], seats=["Agency1", None])
    decision = await catalog_pipeline(catalog, [0.02, 0.03]).decide(plain_request(), time.monotonic())
    assert decision.outcome == "bid"
    assert catalog.calls == [1_700_000_000.0]
    assert decision.retrieved is not None
    assert decision.retrieved.catalog_version == "v7"
    assert "retrieval" in decision.timings_ms
    response = decision.response
    assert response.seatbid is not None
    seats = {seatbid.seat: seatbid.bid for seatbid in response.seatbid}
    assert set(seats) == {"Agency1", "gw"}
    [bid_a] = seats["Agency1"]
    [bid_b] = seats["gw"]
    assert (bid_a.impid, bid_b.impid) == ("0", "1")
    assert bid_a.adm == f"creative-of-a|{response.bidid}"
    assert bid_b.adm == f"creative-of-b|{response.bidid}"


async def test_nothing_retrieved_is_a_no_bid_without_scoring() -> None:
    catalog = ListedCatalog([], seats=[])
    decision = await catalog_pipeline(catalog, []).decide(plain_request(), time.monotonic())
    assert decision.outcome == f"nobid_{int(GatewayNoBidReason.NO_ELIGIBLE_CANDIDATE)}"
    assert decision.response.nbr == GatewayNoBidReason.NO_ELIGIBLE_CANDIDATE
    assert decision.retrieved is not None
    assert "scoring" not in decision.timings_ms


async def test_request_with_candidates_skips_the_catalog_and_the_renderer() -> None:
    catalog = ListedCatalog([listed("z", "0", 9.0)], seats=[None])
    body = {"id": "r", "imp": [{"id": "0"}], "ext": {"candidates": [candidate("a", "a.com", 1.0)]}}
    decision = await catalog_pipeline(catalog, [0.02]).decide(
        msgspec.convert(body, BidRequest), time.monotonic()
    )
    assert catalog.calls == []
    assert decision.retrieved is None
    assert decision.response.seatbid is not None
    [bid] = decision.response.seatbid[0].bid
    assert (bid.adid, bid.adm) == ("a", None)


def test_a_catalog_without_a_renderer_is_refused() -> None:
    config = PipelineConfig(seat="gw", default_tmax_s=0.1, network_margin_s=0.01, server_cap_s=0.2)
    with pytest.raises(ValueError, match="renderer"):
        BidPipeline(
            UnknownEverything(),
            FixedScorer([]),
            CurrencyTable.default(),
            config,
            catalog=ListedCatalog([], []),
        )


class HoldsFail:
    """A campaign store that reads state but cannot make holds (Redis failed between the two calls)."""

    async def lookup(self, user_key: str | None, ads: AdKeys, deadline: float) -> BidLookup:
        n = len(ads.ad_ids)
        states = CampaignStates(
            managed=np.zeros(n, np.bool_),
            budget_micros=np.full(n, -1, np.int64),
            committed_micros=np.zeros(n, np.int64),
            freq_cap=np.zeros(n, np.int64),
            impressions=np.zeros(n, np.int64),
            now=1_700_000_000.0,
        )
        return BidLookup(user=user_defaults(), ads=ad_defaults(ads), campaigns=states)

    async def reserve(self, reservations: Sequence[Reservation], deadline: float) -> list[ReserveOutcome]:
        raise StoreError("redis: connection refused")

    def new_bid_id(self, campaign_id: str, *, signed_notices_only: bool = False) -> str:
        return f"{campaign_id}-{'s' if signed_notices_only else '0'}"


def pipeline_with_failing_holds(catalog: ListedCatalog) -> BidPipeline:
    config = PipelineConfig(seat="gw", default_tmax_s=0.1, network_margin_s=0.01, server_cap_s=0.2)
    return BidPipeline(
        UnknownEverything(),
        FixedScorer([0.02]),
        CurrencyTable.default(),
        config,
        hour=lambda: 12,
        campaigns=HoldsFail(),
        catalog=catalog,
        renderer=MarkingRenderer(),
    )


async def test_a_catalog_bid_that_could_not_be_held_is_not_sent() -> None:
    # Unheld, its notices would find no bid record: the exchange would charge, the gateway record nothing.
    catalog = ListedCatalog([listed("a", "0", 1.0)], seats=[None])
    pipeline = pipeline_with_failing_holds(catalog)
    decision = await pipeline.decide(plain_request(imps=1), time.monotonic())
    assert (decision.outcome, decision.response.nbr) == ("nobid_1", 1)
    assert pipeline.counters.reservation_failures == 1


async def test_a_bidder_services_bid_still_goes_out_unheld_when_holds_fail() -> None:
    pipeline = pipeline_with_failing_holds(ListedCatalog([], []))
    body = {"id": "r", "imp": [{"id": "0"}], "ext": {"candidates": [candidate("a", "a.com", 1.0)]}}
    decision = await pipeline.decide(msgspec.convert(body, BidRequest), time.monotonic())
    assert decision.outcome == "bid"  # fail open, counted, as before catalogs
    assert pipeline.counters.reservation_failures == 1
