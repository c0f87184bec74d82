"""Click and conversion notices: POST (JSON body) or GET (query parameters, for pixels) on
/v1/events/click and /v1/events/conversion, for a bid this gateway returned and a win notice billed.

Body {"bid_id": "<BidResponse.seatbid[].bid[].id>"}, or ?bid_id=... on GET. Idempotent per bid id and kind.

  200 {"bid_id", "duplicate": false}   counted toward the bid's model calibration
  200 {"bid_id", "duplicate": true}    already recorded: nothing counted again
  400 malformed_json / invalid_type / missing_field
  404 unknown_bid                      never returned here, or its record expired
  409 not_won                          a click on a bid no win notice has billed (yet): retry after the win
  409 not_clicked                      a conversion on a bid without a recorded click (view-through)
  501 feedback_disabled                the embedded backend keeps no bids
  503 store_unavailable (Retry-After)  Redis failed: the sender retries
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Final

import msgspec
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.decode import from_validation_error
from gateway.api.errors import error_response
from gateway.api.openapi import error, json_content
from gateway.errors import MalformedRequest
from gateway.observability.calibration import CalibrationMetrics
from gateway.stores.feedback import FeedbackKind, FeedbackLedger, FeedbackOutcome

__all__ = ["FeedbackNotice", "decode_feedback_notice", "router"]

router = APIRouter()


class FeedbackNotice(msgspec.Struct, frozen=True, kw_only=True):
    bid_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


_DECODER: Final = msgspec.json.Decoder(FeedbackNotice)
_NOTICE_SCHEMA: Final[dict[str, Any]] = msgspec.json.schema_components([FeedbackNotice])[1]["FeedbackNotice"]
_RESULT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["bid_id", "duplicate"],
    "properties": {"bid_id": {"type": "string"}, "duplicate": {"type": "boolean"}},
}
_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: json_content(_RESULT_SCHEMA, "Recorded, or a duplicate of an event already recorded"),
    400: error("Malformed JSON, a wrong type or a missing bid_id"),
    404: error("unknown_bid: no such bid, or its record expired"),
    409: error("not_won: no win notice billed the bid yet; not_clicked: a conversion without a click"),
    422: error("invalid_value: an empty or over-long bid_id"),
    501: error("The embedded store backend records no bids"),
    503: error("Redis unavailable: retry later"),
}
_QUERY: Final[dict[str, Any]] = {
    "parameters": [
        {
            "name": "bid_id",
            "in": "query",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
        }
    ]
}
_BODY: Final[dict[str, Any]] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _NOTICE_SCHEMA}}}
}


def decode_feedback_notice(body: bytes) -> FeedbackNotice:
    try:
        return _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise from_validation_error(exc) from exc
    except msgspec.DecodeError as exc:
        raise MalformedRequest("malformed_json", f"body is not valid JSON: {exc}") from exc


def _query_notice(request: Request) -> FeedbackNotice:
    bid_id = request.query_params.get("bid_id")
    if not bid_id:
        raise MalformedRequest("missing_field", "query parameter bid_id is required", "bid_id")
    if len(bid_id) > 128:
        raise MalformedRequest("invalid_value", "bid_id is longer than 128 characters", "bid_id")
    return FeedbackNotice(bid_id=bid_id)


async def _record(request: Request, kind: FeedbackKind, notice: FeedbackNotice) -> Response:
    services = request.app.state.services
    ledger: FeedbackLedger | None = getattr(services, "feedback", None)
    metrics: CalibrationMetrics | None = getattr(services, "calibration", None)
    name = kind.name.lower()
    if ledger is None:
        return error_response(
            501,
            "feedback_disabled",
            f"{name} notices need store_backend=redis (the embedded store keeps no bids)",
        )
    result = await ledger.record(kind, notice.bid_id, time.monotonic() + ledger.timeout_s)
    if metrics is not None:
        metrics.events.labels(name, result.outcome.name.lower()).inc()
    if result.outcome is FeedbackOutcome.UNKNOWN_BID:
        return error_response(404, "unknown_bid", f"bid {notice.bid_id!r} is unknown or expired", "bid_id")
    if result.outcome is FeedbackOutcome.NOT_WON:
        return error_response(409, "not_won", f"bid {notice.bid_id!r} has no win notice yet", "bid_id")
    if result.outcome is FeedbackOutcome.NOT_CLICKED:
        return error_response(
            409, "not_clicked", f"bid {notice.bid_id!r} has no click: pCVR is per click", "bid_id"
        )
    if result.outcome is FeedbackOutcome.RECORDED and metrics is not None and result.attribution is not None:
        if kind is FeedbackKind.CLICK:
            metrics.on_click(result.attribution, result.shadow_counted)
        else:
            metrics.on_conversion(result.attribution, result.shadow_counted)
    body = {"bid_id": notice.bid_id, "duplicate": result.outcome is FeedbackOutcome.DUPLICATE}
    return Response(orjson.dumps(body), media_type="application/json")


@router.post(
    "/v1/events/click",
    summary="Click on a won bid, once per bid id",
    openapi_extra=_BODY,
    responses=_RESPONSES,
)
async def click(request: Request) -> Response:
    return await _record(request, FeedbackKind.CLICK, decode_feedback_notice(await request.body()))


@router.get(
    "/v1/events/click", summary="Click pixel (?bid_id=): as POST", openapi_extra=_QUERY, responses=_RESPONSES
)
async def click_pixel(request: Request) -> Response:
    return await _record(request, FeedbackKind.CLICK, _query_notice(request))


@router.post(
    "/v1/events/conversion",
    summary="Conversion after a click, once per bid id",
    openapi_extra=_BODY,
    responses=_RESPONSES,
)
async def conversion(request: Request) -> Response:
    return await _record(request, FeedbackKind.CONVERSION, decode_feedback_notice(await request.body()))


@router.get(
    "/v1/events/conversion",
    summary="Conversion pixel/postback (?bid_id=): as POST",
    openapi_extra=_QUERY,
    responses=_RESPONSES,
)
async def conversion_pixel(request: Request) -> Response:
    return await _record(request, FeedbackKind.CONVERSION, _query_notice(request))
