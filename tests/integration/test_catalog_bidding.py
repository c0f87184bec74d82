"""Plain OpenRTB requests, as exchanges send them, bid on the gateway's own catalog: the IAB's published
example requests (read from the sibling shared checkout, never copied here; skipped when it is absent), the
exchange's notice loop on a real Redis, and the catalog reloaded under load. Real Triton, real gateway."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import REPO_ROOT, Settings
from gateway.core.currency import DEFAULT_RATES_PER_USD
from gateway.local_triton import LocalTriton, free_port
from gateway.stores.campaigns import CampaignLedger
from tests.integration.exchange import bids_of, plain_banner_request, substituted
from tests.integration.gateway_server import serve_in_thread
from tests.integration.redis_server import RedisServer
from tests.integration.test_win_notices import on_redis

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


# -- the exchange loop on a real Redis: bid, substitute, bill twice, lose once --


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def redis_gateway(triton: LocalTriton, redis_server: RedisServer) -> Iterator[httpx.Client]:
    port = free_port()
    settings = Settings(
        triton_url=triton.http_address,
        store_backend="redis",
        redis_url=redis_server.url,
        notice_base_url=f"http://127.0.0.1:{port}",
        overload_lag_target_ms=0,
    )
    with serve_in_thread(settings, port) as url, httpx.Client(base_url=url, timeout=10.0) as client:
        yield client


def spend_micros(url: str, campaign_id: str) -> int:
    return int(on_redis(lambda shards: CampaignLedger(shards).spend_micros(campaign_id), url))


def counted(client: httpx.Client, sample: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return sum(
        s.value
        for family in families.values()
        for s in family.samples
        if s.name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items())) + "}" == sample
    )


def test_the_exchange_loop_bills_once_and_counts_the_loss(
    redis_gateway: httpx.Client, redis_server: RedisServer
) -> None:
    won_response = redis_gateway.post("/v1/bid", content=plain_banner_request("auction-won")).json()
    [won] = bids_of(won_response)
    clearing = round(won["price"] * 0.8, 4)  # second price: below the bid
    bill = substituted(won["burl"], won_response, won, price=clearing)
    before = spend_micros(redis_server.url, won["cid"])

    first = redis_gateway.get(bill)
    again = redis_gateway.get(bill)
    posted = redis_gateway.post(bill)  # exchanges may POST the same URL, and resend it
    assert first.status_code == 200, first.text
    assert (first.json()["duplicate"], again.json()["duplicate"], posted.json()["duplicate"]) == (
        False,
        True,
        True,
    )
    charged = first.json()["cost_micros"]
    assert charged == round(clearing * 1000)  # micro-USD of one impression at that CPM
    assert spend_micros(redis_server.url, won["cid"]) - before == charged

    lost_response = redis_gateway.post("/v1/bid", content=plain_banner_request("auction-lost")).json()
    [lost] = bids_of(lost_response)
    losses_before = counted(redis_gateway, 'bidgw_notice_losses_total{reason="102"}')
    loss = substituted(lost["lurl"], lost_response, lost, loss=102)
    assert redis_gateway.get(loss).status_code == 200
    assert redis_gateway.get(loss).json()["duplicate"] is True
    assert counted(redis_gateway, 'bidgw_notice_losses_total{reason="102"}') - losses_before == 1
    assert spend_micros(redis_server.url, won["cid"]) - before == charged  # a loss charges nothing

    # Knowing a catalog bid's id (it is in the markup) is not enough: the unsigned win route refuses it.
    unsigned = redis_gateway.post("/v1/events/win", json={"bid_id": lost["id"], "price": lost["price"]})
    assert (unsigned.status_code, unsigned.json()["error"]["code"]) == (403, "signed_notice_required")
    # A billing URL replayed for the other auction's bid fails its signature, and charges nothing.
    forged = substituted(won["burl"], lost_response, won)
    assert redis_gateway.get(forged).status_code == 403
    assert spend_micros(redis_server.url, won["cid"]) - before == charged


# -- hot reload under load --


def catalog_file(version: str, campaign: str, *, broken: bool = False) -> bytes:
    creative: dict[str, Any] = {
        "id": f"{campaign}-banner",
        "click_url": f"https://{campaign}.example/",
        "banner": {"sizes": [{"w": 300, "h": 250}], "image_url": f"https://{campaign}.example/a.png"},
    }
    if broken:
        creative["banner"]["sizes"][0]["w"] = 0
    line = {
        "id": campaign,
        "advertiser": f"{campaign}.example",
        "cat": ["IAB12"],
        "bid": 3.0,
        "creatives": [creative],
    }
    return (json.dumps({"catalog_version": version}) + "\n" + json.dumps(line) + "\n").encode()


def replace_file(path: Path, content: bytes) -> None:
    staged = path.with_suffix(".staged")
    staged.write_bytes(content)
    staged.replace(path)  # atomic: the reloader never reads half a file


def test_catalog_reloads_under_load_and_a_broken_one_never_replaces_it(
    triton: LocalTriton, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_bytes(catalog_file("v1", "alpha"))
    settings = Settings(
        triton_url=triton.http_address,
        catalog_path=catalog,
        catalog_reload_interval_s=0.1,
        overload_lag_target_ms=0,
    )
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def bidder(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10.0) as client:
            for i in range(3000):  # bounded: stops by itself even if the test does not stop it
                if stop.is_set():
                    return
                answer = client.post("/v1/bid", content=plain_banner_request(f"r{i}"))
                bids = bids_of(answer.json()) if answer.status_code == 200 else []
                answers.append((answer.status_code, bids[0]["cid"] if bids else None))

    def wait_for(campaign: str) -> None:
        deadline = time.monotonic() + 15
        while not any(cid == campaign for _, cid in answers[-5:]):
            assert time.monotonic() < deadline, f"never bid for {campaign}: {answers[-5:]}"
            time.sleep(0.05)

    with serve_in_thread(settings) as url:
        thread = threading.Thread(target=bidder, args=(url,))
        thread.start()
        try:
            wait_for("alpha")
            replace_file(catalog, catalog_file("v2", "beta"))
            wait_for("beta")
            switched = len(answers)
            with caplog.at_level(logging.ERROR, logger="gateway.catalog.reloader"):
                replace_file(catalog, catalog_file("v3", "gamma", broken=True))
                time.sleep(1.0)  # ten reload periods
            served_after = answers[switched:]
            stats = httpx.get(f"{url}/metrics").text
        finally:
            stop.set()
            thread.join(timeout=30)

    assert answers
    assert {status for status, _ in answers} == {200}, "a reload dropped or failed a bid"
    campaigns = [cid for _, cid in answers]
    first_beta = campaigns.index("beta")
    assert set(campaigns[:first_beta]) == {"alpha"}
    assert set(campaigns[first_beta:]) == {"beta"}, "the broken catalog replaced the good one"
    assert len(served_after) > 5
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert rejected, "the broken catalog was not reported"
    assert "line 2" in rejected[0]
    assert re.search(r'bidgw_catalog_reloads_total\{result="failed"\} [1-9]', stats), stats
    assert re.search(r'bidgw_catalog_version_info\{version="v2"\} 1\.0', stats), stats
