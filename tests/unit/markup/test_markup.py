"""Markup per format: banner HTML, VAST in the right version (parsed), Native 1.2 assets, the renderer."""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import msgspec
import pytest

from gateway.catalog.model import (
    AudioCreative,
    BannerCreative,
    BannerSize,
    Campaign,
    Creative,
    CreativeRef,
    NativeCreative,
    VideoCreative,
)
from gateway.core.currency import CurrencyTable
from gateway.errors import ForgedNotice
from gateway.markup.banner import banner_html, banner_size
from gateway.markup.native import native_adm, native_fits
from gateway.markup.render import CatalogBidRenderer
from gateway.markup.vast import LinearAd, vast_version, vast_xml
from gateway.notices.checks import check_notice
from gateway.notices.keyring import NoticeKeyring
from gateway.notices.signing import NoticeKind, NoticeSigner
from gateway.openrtb import Audio, Banner, Bid, BidRequest, Format, Imp, Native, Video

VAST_NS = "{http://www.iab.com/VAST}"
CLICK = "https://shop.example/landing?a=1&b=2"
KEYRING = NoticeKeyring({"k": b"k" * 32}, "k")
NOW = 1_800_000_000.0


def creative(**fmt: object) -> Creative:
    return Creative(id="cr-1", click_url=CLICK, attr=[1, 3], **fmt)  # type: ignore[arg-type]


def campaign(item: Creative) -> Campaign:
    return Campaign(id="camp-1", advertiser="shop.example", bid=2.0, creatives=[item])


BANNER = BannerCreative(
    sizes=[BannerSize(w=728, h=90), BannerSize(w=300, h=250)], image_url='https://cdn.example/a.png?x="1"&y=2'
)
VIDEO = VideoCreative(media_url="https://cdn.example/v.mp4", duration_s=75, protocols=[2, 3, 7, 11])
AUDIO = AudioCreative(media_url="https://cdn.example/a.m4a", duration_s=30)
NATIVE = NativeCreative(
    title="A rather long native title",
    sponsored_by="Shop",
    description="Everything you need",
    image_url="https://cdn.example/main.jpg",
    image_w=1200,
    image_h=627,
    icon_url="https://cdn.example/icon.png",
    cta="Buy",
)
NATIVE_REQUEST = {
    "ver": "1.2",
    "assets": [
        {"id": 1, "required": 1, "title": {"len": 10}},
        {"id": 2, "required": 1, "img": {"type": 3, "wmin": 600, "hmin": 300}},
        {"id": 3, "img": {"type": 1}},
        {"id": 4, "required": 1, "data": {"type": 1}},
        {"id": 5, "data": {"type": 2, "len": 5}},
        {"id": 6, "data": {"type": 3}},
        {"id": 7, "video": {"mimes": ["video/mp4"]}},
    ],
    "eventtrackers": [{"event": 1, "methods": [1, 2]}],
}


# ------------------------------------------------------------------------------------------------ banner


def test_the_first_creative_size_the_imp_accepts_is_chosen() -> None:
    imp_banner = Banner(format=[Format(w=320, h=50), Format(w=300, h=250)])
    assert banner_size(imp_banner, BANNER) == BannerSize(w=300, h=250)
    assert banner_size(Banner(w=728, h=90), BANNER) == BannerSize(w=728, h=90)
    assert banner_size(Banner(), BANNER) == BannerSize(w=728, h=90), "no size named: the creative's first"


def test_banner_html_escapes_every_attribute() -> None:
    html = banner_html(BANNER, BannerSize(w=300, h=250), CLICK, 'Shop "quoted" <b>')
    assert 'href="https://shop.example/landing?a=1&amp;b=2"' in html
    assert 'src="https://cdn.example/a.png?x=&quot;1&quot;&amp;y=2"' in html
    assert 'alt="Shop &quot;quoted&quot; &lt;b&gt;"' in html
    assert 'width="300" height="250"' in html


# ------------------------------------------------------------------------------------------------ VAST


@pytest.mark.parametrize(
    ("imp", "ours", "expected"),
    [
        ([2, 3, 7], [2, 3, 7, 11], "4.0"),
        ([2, 3], [2, 3, 7, 11], "3.0"),
        ([5, 6], [2, 3, 7], "3.0"),  # wrapper codes name versions too
        (None, [2, 3, 7, 11], "4.1"),
        ([11, 12, 13], [2, 3], None),
    ],
)
def test_the_highest_shared_vast_version(
    imp: list[int] | None, ours: list[int], expected: str | None
) -> None:
    version = vast_version(imp, ours)
    assert (version.version if version else None) == expected


def linear(click: str | None = CLICK) -> LinearAd:
    return LinearAd(
        ad_id="bid<&>1",
        creative_id="cr-1",
        title='Title & "more"',
        duration_s=3725,
        media_url="https://cdn.example/v.mp4?a=1&b=2",
        mime="video/mp4",
        width=640,
        height=360,
        click_url=click,
        impression_url="https://gw.example/v1/notices/bill?bid=1&price=${AUCTION_PRICE}",
    )


def test_vast_4_has_every_required_element() -> None:
    version = vast_version([11], [11])
    assert version is not None
    root = ET.fromstring(vast_xml(linear(), version, "bid-gateway"))
    assert root.tag == f"{VAST_NS}VAST"
    assert root.get("version") == "4.1"
    inline = root.find(f"{VAST_NS}Ad/{VAST_NS}InLine")
    assert inline is not None
    for tag in ("AdSystem", "AdTitle", "Impression", "AdServingId"):
        assert inline.find(f"{VAST_NS}{tag}") is not None, tag
    assert inline.findtext(f"{VAST_NS}AdServingId") == "bid<&>1"
    assert inline.findtext(f"{VAST_NS}Impression") == linear().impression_url
    creative_el = inline.find(f"{VAST_NS}Creatives/{VAST_NS}Creative")
    assert creative_el is not None
    universal = creative_el.find(f"{VAST_NS}UniversalAdId")
    assert universal is not None
    assert universal.get("idRegistry") == "unknown"
    assert universal.text == "cr-1"
    assert creative_el.findtext(f"{VAST_NS}Linear/{VAST_NS}Duration") == "01:02:05"
    media = creative_el.find(f"{VAST_NS}Linear/{VAST_NS}MediaFiles/{VAST_NS}MediaFile")
    assert media is not None
    assert media.text == "https://cdn.example/v.mp4?a=1&b=2"
    assert (media.get("type"), media.get("width"), media.get("height")) == ("video/mp4", "640", "360")
    assert creative_el.findtext(f"{VAST_NS}Linear/{VAST_NS}VideoClicks/{VAST_NS}ClickThrough") == CLICK


@pytest.mark.parametrize("protocol", [2, 3])
def test_vast_2_and_3_have_no_vast_4_elements(protocol: int) -> None:
    version = vast_version([protocol], [protocol])
    assert version is not None
    root = ET.fromstring(vast_xml(linear(click=None), version, "bid-gateway"))
    assert root.get("version") == f"{protocol}.0"
    assert root.find("Ad/InLine/AdServingId") is None
    assert root.find("Ad/InLine/Creatives/Creative/UniversalAdId") is None
    assert root.findtext("Ad/InLine/AdSystem") == "bid-gateway"
    assert root.find("Ad/InLine/Creatives/Creative/Linear/VideoClicks") is None


# ------------------------------------------------------------------------------------------------ native


def native_imp(request: object) -> Imp:
    raw = request if isinstance(request, str) else json.dumps(request)
    return Imp(id="1", native=Native(request=raw, ver="1.2"))


def test_native_assets_are_filled_by_id_and_type() -> None:
    adm = json.loads(native_adm(native_imp(NATIVE_REQUEST), NATIVE, CLICK, "https://gw.example/bill"))
    assert adm["ver"] == "1.2"
    assert adm["link"] == {"url": CLICK}
    by_id = {a["id"]: a for a in adm["assets"]}
    assert by_id[1] == {"id": 1, "title": {"text": "A rather l"}}, "cut to len"
    assert by_id[2]["img"] == {"url": NATIVE.image_url, "w": 1200, "h": 627}
    assert by_id[3]["img"] == {"url": NATIVE.icon_url}
    assert by_id[4]["data"] == {"value": "Shop"}
    assert by_id[5]["data"] == {"value": "Every"}
    assert 6 not in by_id, "data type 3 (rating) cannot be filled"
    assert 7 not in by_id, "video assets cannot be filled"
    assert adm["eventtrackers"] == [{"event": 1, "method": 1, "url": "https://gw.example/bill"}]


def test_a_wrapped_request_gets_a_wrapped_response() -> None:
    adm = json.loads(native_adm(native_imp({"native": NATIVE_REQUEST}), NATIVE, CLICK, "u"))
    assert set(adm) == {"native"}
    assert len(adm["native"]["assets"]) == 5


def test_native_fits_only_when_every_required_asset_can_be_filled() -> None:
    assert native_fits(native_imp(NATIVE_REQUEST), NATIVE)
    small = msgspec.structs.replace(NATIVE, image_w=300, image_h=200)
    assert not native_fits(native_imp(NATIVE_REQUEST), small), "the main image is under wmin x hmin"
    no_sponsor_needed = {"assets": [{"id": 1, "required": 1, "data": {"type": 12}}]}
    assert native_fits(native_imp(no_sponsor_needed), NATIVE)
    assert not native_fits(native_imp(no_sponsor_needed), msgspec.structs.replace(NATIVE, cta=None))
    required_video = {"assets": [{"id": 9, "required": 1, "video": {}}]}
    assert not native_fits(native_imp(required_video), NATIVE)


@pytest.mark.parametrize(
    "raw", ["", "not json", "[1, 2]", '{"assets": "x"}', '{"assets": [{"id": "x"}]}', "{" * 5000, "null"]
)
def test_a_malformed_native_request_never_raises(raw: str) -> None:
    imp = native_imp(raw)
    assert not native_fits(imp, NATIVE)
    assert json.loads(native_adm(imp, NATIVE, CLICK, "u"))["link"] == {"url": CLICK}
    assert not native_fits(Imp(id="1"), NATIVE), "no native object at all"


# ------------------------------------------------------------------------------------------------ renderer


def render(item: Creative, imp: Imp, cur: list[str] | None = None) -> Bid:
    renderer = CatalogBidRenderer(
        NoticeSigner(KEYRING, "https://gw.example"),
        CurrencyTable({"USD": 1.0, "EUR": 0.9}),
        notice_ttl_s=600,
        clock=lambda: NOW,
    )
    request = BidRequest(id="auction-1", imp=[Imp(id="0"), imp], cur=cur)
    bid = Bid(id="bid-1", impid=imp.id, price=1.5, crid=item.id)
    return renderer.render(request, bid, CreativeRef(campaign(item), item), "resp-1")


def test_a_banner_bid_gets_its_size_markup_type_and_attributes() -> None:
    bid = render(creative(banner=BANNER), Imp(id="1", banner=Banner(format=[Format(w=300, h=250)])))
    assert (bid.w, bid.h, bid.mtype, bid.protocol, bid.attr) == (300, 250, 1, None, [1, 3])
    assert bid.adm is not None
    assert 'width="300"' in bid.adm


def test_a_video_bid_gets_vast_in_the_imps_version() -> None:
    bid = render(creative(video=VIDEO), Imp(id="1", video=Video(protocols=[2, 3, 7, 8])))
    assert (bid.mtype, bid.protocol, bid.w, bid.h) == (2, 7, 640, 360)
    assert bid.adm is not None
    root = ET.fromstring(bid.adm)
    assert root.get("version") == "4.0"
    # The player's impression tracker is the nurl, which never bills with bill_on=burl: a client cannot
    # pre-empt the exchange's billing notice with a price of its own.
    assert root.findtext(f"{VAST_NS}Ad/{VAST_NS}InLine/{VAST_NS}Impression") == bid.nurl


def test_an_audio_bid_gets_vast_and_mtype_3() -> None:
    bid = render(creative(audio=AUDIO), Imp(id="1", audio=Audio(protocols=[3])))
    assert (bid.mtype, bid.protocol, bid.w, bid.h) == (3, 3, None, None)
    assert bid.adm is not None
    assert ET.fromstring(bid.adm).find("Ad/InLine/Creatives/Creative/Linear/MediaFiles/MediaFile") is not None


def test_a_native_bid_gets_its_json_as_a_string() -> None:
    bid = render(creative(native=NATIVE), native_imp(NATIVE_REQUEST))
    assert bid.mtype == 4
    assert isinstance(bid.adm, str)
    assert json.loads(bid.adm)["assets"]


def test_the_notice_urls_verify_for_this_bid_only() -> None:
    bid = render(creative(banner=BANNER), Imp(id="1", banner=Banner(w=728, h=90)), cur=["EUR"])
    assert bid.burl is not None
    assert bid.nurl is not None
    assert bid.lurl is not None
    filled = (
        bid.burl.replace("${AUCTION_ID}", "auction-1")
        .replace("${AUCTION_BID_ID}", "resp-1")
        .replace("${AUCTION_IMP_ID}", "1")
        .replace("${AUCTION_CURRENCY}", "EUR")
        .replace("${AUCTION_PRICE}", "1.2")
    )
    checked = check_notice(NoticeKind.BILL, filled.split("?", 1)[1].encode(), KEYRING, NOW)
    assert (checked.bid_id, checked.campaign_id, checked.bid_price, checked.currency) == (
        "bid-1",
        "camp-1",
        1.5,
        "EUR",
    )
    with pytest.raises(ForgedNotice):
        check_notice(
            NoticeKind.BILL, filled.replace("imp=1", "imp=0").split("?", 1)[1].encode(), KEYRING, NOW
        )
    with pytest.raises(ForgedNotice) as expired:
        check_notice(NoticeKind.BILL, filled.split("?", 1)[1].encode(), KEYRING, NOW + 601)
    assert expired.value.check == "expired"
