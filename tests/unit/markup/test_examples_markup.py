"""Every IAB OpenRTB 2.6 example request, as published, gets markup of its imp's kind from the renderer
(the examples live outside the repo in ../shared/openrtb-examples; skipped when absent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import msgspec
import pytest

from gateway.catalog.model import BannerCreative, BannerSize, Campaign, Creative, CreativeRef, VideoCreative
from gateway.core.currency import CurrencyTable
from gateway.markup.banner import accepted_sizes
from gateway.markup.render import CatalogBidRenderer
from gateway.notices.keyring import NoticeKeyring
from gateway.notices.signing import NoticeSigner
from gateway.openrtb import Bid, BidRequest, Imp

EXAMPLES = Path(__file__).resolve().parents[3] / ".." / "shared" / "openrtb-examples" / "requests"


def _files() -> list[Any]:
    found = sorted(EXAMPLES.glob("*.json")) if EXAMPLES.is_dir() else []
    return [pytest.param(path, id=path.name) for path in found] or [pytest.param(None, id="absent")]


def creative_for(imp: Imp) -> Creative:
    """A creative that fits the imp, as retrieval would have picked."""
    click = "https://shop.example/"
    if imp.video is not None:
        return Creative(
            id="v", click_url=click, video=VideoCreative(media_url="https://cdn.example/v.mp4", duration_s=15)
        )
    assert imp.banner is not None
    w, h = accepted_sizes(imp.banner)[0]
    banner = BannerCreative(
        sizes=[BannerSize(w=1, h=1), BannerSize(w=w, h=h)], image_url="https://cdn.example/a.png"
    )
    return Creative(id="b", click_url=click, banner=banner)


@pytest.mark.parametrize("path", _files())
def test_each_example_imp_gets_markup_of_its_kind(path: Path | None) -> None:
    if path is None:
        pytest.skip(f"OpenRTB examples not found at {EXAMPLES.resolve()}")
    request = msgspec.json.decode(path.read_bytes(), type=BidRequest)
    renderer = CatalogBidRenderer(
        NoticeSigner(NoticeKeyring({"k": b"k" * 32}, "k"), "https://gw.example"),
        CurrencyTable({"USD": 1.0}),
        notice_ttl_s=60,
    )
    for imp in request.imp:
        item = creative_for(imp)
        ref = CreativeRef(Campaign(id="c", advertiser="shop.example", bid=1.0, creatives=[item]), item)
        bid = renderer.render(request, Bid(id="b1", impid=imp.id, price=1.0), ref, "r1")
        assert bid.adm
        assert bid.nurl
        assert bid.burl
        assert bid.lurl
        if imp.video is not None:
            assert bid.mtype == 2
            root = ET.fromstring(bid.adm)
            if imp.video.protocols:
                assert bid.protocol in imp.video.protocols, "an InLine version the imp lists"
            assert root.tag.endswith("VAST")
        else:
            assert bid.mtype == 1
            assert imp.banner is not None
            assert (bid.w, bid.h) in accepted_sizes(imp.banner)
            assert "<img " in bid.adm
