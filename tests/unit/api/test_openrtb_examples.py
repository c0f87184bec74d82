"""The IAB's own OpenRTB 2.6 examples (a sibling checkout, never copied here) decode with our schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.api.decode import RequestLimits, decode_bid_request
from gateway.errors import InvalidRequest
from gateway.openrtb import BidResponse, encode_response

EXAMPLES = Path(__file__).resolve().parents[3] / ".." / "shared" / "openrtb-examples"
LIMITS = RequestLimits(known_currencies=frozenset({"USD", "EUR", "GBP"}))
CATALOG_LIMITS = RequestLimits(known_currencies=LIMITS.known_currencies, candidates_required=False)


def _files(kind: str) -> list[Any]:
    folder = EXAMPLES / kind
    found = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if kind == "responses":
        found = [path for path in found if "INVALID_JSON" not in path.name]
    return [pytest.param(path, id=path.name) for path in found] or [pytest.param(None, id="absent")]


def _require(path: Path | None) -> Path:
    if path is None:
        pytest.skip(f"OpenRTB examples not found at {EXAMPLES.resolve()}")
    return path


def with_candidates(doc: dict[str, Any]) -> dict[str, Any]:
    first_imp = doc["imp"][0]["id"]
    ext = doc.setdefault("ext", {})
    ext["candidates"] = [
        {"id": "ad-1", "campaign_id": "c1", "advertiser": "shoes.example", "bid_type": "cpm", "bid": 2.5},
        {
            "id": "ad-2",
            "campaign_id": "c2",
            "advertiser": "cars.example",
            "bid_type": "cpc",
            "bid": 0.4,
            "cat": ["IAB2"],
            "imp_ids": [first_imp],
        },
        {"id": "ad-3", "campaign_id": "c2", "advertiser": "cars.example", "bid_type": "cpa", "bid": 12},
    ]
    return doc


@pytest.mark.parametrize("path", _files("requests"))
def test_spec_request_decodes(path: Path | None) -> None:
    doc = json.loads(_require(path).read_bytes())
    request = decode_bid_request(json.dumps(with_candidates(doc)).encode(), LIMITS)
    assert request.id == doc["id"]
    assert [imp.id for imp in request.imp] == [imp["id"] for imp in doc["imp"]]
    assert request.at == doc.get("at", 2)
    assert request.tmax == doc.get("tmax")
    for imp, raw in zip(request.imp, doc["imp"], strict=True):
        assert imp.bidfloor == raw.get("bidfloor", 0.0)
        assert imp.bidfloorcur == raw.get("bidfloorcur", "USD")
    channels = {name for name in ("site", "app", "dooh") if getattr(request, name) is not None}
    assert channels == {name for name in ("site", "app", "dooh") if name in doc}
    assert request.ext is not None
    assert [c.id for c in request.ext.candidates] == ["ad-1", "ad-2", "ad-3"]


@pytest.mark.parametrize("path", _files("requests"))
def test_spec_request_as_published_decodes_for_a_gateway_with_a_catalog(path: Path | None) -> None:
    doc = json.loads(_require(path).read_bytes())
    request = decode_bid_request(json.dumps(doc).encode(), CATALOG_LIMITS)
    assert request.ext is None or not request.ext.candidates
    for imp, raw in zip(request.imp, doc["imp"], strict=True):
        # What retrieval matches formats on arrives decoded, not dropped as an unknown field.
        for kind in ("banner", "video", "native"):
            assert (getattr(imp, kind) is not None) == (kind in raw)
        if "video" in raw:
            assert imp.video is not None
            assert imp.video.mimes == raw["video"].get("mimes")
            assert imp.video.protocols == raw["video"].get("protocols")
            assert (imp.video.minduration, imp.video.maxduration) == (
                raw["video"].get("minduration"),
                raw["video"].get("maxduration"),
            )
        if "banner" in raw:
            assert imp.banner is not None
            assert imp.banner.battr == raw["banner"].get("battr")
        for deal, raw_deal in zip(imp.pmp.deals or [] if imp.pmp else [], _deals(raw), strict=True):
            assert deal.wseat == raw_deal.get("wseat")


def _deals(raw_imp: dict[str, Any]) -> list[dict[str, Any]]:
    deals: list[dict[str, Any]] = raw_imp.get("pmp", {}).get("deals", [])
    return deals


@pytest.mark.parametrize("path", _files("requests"))
def test_spec_request_without_candidates_is_refused_without_a_catalog(path: Path | None) -> None:
    body = _require(path).read_bytes()
    with pytest.raises(InvalidRequest) as caught:
        decode_bid_request(body, LIMITS)
    assert (caught.value.code, caught.value.field) == ("empty_list", "ext.candidates")


@pytest.mark.parametrize("path", _files("responses"))
def test_spec_response_decodes_and_round_trips(path: Path | None) -> None:
    data = _require(path).read_bytes()
    doc = json.loads(data)
    response = msgspec.json.decode(data, type=BidResponse)
    assert response.id == doc.get("id", "")
    assert response.nbr == doc.get("nbr")
    seats = response.seatbid or []
    assert [len(seat.bid) for seat in seats] == [len(s["bid"]) for s in doc.get("seatbid", [])]
    for seat, raw_seat in zip(seats, doc.get("seatbid", []), strict=True):
        for bid, raw_bid in zip(seat.bid, raw_seat["bid"], strict=True):
            assert (bid.id, bid.impid, bid.price) == (raw_bid["id"], raw_bid["impid"], raw_bid["price"])
            assert bid.dealid == raw_bid.get("dealid")
            assert bid.adomain == raw_bid.get("adomain", [])
    assert msgspec.json.decode(encode_response(response), type=BidResponse) == response
