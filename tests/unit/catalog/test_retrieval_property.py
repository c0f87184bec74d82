"""Retrieval equals a brute-force filter written straight from the semantics in gateway.catalog.model,
over random catalogs and requests (hypothesis): the bitset index must neither lose nor invent a match."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.catalog.index import normalise_domain, prior_ecpm
from gateway.catalog.loader import flight_window, parse_catalog
from gateway.catalog.model import Campaign, Creative
from gateway.openrtb import BidRequest, Imp
from tests.unit.catalog.builders import NOON_UTC, jsonl, request, retriever

COUNTRIES = ["USA", "GBR"]
DOMAINS = ["a.example", "www.b.example"]
BUNDLES = ["com.x", "com.y"]
CATS = ["IAB1", "IAB1-2", "IAB2", "IAB25-3"]
SIZES = [(300, 250), (728, 90)]
DEALS = ["D1", "D2"]
SEATS = ["S1", "S2"]


def maybe(values: list[Any], min_size: int = 1) -> st.SearchStrategy[list[Any] | None]:
    return st.none() | st.lists(st.sampled_from(values), min_size=min_size, max_size=2, unique=True)


targetings = st.fixed_dictionaries(
    {},
    optional={
        "countries": maybe(COUNTRIES),
        "device_types": maybe([1, 4]),
        "os": maybe(["ios", "android"]),
        "site_domains": maybe(DOMAINS),
        "site_domains_blocked": maybe(DOMAINS),
        "app_bundles": maybe(BUNDLES),
        "app_bundles_blocked": maybe(BUNDLES),
        "publisher_categories": maybe(CATS),
        "hours_utc": maybe([11, 12]),
        "channels": maybe(["site", "app", "dooh"]),
        "deal_ids": maybe(DEALS),
    },
)


@st.composite
def creatives(draw: st.DrawFn, cid: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["banner", "video", "native"]))
    base: dict[str, Any] = {
        "id": cid,
        "click_url": "https://click.example.com/x",
        "attr": draw(st.lists(st.sampled_from([1, 13, 14]), max_size=2, unique=True)),
        "prior_ctr": draw(st.none() | st.sampled_from([0.01, 0.05])),
    }
    if draw(st.booleans()):
        base["cat"] = draw(st.lists(st.sampled_from(CATS), max_size=2, unique=True))
    if kind == "banner":
        sizes = draw(st.lists(st.sampled_from(SIZES), min_size=1, max_size=2, unique=True))
        base["banner"] = {
            "sizes": [{"w": w, "h": h} for w, h in sizes],
            "image_url": "https://cdn.example.com/i",
        }
    elif kind == "video":
        base["video"] = {
            "media_url": "https://cdn.example.com/v.mp4",
            "duration_s": draw(st.sampled_from([15, 30])),
            "mime": draw(st.sampled_from(["video/mp4", "video/webm"])),
            "protocols": draw(st.lists(st.sampled_from([2, 3, 7]), min_size=1, max_size=2, unique=True)),
        }
    else:
        base["native"] = {"title": "t", "sponsored_by": "s"}
    return base


@st.composite
def campaigns(draw: st.DrawFn, n: int) -> dict[str, Any]:
    count = draw(st.integers(1, 3))
    line: dict[str, Any] = {
        "id": f"c{n}",
        "advertiser": draw(st.sampled_from(["a.example", "B.example"])),
        "cat": draw(st.lists(st.sampled_from(CATS), max_size=2, unique=True)),
        "bid_type": draw(st.sampled_from(["cpm", "cpc", "cpa"])),
        "bid": draw(st.sampled_from([0.5, 1.0, 2.0])),
        "status": draw(st.sampled_from(["active", "active", "paused"])),
        "targeting": draw(targetings),
        "creatives": [draw(creatives(f"c{n}-{k}")) for k in range(count)],
    }
    if draw(st.booleans()):
        line["seat"] = draw(st.sampled_from(SEATS))
    if draw(st.integers(0, 4)) == 0:
        line["end"] = "2024-06-18T11:00:00Z"  # already over at NOON_UTC
    if draw(st.integers(0, 4)) == 0:
        line["app_bundle"] = draw(st.sampled_from(BUNDLES))
    return line


@st.composite
def imps(draw: st.DrawFn, n: int) -> dict[str, Any]:
    imp: dict[str, Any] = {"id": str(n)}
    kind = draw(st.sampled_from(["banner", "video", "native", "banner+video"]))
    if "banner" in kind:
        w, h = draw(st.sampled_from(SIZES))
        imp["banner"] = {"w": w, "h": h, "battr": draw(maybe([13, 14]))}
    if "video" in kind:
        imp["video"] = {
            "minduration": draw(st.none() | st.just(20)),
            "maxduration": draw(st.none() | st.just(30)),
            "mimes": draw(maybe(["video/mp4"])),
            "protocols": draw(maybe([2, 7])),
            "battr": draw(maybe([13])),
        }
    if kind == "native":
        imp["native"] = {"battr": draw(maybe([1]))}
    if draw(st.booleans()):
        deals = [{"id": d, "wseat": draw(maybe([*SEATS, "gw"]))} for d in draw(maybe(DEALS)) or []]
        imp["pmp"] = {"private_auction": draw(st.sampled_from([0, 1])), "deals": deals}
    return imp


@st.composite
def requests(draw: st.DrawFn) -> BidRequest:
    fields: dict[str, Any] = {}
    channel = draw(st.sampled_from(["site", "app", "dooh", None]))
    cat = draw(maybe(CATS))
    if channel == "site":
        fields["site"] = {"domain": draw(st.none() | st.sampled_from(DOMAINS)), "cat": cat}
    elif channel == "app":
        fields["app"] = {"bundle": draw(st.none() | st.sampled_from(BUNDLES)), "publisher": {"cat": cat}}
    elif channel == "dooh":
        fields["dooh"] = {"id": "screen"}
    fields["device"] = {
        "devicetype": draw(st.none() | st.sampled_from([1, 4])),
        "os": draw(st.none() | st.sampled_from(["iOS", "Android"])),
        "geo": {"country": draw(st.none() | st.sampled_from(COUNTRIES))},
    }
    fields["badv"] = draw(maybe(["a.example", "b.EXAMPLE"]))
    fields["bcat"] = draw(maybe(["IAB1", "IAB25", "IAB2"]))
    fields["bapp"] = draw(maybe(BUNDLES))
    count = draw(st.integers(1, 3))
    return request(*(draw(imps(n)) for n in range(count)), **fields)


# ------------------------------------------------------------------------ the reference, one rule at a time


def allows(listed: list[Any] | None, value: Any) -> bool:
    return not listed or value in listed


def campaign_matches(campaign: Campaign, req: BidRequest, now: float) -> bool:
    t = campaign.targeting
    device = req.device
    geo = device.geo if device else None
    site, app = req.site, req.app
    domain = normalise_domain(site.domain) if site and site.domain else None
    bundle = app.bundle.lower() if app and app.bundle else None
    channel = "site" if site else "app" if app else "dooh" if req.dooh else None
    cats = [*(site.cat or []), *(site.publisher.cat or [] if site.publisher else [])] if site else []
    if app:
        cats = [*(app.cat or []), *(app.publisher.cat or [] if app.publisher else [])]
    return (
        campaign.status == "active"
        and flight_window(campaign).covers(now)
        and (not t.countries or (geo is not None and geo.country in t.countries))
        and (not t.device_types or (device is not None and device.devicetype in t.device_types))
        and (not t.os or (device is not None and (device.os or "").lower() in t.os))
        and (not t.site_domains or domain in [normalise_domain(d) for d in t.site_domains])
        and not (domain and domain in [normalise_domain(d) for d in t.site_domains_blocked or []])
        and (not t.app_bundles or bundle in t.app_bundles)
        and not (bundle and bundle in (t.app_bundles_blocked or []))
        and (not t.publisher_categories or any(
            c in t.publisher_categories or c.partition("-")[0] in t.publisher_categories for c in cats))
        and allows(t.hours_utc, int(now // 3600) % 24)
        and (not t.channels or channel in t.channels)
        and campaign.advertiser.lower() not in [b.lower() for b in req.badv or []]
        and not (campaign.app_bundle and campaign.app_bundle in (req.bapp or []))
    )  # fmt: skip


def creative_fits(creative: Creative, imp: Imp) -> bool:
    fits = False
    if imp.banner and creative.banner:
        sizes = {(s.w, s.h) for s in creative.banner.sizes}
        fits |= (imp.banner.w, imp.banner.h) in sizes and not set(creative.attr) & set(imp.banner.battr or [])
    if imp.video and creative.video:
        v, spec = creative.video, imp.video
        fits |= (
            (spec.minduration is None or v.duration_s >= spec.minduration)
            and (spec.maxduration is None or v.duration_s <= spec.maxduration)
            and (not spec.mimes or v.mime in spec.mimes)
            and (not spec.protocols or bool(set(v.protocols) & set(spec.protocols)))
            and not set(creative.attr) & set(spec.battr or [])
        )
    if imp.native and creative.native:
        fits |= not set(creative.attr) & set(imp.native.battr or [])
    return fits


def category_blocked(codes: list[str], bcat: list[str] | None) -> bool:
    return any(c in (bcat or []) or c.partition("-")[0] in (bcat or []) for c in codes)


def reference(catalog_lines: list[dict[str, Any]], req: BidRequest, seat: str) -> dict[str, tuple[Any, ...]]:
    """creative id -> (imp ids, deal id), over the whole catalog (no top-K cut)."""
    catalog = parse_catalog(jsonl(*catalog_lines))
    found: dict[str, tuple[list[str], str | None]] = {}
    for campaign in catalog.campaigns:
        if not campaign_matches(campaign, req, NOON_UTC):
            continue
        for creative in campaign.creatives:
            codes = creative.cat if creative.cat is not None else campaign.cat
            if category_blocked(codes, req.bcat):
                continue
            for imp in req.imp:
                if not creative_fits(creative, imp):
                    continue
                deal = imp_deal(campaign, imp, seat)
                if deal is False or deal is True:
                    continue
                if creative.id not in found:
                    found[creative.id] = ([imp.id], deal)
                elif found[creative.id][1] == deal:
                    found[creative.id][0].append(imp.id)
    single = len(req.imp) == 1
    return {cid: (None if single else tuple(imp_ids), deal) for cid, (imp_ids, deal) in found.items()}


def imp_deal(campaign: Campaign, imp: Imp, seat: str) -> str | bool | None:
    """The deal the campaign bids into at this imp, None for the open auction, False when it cannot bid."""
    deal_ids = campaign.targeting.deal_ids
    for deal in (imp.pmp.deals or []) if imp.pmp else []:
        buyer = campaign.seat or seat
        if deal_ids and deal.id in deal_ids and (deal.wseat is None or buyer in deal.wseat):
            return deal.id
    private = imp.pmp is not None and imp.pmp.private_auction == 1
    return None if not deal_ids and not private else False


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.integers(1, 8).flatmap(lambda n: st.tuples(*(campaigns(k) for k in range(n)))),
    req=requests(),
)
def test_retrieval_equals_the_brute_force_filter(lines: tuple[dict[str, Any], ...], req: BidRequest) -> None:
    source = retriever(*lines, seat="gw")
    got = source.retrieve(req, NOON_UTC)
    as_found = {c.id: (None if c.imp_ids is None else tuple(c.imp_ids), c.deal_id) for c in got.candidates}
    assert as_found == reference(list(lines), req, "gw")
    # Best prior eCPM first: positions are ordered so at build time.
    catalog = parse_catalog(jsonl(*lines))
    ecpm = {cr.id: prior_ecpm(cp, cr) for cp in catalog.campaigns for cr in cp.creatives}
    scores = [ecpm[c.id] for c in got.candidates]
    assert scores == sorted(scores, reverse=True)


@settings(max_examples=30, deadline=None)
@given(
    lines=st.integers(1, 8).flatmap(lambda n: st.tuples(*(campaigns(k) for k in range(n)))),
    req=requests(),
    top_k=st.integers(1, 4),
)
def test_the_top_k_cut_keeps_a_prefix_of_the_full_ranking(
    lines: tuple[dict[str, Any], ...], req: BidRequest, top_k: int
) -> None:
    full = [c.id for c in retriever(*lines, seat="gw").retrieve(req, NOON_UTC).candidates]
    cut = [c.id for c in retriever(*lines, seat="gw", top_k=top_k).retrieve(req, NOON_UTC).candidates]
    assert cut == full[:top_k]
