"""Plain OpenRTB requests, as exchanges send them, bid on the gateway's own catalog: the IAB's published
example requests (read from the sibling shared checkout, never copied here; skipped when it is absent), the
exchange's notice loop on a real Redis, and the catalog reloaded under load. Real Triton, real gateway."""

from __future__ import annotations

import json
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import REPO_ROOT, Settings
from gateway.core.currency import DEFAULT_RATES_PER_USD
from gateway.local_triton import LocalTriton, free_port
from tests.integration.gateway_server import serve_in_thread

pytestmark = pytest.mark.integration

EXAMPLES = REPO_ROOT.parent / "shared" / "openrtb-examples" / "requests"
MTYPES = {"banner": 1, "video": 2, "audio": 3, "native": 4}


def example_requests() -> list[Any]:
    found = sorted(EXAMPLES.glob("*.json")) if EXAMPLES.is_dir() else []
    return [pytest.param(path, id=path.stem) for path in found] or [pytest.param(None, id="absent")]


def published(path: Path | None) -> bytes:
    if path is None:
        pytest.skip(f"the IAB OpenRTB examples are not beside this checkout ({EXAMPLES})")
    return path.read_bytes()


@pytest.fixture(scope="module")
def gateway(triton: LocalTriton) -> Iterator[httpx.Client]:
    port = free_port()
    settings = Settings(  # the default catalog, data/catalog/catalog.jsonl
        triton_url=triton.http_address,
        notice_base_url=f"http://127.0.0.1:{port}",
        overload_lag_target_ms=0,
    )
    with serve_in_thread(settings, port) as url, httpx.Client(base_url=url, timeout=10.0) as client:
        yield client


def in_usd(amount: float, currency: str) -> float:
    return amount / DEFAULT_RATES_PER_USD[currency]


def assert_prebid_valid(bid: dict[str, Any]) -> None:
    """What Prebid Server's bid validation refuses a bid for."""
    assert bid.get("id"), bid
    assert bid.get("impid"), bid
    assert bid.get("crid"), bid
    assert bid["price"] > 0, bid


def assert_markup_fits(imp: dict[str, Any], bid: dict[str, Any]) -> None:
    adm = bid["adm"]
    assert isinstance(adm, str)
    assert adm
    kind = next(k for k, v in MTYPES.items() if v == bid["mtype"])
    assert kind in imp, f"a {kind} bid for an imp offering {sorted(set(imp) & set(MTYPES))}"
    if kind == "banner":
        assert "<" in adm
        banner = imp["banner"]
        sizes = {(f["w"], f["h"]) for f in banner.get("format", [])} | {(banner.get("w"), banner.get("h"))}
        assert (bid["w"], bid["h"]) in sizes
    elif kind in ("video", "audio"):
        vast = ET.fromstring(adm)
        assert vast.tag.rsplit("}", 1)[-1] == "VAST"  # VAST 4 declares the IAB namespace
        protocols = imp[kind].get("protocols")
        if protocols:
            assert bid["protocol"] in protocols
        duration = vast.find(".//{*}Linear/{*}Duration")
        assert duration is not None
        assert duration.text is not None
        hours, minutes, seconds = (float(part) for part in duration.text.split(":"))
        length = hours * 3600 + minutes * 60 + seconds
        assert imp[kind].get("minduration", 0) <= length <= imp[kind].get("maxduration", 10**6)
    else:
        assert isinstance(json.loads(adm), dict)  # native: the response JSON, as a string
    battr = set(imp.get(kind, {}).get("battr", []))
    assert not battr & set(bid.get("attr", [])), f"creative attributes {bid.get('attr')} blocked by {battr}"


def assert_notice_urls(bid: dict[str, Any], base_url: str) -> None:
    # What the exchange substitutes: the auction, imp and response ids everywhere, the clearing price in
    # the win and billing notices, the loss reason in the loss notice.
    own_macros = {"nurl": "${AUCTION_PRICE}", "burl": "${AUCTION_PRICE}", "lurl": "${AUCTION_LOSS}"}
    for name, macro in own_macros.items():
        url = urllib.parse.unquote(bid[name])
        assert url.startswith(f"{base_url}/v1/notices/"), url
        for expected in (macro, "${AUCTION_ID}", "${AUCTION_IMP_ID}", "${AUCTION_BID_ID}"):
            assert expected in url, (name, url)


@pytest.mark.parametrize("path", example_requests())
def test_iab_example_as_published_gets_a_bid_an_exchange_can_serve(
    gateway: httpx.Client, path: Path | None
) -> None:
    body = published(path)
    doc = json.loads(body)
    answer = gateway.post("/v1/bid", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    response = answer.json()
    assert response["id"] == doc["id"]
    currency = response["cur"]
    assert currency in doc.get("cur", ["USD"])
    bids = [bid for seatbid in response["seatbid"] for bid in seatbid["bid"]]
    assert bids, f"no bid: {response}"
    imps = {imp["id"]: imp for imp in doc["imp"]}
    blocked_advertisers = set(doc.get("badv", []))
    for bid in bids:
        assert_prebid_valid(bid)
        imp = imps[bid["impid"]]
        assert_markup_fits(imp, bid)
        assert_notice_urls(bid, str(gateway.base_url).rstrip("/"))
        assert not set(bid["adomain"]) & blocked_advertisers
        for category in bid.get("cat", []):
            assert category not in doc.get("bcat", [])
            assert category.split("-")[0] not in doc.get("bcat", [])  # a blocked tier-1 blocks its children
        pmp = imp.get("pmp", {})
        deals = {deal["id"]: deal for deal in pmp.get("deals", [])}
        if pmp.get("private_auction") == 1:
            assert bid.get("dealid") in deals, f"a private auction's bid without one of its deals: {bid}"
        if bid.get("dealid") is not None:
            deal = deals[bid["dealid"]]
            floor_usd = in_usd(deal.get("bidfloor", 0.0), deal.get("bidfloorcur", "USD"))
        else:
            floor_usd = in_usd(imp.get("bidfloor", 0.0), imp.get("bidfloorcur", "USD"))
        assert in_usd(bid["price"], currency) >= floor_usd - 1e-9, (bid, floor_usd)
