"""The exchange loop on the signed notice URLs: real Redis, a real gateway (uvicorn in a thread).

Bids are reserved through the ledger and rendered by the CatalogBidRenderer, exactly what the pipeline
does for a catalog bid; the test then plays the exchange: substitute the macros, call the URLs."""

from __future__ import annotations

import string
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote, quote_from_bytes, urlencode, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.catalog.model import BannerCreative, BannerSize, Campaign, Creative, CreativeRef
from gateway.config import Settings
from gateway.core.currency import CurrencyTable
from gateway.core.ports import Reservation, ReserveOutcome
from gateway.local_triton import free_port
from gateway.markup.render import CatalogBidRenderer
from gateway.notices.setup import notice_keyring, notice_signer
from gateway.notices.signing import SIGNED_FIELDS
from gateway.openrtb import Banner, Bid, BidRequest, Imp
from gateway.stores.campaigns import CampaignConfig, CampaignLedger
from gateway.stores.keys import bid_key, bid_tag, new_bid_id
from gateway.stores.shards import RedisShards
from tests.integration.gateway_server import serve_in_thread
from tests.integration.redis_server import RedisServer
from tests.integration.test_win_notices import on_redis, redis_settings, reset, spend

pytestmark = pytest.mark.integration

CAMPAIGN = "camp-n"
KEYS = {"k1": "k" * 40}
CREATIVE = Creative(
    id="cr-n",
    click_url="https://shop.example/",
    banner=BannerCreative(sizes=[BannerSize(w=300, h=250)], image_url="https://cdn.example/a.png"),
)
REF = CreativeRef(Campaign(id=CAMPAIGN, advertiser="shop.example", bid=3.0, creatives=[CREATIVE]), CREATIVE)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def notice_settings(redis: RedisServer) -> Settings:
    return redis_settings(redis, notice_keys=KEYS, notice_allow_dev_key=False)


@pytest.fixture(scope="module")
def gateway(redis_server: RedisServer) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(notice_settings(redis_server)) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield client


def reserve(url: str, price: float, cost_micros: int) -> str:
    """A bid of CAMPAIGN held in Redis, as the pipeline's reservation makes it."""
    bid_id = new_bid_id(CAMPAIGN)

    async def job(shards: RedisShards) -> list[ReserveOutcome]:
        reservation = Reservation(bid_id, CAMPAIGN, "user-1", price, "USD", 1.0, cost_micros)
        return await CampaignLedger(shards).reserve([reservation], time.monotonic() + 5)

    assert on_redis(job, url) == [ReserveOutcome.RESERVED]
    return bid_id


def held_micros(url: str, bid_id: str) -> int:
    """What the bid's hold bucket holds now (every bid of the test campaign shares one bucket)."""

    async def job(shards: RedisShards) -> int:
        client = shards.shard_for_slot(0).client
        tag = bid_tag(bid_id)
        assert tag is not None
        hold = await client.hget(bid_key(tag, bid_id), "hk")
        return int(await client.get(hold) or 0) if hold else 0

    return int(on_redis(job, url))


def rendered(settings: Settings, bid_id: str, price: float) -> Bid:
    renderer = CatalogBidRenderer(
        notice_signer(settings, notice_keyring(settings)),
        CurrencyTable({"USD": 1.0}),
        notice_ttl_s=settings.notice_ttl_s,
    )
    request = BidRequest(id="auction-1", imp=[Imp(id="imp-1", banner=Banner(w=300, h=250))])
    bid = Bid(id=bid_id, impid="imp-1", price=price)
    return renderer.render(request, bid, REF, "resp-1")


def as_exchange(url: str | None, *, price: str = "2.0", loss: str = "102") -> str:
    """Substitute the macros as an exchange does; the gateway path and query (the base is the test's)."""
    assert url is not None
    for macro, value in {
        "${AUCTION_ID}": "auction-1",
        "${AUCTION_BID_ID}": "resp-1",
        "${AUCTION_IMP_ID}": "imp-1",
        "${AUCTION_CURRENCY}": "USD",
        "${AUCTION_PRICE}": price,
        "${AUCTION_LOSS}": loss,
    }.items():
        url = url.replace(macro, quote(value, safe=""))
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def unfilled(url: str | None) -> str:
    """The URL as the bid carried it: an exchange that substituted nothing."""
    assert url is not None
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def metric(client: httpx.Client, line_prefix: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_bill_twice_and_post_once_charge_exactly_once(
    redis_server: RedisServer, gateway: httpx.Client
) -> None:
    reset(redis_server.url, {CAMPAIGN: CampaignConfig(daily_budget_micros=10**9)})
    bid_id = reserve(redis_server.url, 2.5, 2500)
    assert held_micros(redis_server.url, bid_id) == 2500
    bid = rendered(notice_settings(redis_server), bid_id, 2.5)
    bill = as_exchange(bid.burl, price="2.0")

    first, second = gateway.get(bill), gateway.get(bill)
    posted = gateway.post(bill, content=b'{"ignored": true}')
    assert [r.status_code for r in (first, second, posted)] == [200, 200, 200], posted.text
    assert first.json() == {
        "bid_id": bid_id,
        "duplicate": False,
        "campaign_id": CAMPAIGN,
        "cost_micros": 2000,
    }
    assert second.json()["duplicate"]
    assert posted.json()["duplicate"]
    assert spend(redis_server.url, CAMPAIGN) == 2000
    assert held_micros(redis_server.url, bid_id) == 0, "the win moved the hold into spend"

    # bill_on=burl (the default): the win notice answers, records nothing.
    win = gateway.get(as_exchange(bid.nurl, price="2.0"))
    assert win.json() == {"bid_id": bid_id, "recorded": False}
    # A loss for a bid already billed cannot undo the charge.
    late_loss = gateway.get(as_exchange(bid.lurl))
    assert late_loss.status_code == 409
    assert late_loss.json()["error"]["code"] == "already_won"
    assert spend(redis_server.url, CAMPAIGN) == 2000
    assert metric(gateway, 'bidgw_notices_total{kind="bill",result="duplicate"}') >= 2


def test_a_loss_sent_twice_is_counted_once_and_releases_the_hold(
    redis_server: RedisServer, gateway: httpx.Client
) -> None:
    reset(redis_server.url, {CAMPAIGN: CampaignConfig(daily_budget_micros=10**9)})
    kept = reserve(redis_server.url, 1.0, 1000)
    lost = reserve(redis_server.url, 3.0, 3000)
    assert held_micros(redis_server.url, lost) == 4000
    losses_before = metric(gateway, 'bidgw_notice_losses_total{reason="102"}')
    loss = as_exchange(rendered(notice_settings(redis_server), lost, 3.0).lurl, loss="102")

    first, again = gateway.get(loss), gateway.post(loss)
    assert first.json() == {
        "bid_id": lost,
        "duplicate": False,
        "campaign_id": CAMPAIGN,
        "reason": 102,
        "released_micros": 3000,
    }
    assert again.json()["duplicate"]
    assert again.json()["released_micros"] == 0
    assert held_micros(redis_server.url, kept) == 1000, "only the lost bid's hold is released"
    assert metric(gateway, 'bidgw_notice_losses_total{reason="102"}') == losses_before + 1
    assert spend(redis_server.url, CAMPAIGN) == 0


def test_forged_and_unfilled_notices_charge_nothing(redis_server: RedisServer, gateway: httpx.Client) -> None:
    reset(redis_server.url, {CAMPAIGN: CampaignConfig(daily_budget_micros=10**9)})
    bid_id = reserve(redis_server.url, 2.5, 2500)
    bid = rendered(notice_settings(redis_server), bid_id, 2.5)
    bill = as_exchange(bid.burl, price="2.0")
    forged_before = metric(gateway, 'bidgw_notices_total{kind="bill",result="forged"}')

    cases = [
        (bill.replace("bp=2.5", "bp=25.0").replace("price=2.0", "price=20.0"), 403, "forged_notice", "sig"),
        (
            as_exchange(bid.lurl).replace("/loss?", "/bill?").replace("loss=102", "price=0.5"),
            403,
            "forged_notice",
            "sig",
        ),
        (bill.replace("kid=k1", "kid=k9"), 403, "forged_notice", "kid"),
        (bill.replace("imp=imp-1", "imp=imp-2"), 403, "forged_notice", "sig"),
        (
            bid.burl.split("/v1", 1)[1].join(["/v1", ""]) if bid.burl else "",
            400,
            "unsubstituted_macro",
            "auc",
        ),
        (bill.replace("price=2.0", "price=%24%7BAUCTION_PRICE%7D"), 400, "unsubstituted_macro", "price"),
        (bill.replace("price=2.0", "price=abc"), 422, "invalid_value", "price"),
        (bill.replace("price=2.0", "price=2.6"), 422, "price_above_bid", "price"),
    ]
    for path, status, code, field in cases:
        response = gateway.get(path)
        assert response.status_code == status, (path, response.text)
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["field"] == field
    assert spend(redis_server.url, CAMPAIGN) == 0
    assert held_micros(redis_server.url, bid_id) == 2500
    assert metric(gateway, 'bidgw_notices_total{kind="bill",result="forged"}') == forged_before + 4
    assert gateway.get(bill).json()["cost_micros"] == 2000, "the genuine notice still bills"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(SIGNED_FIELDS),
    value=st.text(alphabet=string.ascii_letters + string.digits + ".-_~%&=", max_size=20),
)
def test_any_mutated_signed_field_is_refused_and_charges_nothing(
    redis_server: RedisServer, gateway: httpx.Client, name: str, value: str
) -> None:
    bid_id = reserve(redis_server.url, 2.5, 2500)
    bill = as_exchange(rendered(notice_settings(redis_server), bid_id, 2.5).burl)
    path, query = bill.split("?", 1)
    pairs = parse_qsl(query, keep_blank_values=True)
    if dict(pairs)[name] == value:
        return
    mutated = urlencode([(k, value if k == name else v) for k, v in pairs])
    before = spend(redis_server.url, CAMPAIGN)
    response = gateway.get(f"{path}?{mutated}")
    assert response.status_code == 403, response.text
    assert spend(redis_server.url, CAMPAIGN) == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=200), kind=st.sampled_from(["win", "bill", "loss"]), post=st.booleans())
def test_junk_query_strings_never_get_a_5xx(
    gateway: httpx.Client, junk: bytes, kind: str, post: bool
) -> None:
    path = f"/v1/notices/{kind}?{quote_from_bytes(junk, safe='=&%$+')}"
    response = gateway.post(path, content=junk) if post else gateway.get(path)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"]


def test_the_embedded_backend_says_notices_are_disabled(redis_server: RedisServer) -> None:
    settings = Settings(triton_url=f"127.0.0.1:{free_port()}", notice_keys=KEYS, bill_on="nurl")
    bid = rendered(settings, new_bid_id(CAMPAIGN), 2.5)
    with serve_in_thread(settings) as url, httpx.Client(base_url=url) as client:
        for notice in (as_exchange(bid.nurl), as_exchange(bid.lurl)):  # the kinds that record (bill_on=nurl)
            response = client.get(notice)
            assert response.status_code == 501
            assert response.json()["error"]["code"] == "notices_disabled"
        assert client.get(as_exchange(bid.burl)).json() == {"bid_id": bid.id, "recorded": False}
        spec = client.get("/openapi.json").json()
    for kind in ("win", "bill", "loss"):
        for method in ("get", "post"):
            operation = spec["paths"][f"/v1/notices/{kind}"][method]
            assert {"200", "400", "403", "404", "422", "501", "503"} <= set(operation["responses"])
            assert {p["name"] for p in operation["parameters"]} >= {"bid", "sig", "kid", "exp"}


def test_with_bill_on_nurl_only_the_win_notice_bills(redis_server: RedisServer) -> None:
    reset(redis_server.url, {CAMPAIGN: CampaignConfig(daily_budget_micros=10**9)})
    settings = redis_settings(redis_server, notice_keys=KEYS, bill_on="nurl")
    bid_id = reserve(redis_server.url, 2.5, 2500)
    bid = rendered(settings, bid_id, 2.5)
    with serve_in_thread(settings) as url, httpx.Client(base_url=url) as client:
        win = client.get(as_exchange(bid.nurl, price="1.5"))
        bill = client.get(as_exchange(bid.burl, price="1.5"))
    assert win.json() == {"bid_id": bid_id, "duplicate": False, "campaign_id": CAMPAIGN, "cost_micros": 1500}
    # Only the kind bill_on names charges: the burl is acknowledged, whatever price it carries.
    assert bill.json() == {"bid_id": bid_id, "recorded": False}
    assert spend(redis_server.url, CAMPAIGN) == 1500
