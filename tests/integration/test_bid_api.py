"""POST /v1/bid end to end: the real gateway (uvicorn) in front of the real local Triton."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.config import Settings
from gateway.core import feature_spec
from gateway.local_triton import LocalTriton, free_port
from gateway.openrtb import BidResponse
from tests.conftest import SHARED_DIR
from tests.integration.bid_requests import ads_with_distinct_advertisers, candidate, site_request, snapshot
from tests.integration.gateway_server import serve_in_thread
from tests.integration.test_triton_serving import triton_inputs

pytestmark = pytest.mark.integration
EXAMPLES = SHARED_DIR / "openrtb-examples" / "requests"


@pytest.fixture(scope="module")
def gateway(triton: LocalTriton) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(Settings(triton_url=triton.http_address)) as url,
        httpx.Client(base_url=url) as client,
    ):
        yield client


def post(client: httpx.Client, body: dict[str, Any] | bytes) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/bid", content=content, headers={"content-type": "application/json"})


def decoded(response: httpx.Response) -> BidResponse:
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content, type=BidResponse)


def test_a_known_user_and_ads_get_a_priced_bid(gateway: httpx.Client) -> None:
    ads = ads_with_distinct_advertisers(5)
    request = site_request([candidate(ad, bid=1.0 + i) for i, ad in enumerate(ads)])
    body = decoded(post(gateway, request))
    assert body.id == "req-1"
    assert body.cur == "USD"
    assert body.nbr is None
    assert body.seatbid is not None
    [seat] = body.seatbid
    [bid] = seat.bid
    # CPM bids: eCPM is the bid itself, so the highest bid wins, priced second-price.
    assert bid.adid == ads[-1]["id"]
    assert bid.impid == "1"
    assert bid.price == pytest.approx(4.01)
    assert bid.adomain == [ads[-1]["advertiser"]]
    assert bid.ext is not None
    assert 0 < bid.ext.pctr < 1
    assert 0 < bid.ext.pcvr < 1
    assert bid.ext.model_version == "1"


def test_nothing_above_the_floor_is_a_no_bid_with_a_reason(gateway: httpx.Client) -> None:
    [ad] = ads_with_distinct_advertisers(1)
    request = site_request([candidate(ad, bid=0.05)])
    response = post(gateway, request)
    assert response.json()["seatbid"] == []
    body = decoded(response)
    assert body.nbr == 502
    assert body.seatbid == []


def test_debug_explains_dropped_candidates_and_timings(gateway: httpx.Client) -> None:
    ads = ads_with_distinct_advertisers(3)
    request = site_request(
        [candidate(ads[0], bid=3.0), candidate(ads[1], bid=0.01), candidate(ads[2], bid=2.0)],
        badv=[ads[2]["advertiser"]],
    )
    request["ext"]["debug"] = True
    debug = post(gateway, request).json()["ext"]["debug"]
    reasons = {d["id"]: d["reason"] for d in debug["dropped"]}
    assert reasons == {ads[1]["id"]: "below_floor", ads[2]["id"]: "blocked_advertiser"}
    assert set(debug["timings_ms"]) >= {"decode", "features", "scoring", "auction"}


def iab_examples() -> list[Path | None]:
    found: list[Path | None] = [*sorted(EXAMPLES.glob("*.json"))] if EXAMPLES.is_dir() else []
    return found or [None]


@pytest.mark.parametrize("path", iab_examples(), ids=lambda p: p.stem if p else "absent")
def test_every_iab_example_request_gets_a_valid_response(gateway: httpx.Client, path: Path | None) -> None:
    if path is None:
        pytest.skip(f"IAB examples not found at {EXAMPLES}")
    example = json.loads(path.read_text())
    request = example.get("request", example)
    ads = ads_with_distinct_advertisers(3)
    request.setdefault("ext", {})["candidates"] = [candidate(ad, bid=50.0 + i) for i, ad in enumerate(ads)]
    response = post(gateway, request)
    body = decoded(response)
    assert body.id == request["id"]
    imp_ids = {imp["id"] for imp in request["imp"]}
    if body.nbr is None:
        assert body.seatbid
        for bid in body.seatbid[0].bid:
            assert bid.impid in imp_ids
            assert bid.price > 0
    else:
        assert body.seatbid == []


BadInput = tuple[dict[str, Any] | bytes, int, str | None, str | None]  # body, status, code, field
BAD_INPUTS: dict[str, BadInput] = {
    "malformed_json": (b'{"id": "x", "imp": [', 400, "malformed_json", None),
    "wrong_type": ({"id": "x", "imp": "nope"}, 400, "invalid_type", "imp"),
    "missing_id": ({"imp": [{"id": "1"}]}, 400, "missing_field", "id"),
    "empty_imp": ({"id": "x", "imp": []}, 422, None, "imp"),
    "duplicate_imp_ids": ({"id": "x", "imp": [{"id": "1"}, {"id": "1"}]}, 422, "duplicate_id", "imp[1].id"),
    "negative_floor": ({"id": "x", "imp": [{"id": "1", "bidfloor": -1}]}, 422, None, "imp[0].bidfloor"),
    "unknown_currency": ({"id": "x", "imp": [{"id": "1", "bidfloorcur": "XYZ"}]}, 422, "unknown_currency",
                         "imp[0].bidfloorcur"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
def test_bad_input_gets_a_4xx_naming_the_problem(gateway: httpx.Client, case: str) -> None:
    body, status, code, field = BAD_INPUTS[case]
    if isinstance(body, dict):
        [ad] = ads_with_distinct_advertisers(1)
        body = {**body, "ext": {"candidates": [candidate(ad)]}}
    response = post(gateway, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    assert error["field"] == field


def test_bad_candidates_get_a_4xx(gateway: httpx.Client) -> None:
    [ad] = ads_with_distinct_advertisers(1)
    duplicate = post(gateway, site_request([candidate(ad), candidate(ad)]))
    assert duplicate.status_code == 422
    assert duplicate.json()["error"]["field"] == "ext.candidates[1].id"
    negative = post(gateway, site_request([candidate(ad, bid=-1.0)]))
    assert negative.status_code == 422
    assert negative.json()["error"]["field"] == "ext.candidates[0].bid"


def test_limits_get_413(gateway: httpx.Client) -> None:
    ads = ads_with_distinct_advertisers(1)
    too_many = [candidate(ads[0], id=f"ad-{i}") for i in range(1001)]
    response = post(gateway, site_request(too_many))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_candidates"
    huge = post(gateway, b" " * (1 << 20) + b"{}")
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "body_too_large"


def test_health_readiness_and_openapi(gateway: httpx.Client) -> None:
    assert gateway.get("/healthz").json() == {"status": "ok"}
    assert gateway.get("/readyz").status_code == 200
    spec = gateway.get("/openapi.json").json()
    operation = spec["paths"]["/v1/bid"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BidRequest"
    }
    assert {"BidRequest", "BidResponse", "Candidate", "Imp"} <= set(spec["components"]["schemas"])
    assert {"200", "400", "413", "422", "503"} <= set(operation["responses"])


def test_other_methods_on_the_bid_path_get_405(gateway: httpx.Client) -> None:
    # POST is served outside FastAPI's routing; the route it keeps there still answers other methods.
    response = gateway.get("/v1/bid")
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]


def test_triton_unreachable_bids_on_priors_flagged_degraded() -> None:
    dead = Settings(triton_url=f"127.0.0.1:{free_port()}")
    with serve_in_thread(dead) as url, httpx.Client(base_url=url) as client:
        ads = ads_with_distinct_advertisers(2)
        body = decoded(post(client, site_request([candidate(ad, bid_type="cpc", bid=1.0) for ad in ads])))
        assert body.ext is not None
        assert body.ext.degraded is True
        assert body.seatbid is not None
        [bid] = body.seatbid[0].bid
        assert bid.ext is not None
        assert bid.ext.model_version == "priors"
        winner = next(ad for ad in ads if ad["id"] == bid.adid)
        assert bid.ext.pctr == pytest.approx(winner["prior_ctr"], rel=1e-6)
        assert bid.ext.pcvr == pytest.approx(winner["prior_cvr"], rel=1e-6)
        # It can answer bids (on priors), so it stays in its Service; the model's state is its own signal.
        assert client.get("/readyz").status_code == 200
        model = client.get("/readyz", params={"model": "1"})
        assert model.status_code == 503
        assert model.json()["error"] == {
            "code": "not_ready",
            "message": "not ready: model",
            "field": None,
        }


def test_triton_unreachable_can_answer_no_bid_instead() -> None:
    dead = Settings(triton_url=f"127.0.0.1:{free_port()}", on_scoring_failure="nobid")
    with serve_in_thread(dead) as url, httpx.Client(base_url=url) as client:
        [ad] = ads_with_distinct_advertisers(1)
        body = decoded(post(client, site_request([candidate(ad)])))
        assert body.nbr == 1
        assert body.seatbid == []
        assert body.ext is not None
        assert body.ext.degraded is True
        # No-bid on failure: without Triton this replica cannot bid, so it leaves its Service.
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["message"] == "not ready: model"


def test_model_readiness_variant_with_triton_up(gateway: httpx.Client) -> None:
    assert gateway.get("/readyz", params={"model": "1"}).status_code == 200
    assert gateway.get("/readyz", params={"model": "0"}).status_code == 200
    bad = gateway.get("/readyz", params={"model": "perhaps"})
    assert bad.status_code == 422


def expected_rows(request: dict[str, Any], ads: list[dict[str, Any]], hour: int) -> tuple[Any, Any]:
    """The model rows for `site_request`'s one-ad-per-imp layout, encoded here straight from the model
    card's spec (field by field, no gateway feature code), to check what the gateway sent to Triton."""
    user = next(u for u in snapshot("users") if u["id"] == request["user"]["id"])
    site, device = request["site"], request["device"]
    cat_rows, dense_rows = [], []
    for imp, ad in zip(request["imp"], ads, strict=True):
        banner = imp["banner"]
        values = {
            "user_id": user["id"], "user_age": user["age"], "user_gender": user["gender"],
            "user_interest1": user["interests"][0], "user_interest2": user["interests"][1],
            "ad_id": ad["id"], "campaign_id": ad["campaign_id"], "advertiser": ad["advertiser"],
            "ad_category": ad["cat"], "publisher": site["domain"], "pub_category": site["cat"][0],
            "device_type": str(device["devicetype"]), "os": device["os"].lower(),
            "country": device["geo"]["country"], "tagid": imp["tagid"],
            "ad_size": f"{banner['w']}x{banner['h']}", "position": str(banner["pos"]),
        }  # fmt: skip
        row = [feature_spec.hash_field(f.name, values[f.name]) for f in feature_spec.CATEGORICAL_FIELDS[:-1]]
        cat_rows.append([*row, hour])
        sin, cos = feature_spec.hour_cycle(hour)
        dense_rows.append([user["ctr_hist"], user["activity"], ad["prior_ctr"], ad["prior_cvr"], sin, cos])
    return np.array(cat_rows, dtype=np.int64), np.array(dense_rows, dtype=np.float32)


def test_scores_in_responses_equal_tritons_own_scores(gateway: httpx.Client, triton: LocalTriton) -> None:
    ads = ads_with_distinct_advertisers(8)
    # One imp per ad (imp_ids), distinct advertisers, no floor: every ad wins its own imp, so every score
    # the gateway computed comes back in the response.
    request = site_request([candidate(ad, bid_type="cpc", bid=1.0, imp_ids=[str(i + 1)]) for i, ad in
                            enumerate(ads)], imps=len(ads))  # fmt: skip
    for imp in request["imp"]:
        imp["bidfloor"] = 0
    for _ in range(3):  # the hour is part of the features: retry if it turned while we asked
        hour = datetime.now(UTC).hour
        body = decoded(post(gateway, request))
        if datetime.now(UTC).hour == hour:
            break
    assert body.seatbid is not None
    bids = {bid.impid: bid for bid in body.seatbid[0].bid}
    assert sorted(bids) == sorted(imp["id"] for imp in request["imp"])
    cat, dense = expected_rows(request, ads, hour)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    result = client.infer(feature_spec.MODEL_NAME, triton_inputs(cat, dense), model_version="1")
    pctr, pcvr = result.as_numpy("pctr")[:, 0], result.as_numpy("pcvr")[:, 0]
    for i, imp in enumerate(request["imp"]):
        ext = bids[imp["id"]].ext
        assert ext is not None
        assert bids[imp["id"]].adid == ads[i]["id"]
        assert ext.pctr == pytest.approx(float(pctr[i]), abs=1e-6)
        assert ext.pcvr == pytest.approx(float(pcvr[i]), abs=1e-6)
        assert ext.ecpm == pytest.approx(1000 * 1.0 * float(pctr[i]), rel=1e-5)
