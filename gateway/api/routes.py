"""HTTP routes. Thin: read bytes, decode, hand the request to the pipeline, encode the answer."""

from __future__ import annotations

import time

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.decode import decode_bid_request
from gateway.api.errors import error_response
from gateway.api.openapi import error, json_content
from gateway.errors import Overloaded, RequestTooLarge
from gateway.openrtb import BidRequest, BidResponse, encode_response
from gateway.services import Services

router = APIRouter()

# The OpenAPI schemas come from the same msgspec structs that decode and encode the bodies.
_REF = "#/components/schemas/{name}"
(_REQUEST_SCHEMA, _RESPONSE_SCHEMA), OPENAPI_COMPONENTS = msgspec.json.schema_components(
    [BidRequest, BidResponse], ref_template=_REF
)


@router.post(
    "/v1/bid",
    summary="Rank the candidate ads of an OpenRTB 2.6 BidRequest and answer a BidResponse",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST_SCHEMA}}}
    },
    responses={
        200: json_content(_RESPONSE_SCHEMA, "A BidResponse: bids per imp, or seatbid [] with nbr"),
        400: error("Malformed JSON, a wrong type or a missing field"),
        413: error("Body, imps or candidates over the configured limits"),
        422: error("Well-formed but invalid (duplicate ids, unknown currency, ...)"),
        503: error("Overloaded (too many bids in flight here): retry another replica"),
    },
)
async def bid(request: Request) -> Response:
    services: Services = request.app.state.services
    received_at = time.monotonic()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > services.limits.max_body_bytes:
        # Refuse before reading a body we will not accept.
        raise RequestTooLarge(
            "body_too_large", f"body is {declared} bytes; the limit is {services.limits.max_body_bytes}"
        )
    if services.inflight_bids >= services.max_inflight_bids:
        # Shed before reading the body: a fast 503 lets the caller try another replica within its tmax,
        # while queueing here would make every admitted bid late too.
        services.shed_bids += 1
        raise Overloaded(
            f"{services.inflight_bids} bids in flight in this worker (limit {services.max_inflight_bids})"
        )
    services.inflight_bids += 1
    try:
        body = await request.body()
        bid_request = decode_bid_request(body, services.limits)
        timings = {"decode": (time.monotonic() - received_at) * 1000.0}
        decision = await services.pipeline.decide(bid_request, received_at, timings)
    finally:
        services.inflight_bids -= 1
    encode_at = time.monotonic()
    encoded = encode_response(decision.response)
    done_at = time.monotonic()
    services.tally.record(decision, done_at - encode_at)
    services.bid_log.decided(decision, done_at - received_at)
    return Response(encoded, media_type="application/json")


@router.get("/healthz", summary="Liveness: the process serves HTTP")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: Triton reachable with the model ready, stores loaded")
async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    if services.draining:
        return error_response(503, "draining", "shutting down: finishing in-flight bids")
    checks = {"stores": services.store.ready(), "model": await services.scorer_ready()}
    if all(checks.values()):
        return Response(b'{"status":"ready"}', media_type="application/json")
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    return error_response(503, "not_ready", f"not ready: {failing}")
