"""CatalogRetriever: each targeting rule, format fit, block, deal rule and the top-K cut, matching or not."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.catalog.index import build_index
from gateway.catalog.loader import parse_catalog
from gateway.catalog.model import CreativeRef
from gateway.catalog.reloader import CatalogHolder
from gateway.catalog.retrieval import CatalogRetriever
from tests.unit.catalog.builders import (
    NOON_UTC,
    audio,
    banner,
    banner_imp,
    campaign,
    jsonl,
    native,
    request,
    retriever,
    run,
    video,
)

SITE = {"site": {"domain": "www.news.example", "cat": ["IAB3-1"], "publisher": {"cat": ["IAB12"]}}}
APP = {"app": {"bundle": "com.game.example", "cat": ["IAB9"]}}
DEVICE = {"device": {"devicetype": 4, "os": "iOS", "geo": {"country": "usa", "region": "US-CA"}}}


def targeted(**targeting: Any) -> CatalogRetriever:
    return retriever(campaign("c", banner("t"), targeting=targeting), campaign("o", banner("open")))


@pytest.mark.parametrize(
    ("targeting", "matching", "other"),
    [
        ({"countries": ["USA"]}, DEVICE, {"device": {"geo": {"country": "GBR"}}}),
        ({"countries": ["USA"]}, DEVICE, {}),  # no country in the request: no match
        ({"regions": ["us-ca"]}, DEVICE, {"device": {"geo": {"region": "US-NY"}}}),
        ({"device_types": [4, 5]}, DEVICE, {"device": {"devicetype": 2}}),
        ({"os": ["ios"]}, DEVICE, {"device": {"os": "Android"}}),
        ({"site_domains": ["news.example"]}, SITE, {"site": {"domain": "other.example"}}),
        ({"site_domains": ["www.news.example"]}, SITE, APP),
        ({"app_bundles": ["com.game.example"]}, APP, {"app": {"bundle": "com.other"}}),
        ({"publisher_categories": ["IAB3"]}, SITE, {"site": {"cat": ["IAB4-1"]}}),  # tier-1 takes children
        ({"publisher_categories": ["IAB12"]}, SITE, APP),  # the publisher's own categories count
        ({"publisher_categories": ["IAB3-1"]}, SITE, {"site": {"cat": ["IAB3"]}}),  # not the reverse
        ({"hours_utc": [12]}, {}, None),
        ({"channels": ["app"]}, APP, SITE),
        ({"channels": ["dooh"]}, {"dooh": {"id": "screen"}}, SITE),
    ],
)
def test_allow_list_targeting(
    targeting: dict[str, Any], matching: dict[str, Any], other: dict[str, Any] | None
) -> None:
    source = targeted(**targeting)
    assert sorted(run(source, request(**matching))) == ["open", "t"]
    if other is not None:
        assert run(source, request(**other)) == ["open"]


def test_hours_are_the_utc_hour_of_now() -> None:
    source = targeted(hours_utc=[12, 13])
    assert "t" in run(source, request(), NOON_UTC + 3599)
    assert "t" not in run(source, request(), NOON_UTC + 7200)
    assert "t" not in run(source, request(), NOON_UTC - 1)


@pytest.mark.parametrize(
    ("targeting", "blocked", "allowed"),
    [
        ({"site_domains_blocked": ["news.example"]}, SITE, {"site": {"domain": "other.example"}}),
        ({"app_bundles_blocked": ["COM.GAME.EXAMPLE"]}, APP, {"app": {"bundle": "com.other"}}),
    ],
)
def test_block_lists(targeting: dict[str, Any], blocked: dict[str, Any], allowed: dict[str, Any]) -> None:
    source = targeted(**targeting)
    assert run(source, request(**blocked)) == ["open"]
    assert sorted(run(source, request(**allowed))) == ["open", "t"]


def test_request_blocks_badv_bcat_bapp_and_battr() -> None:
    source = retriever(
        campaign("a", banner("adv"), advertiser="Brand.example"),
        campaign("b", banner("child", cat=["IAB25-3"])),
        campaign("c", banner("parent-cat"), cat=["IAB7"]),
        campaign("d", banner("promoted"), app_bundle="com.promo"),
        campaign("e", banner("attr", attr=[13, 1])),
        campaign("f", banner("clean", cat=["IAB2"])),
    )
    everything = ["adv", "child", "parent-cat", "promoted", "attr", "clean"]
    assert sorted(run(source, request())) == sorted(everything)
    assert "adv" not in run(source, request(badv=["brand.EXAMPLE"]))
    assert "child" not in run(source, request(bcat=["IAB25"]))  # a tier-1 block takes its children
    assert "child" in run(source, request(bcat=["IAB2"]))  # "IAB2" does not block "IAB25-3"
    assert "parent-cat" not in run(source, request(bcat=["IAB7"]))  # the campaign's categories count
    assert "parent-cat" in run(source, request(bcat=["IAB7-1"]))
    assert "promoted" not in run(source, request(bapp=["com.promo"]))
    assert "attr" not in run(source, request(banner_imp(banner={"battr": [13]})))
    assert "attr" in run(source, request(banner_imp(banner={"battr": [14]})))


def test_paused_and_out_of_flight_campaigns_do_not_bid() -> None:
    source = retriever(
        campaign("p", banner("paused"), status="paused"),
        campaign("f", banner("flight"), start="2024-06-18T12:00:00Z", end="2024-06-18T13:00:00+00:00"),
        campaign("o", banner("open")),
    )
    assert run(source, request(), NOON_UTC) == ["flight", "open"]  # equal eCPMs keep file order
    assert run(source, request(), NOON_UTC - 1) == ["open"]  # before start
    assert run(source, request(), NOON_UTC + 3600) == ["open"]  # end is exclusive
    assert "flight" in run(source, request(), NOON_UTC + 3599)  # the memo follows the clock both ways


def test_banner_fit_by_size_format_and_mime() -> None:
    source = retriever(
        campaign("a", banner("b300", 300, 250), banner("b728", 728, 90)),
        campaign(
            "b", banner("jpg", 300, 250) | {"banner": {**banner("x")["banner"], "mimes": ["image/jpeg"]}}
        ),
        campaign("c", video("vid"), native("nat")),
    )
    assert sorted(run(source, request(banner_imp()))) == ["b300", "jpg"]
    formats = {"format": [{"w": 728, "h": 90}]}
    assert sorted(run(source, request(banner_imp(w=320, h=50, banner=formats)))) == ["b728"]
    assert run(source, request(banner_imp(banner={"mimes": ["image/png"]}))) == ["b300"]
    assert sorted(run(source, request({"id": "1", "banner": {}}))) == ["b300", "b728", "jpg"]  # any size


def test_video_fit_by_duration_mime_and_protocol() -> None:
    source = retriever(
        campaign(
            "v",
            video("v15", 15),
            video("v30", 30),
            video("webm", 15, media={"mime": "video/webm"}),
            video("vast4", 20, media={"protocols": [7]}),
            audio("aud"),
        )
    )

    def imp(**spec: Any) -> dict[str, Any]:
        return {"id": "1", "video": spec}

    assert sorted(run(source, request(imp()))) == ["v15", "v30", "vast4", "webm"]
    assert sorted(run(source, request(imp(minduration=5, maxduration=20)))) == ["v15", "vast4", "webm"]
    assert run(source, request(imp(minduration=20, maxduration=20))) == ["vast4"]
    assert sorted(run(source, request(imp(mimes=["video/mp4"], protocols=[2, 3])))) == ["v15", "v30"]
    assert sorted(run(source, request(imp(protocols=[7], maxduration=15)))) == ["v15", "webm"]
    assert run(source, request({"id": "1", "audio": {"maxduration": 30}})) == ["aud"]
    assert run(source, request({"id": "1", "audio": {"maxduration": 29}})) == []


def test_native_imps_take_native_creatives_and_the_hook_filters_them() -> None:
    source = retriever(campaign("n", native("nat1"), native("nat2"), banner("ban")))
    assert sorted(run(source, request({"id": "1", "native": {"request": "{}"}}))) == ["nat1", "nat2"]
    picky = retriever(
        campaign("n", native("nat1"), native("nat2"), banner("ban")),
        native_fits=lambda imp, creative: imp.id == "1" and creative.title == "A title",
        top_k=1,
    )
    assert run(picky, request({"id": "1", "native": {}})) == ["nat1"]
    assert run(picky, request({"id": "2", "native": {}})) == []


def test_dooh_requests_are_the_dooh_channel() -> None:
    source = retriever(
        campaign("d", banner("screen", 1080, 1920), targeting={"channels": ["dooh"]}),
        campaign("s", banner("web", 1080, 1920), targeting={"channels": ["site"]}),
    )
    assert run(source, request(banner_imp(w=1080, h=1920), dooh={"id": "x"})) == ["screen"]


def deal_imp(private: int, *deals: dict[str, Any]) -> dict[str, Any]:
    return banner_imp(pmp={"private_auction": private, "deals": list(deals)})


def test_private_auctions_take_only_deal_campaigns_whose_seat_may_buy() -> None:
    source = retriever(
        campaign("a1", banner("agency1"), bid=3, seat="Agency1", targeting={"deal_ids": ["D1"]}),
        campaign("a2", banner("agency2"), bid=2, seat="Agency2", targeting={"deal_ids": ["D2"]}),
        campaign("own", banner("ours"), bid=4, targeting={"deal_ids": ["D1", "D3"]}),
        campaign("open", banner("open")),
        seat="gateway",
    )
    d1 = {"id": "D1", "wseat": ["Agency1"]}
    d2 = {"id": "D2", "wseat": ["Agency2"]}
    got = source.retrieve(request(deal_imp(1, d1, d2)), NOON_UTC)
    assert [(c.id, c.deal_id) for c in got.candidates] == [("agency1", "D1"), ("agency2", "D2")]
    assert got.seats == ["Agency1", "Agency2"]
    # Without wseat any seat may buy; the gateway's own seat is named by the retriever's seat.
    got = source.retrieve(request(deal_imp(1, {"id": "D1"})), NOON_UTC)
    assert [(c.id, c.deal_id) for c in got.candidates] == [("ours", "D1"), ("agency1", "D1")]
    assert got.seats == [None, "Agency1"]
    assert run(source, request(deal_imp(1, {"id": "D3", "wseat": ["gateway"]}))) == ["ours"]
    assert run(source, request(deal_imp(1, {"id": "D3", "wseat": ["Agency1"]}))) == []


def test_open_auctions_with_deals_take_both_and_deal_campaigns_never_bid_open() -> None:
    source = retriever(
        campaign("a1", banner("deal"), bid=3, targeting={"deal_ids": ["D1"]}),
        campaign("open", banner("open")),
    )
    got = source.retrieve(request(deal_imp(0, {"id": "D1"})), NOON_UTC)
    assert [(c.id, c.deal_id) for c in got.candidates] == [("deal", "D1"), ("open", None)]
    assert run(source, request()) == ["open"]
    assert run(source, request(deal_imp(0, {"id": "other"}))) == ["open"]


def test_top_k_keeps_the_best_prior_ecpm_across_imps() -> None:
    source = retriever(
        campaign("cpm", banner("cpm-2"), bid=2.0),  # eCPM 2
        campaign("cpc", banner("cpc", prior_ctr=0.01), bid=0.5, bid_type="cpc"),  # 0.5*0.01*1000 = 5
        campaign("cpa", banner("cpa", prior_ctr=0.1, prior_cvr=0.1), bid=0.3, bid_type="cpa"),  # 3
        campaign("dflt", banner("default-priors"), bid=0.05, bid_type="cpc"),  # 0.05*0.03*1000 = 1.5
        campaign("big", banner("leaderboard", 728, 90), bid=1.0),
        top_k=3,
    )
    two_imps = request(banner_imp("a"), banner_imp("b", 728, 90))
    got = source.retrieve(two_imps, NOON_UTC)
    assert [c.id for c in got.candidates] == ["cpc", "cpa", "cpm-2"]
    assert got.per_imp == [4, 1]  # counted before the cut
    assert [c.imp_ids for c in got.candidates] == [["a"], ["a"], ["a"]]
    assert run(source, request()) == ["cpc", "cpa", "cpm-2"]


def test_candidates_carry_the_catalogs_fields_and_refs() -> None:
    source = retriever(
        campaign(
            "c",
            banner("x", cat=["IAB2-1"]),
            banner("y"),
            bid=2.5,
            cat=["IAB2"],
            bid_type="cpc",
            advertiser="brand.example",
        ),
    )
    got = source.retrieve(request(banner_imp("a"), banner_imp("b")), NOON_UTC)
    first = got.candidates[0]
    assert (first.campaign_id, first.advertiser, first.bid_type, first.bid) == (
        "c",
        "brand.example",
        "cpc",
        2.5,
    )
    assert {c.id: c.cat for c in got.candidates} == {"x": ["IAB2-1"], "y": ["IAB2"]}
    assert all(c.crid == c.id and c.imp_ids == ["a", "b"] for c in got.candidates)
    refs = got.creatives
    assert [r.creative.id for r in refs if isinstance(r, CreativeRef)] == ["x", "y"]
    assert got.catalog_version == "v1"
    assert source.retrieve(request(), NOON_UTC).candidates[0].imp_ids is None  # one imp: no imp_ids


def test_a_deal_creative_fitting_two_imps_bids_into_one_deal() -> None:
    source = retriever(campaign("d", banner("x"), targeting={"deal_ids": ["D1", "D2"]}))
    got = source.retrieve(
        request(
            deal_imp(1, {"id": "D2"}) | {"id": "a"},
            deal_imp(1, {"id": "D1"}) | {"id": "b"},
            deal_imp(1, {"id": "D2"}) | {"id": "c"},
        ),
        NOON_UTC,
    )
    assert [(c.deal_id, c.imp_ids) for c in got.candidates] == [("D2", ["a", "c"])]
    assert got.per_imp == [1, 1, 1]


def test_an_empty_holder_retrieves_nothing() -> None:
    got = CatalogRetriever(CatalogHolder()).retrieve(request(), NOON_UTC)
    assert (got.candidates, got.per_imp, got.catalog_version) == ([], [0], "")
    empty = CatalogHolder(build_index(parse_catalog(jsonl(campaign("p", status="paused")))))
    assert CatalogRetriever(empty).retrieve(request(), NOON_UTC).candidates == []
    with pytest.raises(ValueError, match="top_k"):
        CatalogRetriever(empty, top_k=0)
