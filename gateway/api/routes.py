"""The FastAPI routes besides the bid endpoint (health, readiness), and the OpenAPI description of
POST /v1/bid, whose handler is the raw ASGI `gateway.api.bid_endpoint.BidEndpoint`."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.errors import error_response
from gateway.api.openapi import error, json_content
from gateway.openrtb import BidRequest, BidResponse
from gateway.services import Services

router = APIRouter()

# The OpenAPI schemas come from the same msgspec structs that decode and encode the bodies.
_REF = "#/components/schemas/{name}"
(_REQUEST_SCHEMA, _RESPONSE_SCHEMA), OPENAPI_COMPONENTS = msgspec.json.schema_components(
    [BidRequest, BidResponse], ref_template=_REF
)


# POST /v1/bid is served by `gateway.api.bid_endpoint.BidEndpoint`, outside FastAPI's routing; this is
# the operation the OpenAPI document describes for it (what FastAPI would have generated).
BID_OPERATION: Final[dict[str, Any]] = {
    "summary": "Rank the candidate ads of an OpenRTB 2.6 BidRequest (its ext.candidates, or the catalog's "
    "for a plain request) and answer a BidResponse",
    "operationId": "bid_v1_bid_post",
    "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST_SCHEMA}}},
    "responses": {
        "200": json_content(_RESPONSE_SCHEMA, "A BidResponse: bids per imp, or seatbid [] with nbr"),
        "204": {"description": "No bid to a request without ext.candidates (BIDGW_PLAIN_NOBID_STATUS=204)"},
        "400": error("Malformed JSON, a wrong type or a missing field"),
        "413": error("Body, imps or candidates over the configured limits"),
        "422": error("Well-formed but invalid (duplicate ids, unknown currency, ...)"),
        "503": error("Overloaded (too many bids in flight here): retry another replica"),
    },
}


@router.get("/healthz", summary="Liveness: the process serves HTTP")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: this replica can answer bids (add ?model=1 to require the model ready on Triton)",
    description=(
        "200 when the process serves, its stores are loaded, it is not draining, and it can score: either "
        "fallback scoring is on (BIDGW_ON_SCORING_FAILURE=priors, the default: a Triton outage degrades "
        "bids, it does not stop them, so it must not take every replica out of its Service) or some Triton "
        "server reports the model ready (=nobid). `?model=1` always requires the model ready: the signal "
        "for dashboards and rollouts, not for the Service's endpoints."
    ),
)
async def readyz(request: Request, model: bool = False) -> Response:
    services: Services = request.app.state.services
    if services.draining:
        return error_response(503, "draining", "shutting down: finishing in-flight bids")
    checks = {"stores": services.store.ready()}
    if model or not services.bids_without_model:
        # Only asked when it decides the answer: a hung Triton must not make the probe itself time out.
        checks["model"] = await services.scorer_ready()
    if all(checks.values()):
        return Response(b'{"status":"ready"}', media_type="application/json")
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    return error_response(503, "not_ready", f"not ready: {failing}")
