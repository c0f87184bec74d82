"""Click and conversion notices through a real gateway on a real Redis: joins, idempotency, refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from gateway.config import Settings
from gateway.core.ports import Reservation
from gateway.local_triton import free_port
from gateway.stores.campaigns import CampaignLedger
from gateway.stores.keys import new_bid_id
from gateway.stores.shards import RedisShards
from tests.integration.gateway_server import serve_in_thread
from tests.integration.redis_server import RedisServer
from tests.integration.test_win_notices import on_redis, redis_settings, reset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def make_bid(url: str, campaign: str = "fb1") -> str:
    bid_id = new_bid_id(campaign)
    reservation = Reservation(
        bid_id=bid_id,
        campaign_id=campaign,
        user_key="u1",
        price=2.0,
        currency="USD",
        rate=1.0,
        cost_micros=2000,
        model_version="2",
        arm="e/candidate",
        pctr=0.25,
        pcvr=0.5,
        bid_type="cpa",
    )

    async def job(shards: RedisShards) -> None:
        await CampaignLedger(shards).reserve([reservation], deadline=1e12)

    on_redis(job, url)
    return bid_id


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and 'version="2"' in line and 'role="live"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_clicks_and_conversions_join_the_bid_record_once(redis_server: RedisServer) -> None:
    reset(redis_server.url)
    bid_id = make_bid(redis_server.url)
    with serve_in_thread(redis_settings(redis_server)) as url, httpx.Client(base_url=url) as client:
        click = client.post("/v1/events/click", content=json.dumps({"bid_id": bid_id}))
        assert click.status_code == 409
        assert click.json()["error"]["code"] == "not_won"
        assert (
            client.post("/v1/events/win", content=json.dumps({"bid_id": bid_id, "price": 1.0})).status_code
            == 200
        )
        conversion = client.get("/v1/events/conversion", params={"bid_id": bid_id})
        assert conversion.status_code == 409
        assert conversion.json()["error"]["code"] == "not_clicked"
        assert client.get("/v1/events/click", params={"bid_id": bid_id}).json() == {
            "bid_id": bid_id,
            "duplicate": False,
        }
        assert client.post("/v1/events/click", content=json.dumps({"bid_id": bid_id})).json()["duplicate"]
        assert client.post("/v1/events/conversion", content=json.dumps({"bid_id": bid_id})).status_code == 200
        assert client.get("/v1/events/conversion", params={"bid_id": bid_id}).json()["duplicate"]
        assert metric(client, "bidgw_model_impressions_total") == 1
        assert metric(client, "bidgw_model_predicted_clicks_total") == 0.25
        assert metric(client, "bidgw_model_clicks_total") == 1
        assert metric(client, "bidgw_model_predicted_conversions_total") == 0.5
        assert metric(client, "bidgw_model_conversions_total") == 1
        assert metric(client, "bidgw_model_spend_micros_total") == 1000
        unknown = client.get("/v1/events/click", params={"bid_id": new_bid_id("fb1")})
        assert unknown.status_code == 404
        missing = client.get("/v1/events/click")
        assert missing.status_code == 400
        assert missing.json()["error"]["field"] == "bid_id"
        assert client.post("/v1/events/click", content=b"{").status_code == 400


def test_the_embedded_backend_answers_501() -> None:
    with serve_in_thread(Settings(triton_url=f"127.0.0.1:{free_port()}")) as url:
        response = httpx.get(f"{url}/v1/events/click", params={"bid_id": "x"})
    assert response.status_code == 501
    assert response.json()["error"]["code"] == "feedback_disabled"
