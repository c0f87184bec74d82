"""POST /v1/events/win: the exchange's win (billing) notice for a bid this gateway returned.

Body: {"bid_id": "<BidResponse.seatbid[].bid[].id>", "price": <clearing price>, "cur": "<optional>"}.
`price` is the clearing CPM in the bid's own currency, i.e. the response's `cur` (what an exchange
substitutes for ${AUCTION_PRICE}); `cur`, when sent, must name that currency. The gateway converts with the
rate it priced the bid at, so a rate change between bid and notice cannot move the charge.

  200 {"bid_id", "duplicate": false, "campaign_id", "cost_micros"}   spend and the impression recorded
  200 {"bid_id", "duplicate": true, ...}                             already billed: nothing counted again
  400 malformed_json / invalid_type / missing_field                 not the documented body
  404 unknown_bid                                                   never returned here, or expired
  422 invalid_value / price_above_bid / currency_mismatch           a value the notice cannot carry
  403 signed_notice_required                                        a catalog bid: only its signed URLs bill
  501 win_notices_disabled                                          the embedded backend keeps no bids
  503 store_unavailable (Retry-After)                               Redis failed: the exchange retries
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Final

import msgspec
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.decode import from_validation_error
from gateway.api.errors import error_response
from gateway.api.openapi import error, json_content
from gateway.errors import InvalidRequest, MalformedRequest
from gateway.observability.calibration import CalibrationMetrics
from gateway.stores.campaigns import CampaignLedger, WinOutcome, WinResult
from gateway.stores.keys import signed_notices_only

__all__ = ["WIN_RESULT_SCHEMA", "WinNotice", "count_impression", "decode_win_notice", "router", "win_answer"]

router = APIRouter()


class WinNotice(msgspec.Struct, frozen=True, kw_only=True):
    bid_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    price: Annotated[float, msgspec.Meta(ge=0)]  # clearing CPM in the bid's currency
    cur: Annotated[str, msgspec.Meta(min_length=3, max_length=3)] | None = None


_DECODER: Final = msgspec.json.Decoder(WinNotice)
# WinNotice has only scalar fields, so its component schema inlines without dangling $refs.
_NOTICE_SCHEMA: Final[dict[str, Any]] = msgspec.json.schema_components([WinNotice])[1]["WinNotice"]
WIN_RESULT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["bid_id", "duplicate"],
    "properties": {
        "bid_id": {"type": "string"},
        "duplicate": {"type": "boolean"},
        "campaign_id": {"type": "string"},
        "cost_micros": {"type": "integer", "description": "micro-USD this notice charged (0 if duplicate)"},
    },
}


def decode_win_notice(body: bytes) -> WinNotice:
    try:
        notice = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise from_validation_error(exc) from exc
    except msgspec.DecodeError as exc:
        raise MalformedRequest("malformed_json", f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise MalformedRequest("malformed_json", "body is nested too deeply") from exc
    if not math.isfinite(notice.price):
        raise InvalidRequest("invalid_value", "price must be a finite number", "price")
    return notice


@router.post(
    "/v1/events/win",
    summary="Win notice: bill the clearing price of a returned bid, once per bid id",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _NOTICE_SCHEMA}}}
    },
    responses={
        200: json_content(WIN_RESULT_SCHEMA, "Recorded, or a duplicate of a notice already recorded"),
        400: error("Malformed JSON, a wrong type or a missing field"),
        403: error("signed_notice_required: a catalog bid, billed only through its signed notice URLs"),
        404: error("unknown_bid: no such bid, or its record expired"),
        422: error("Clearing price above the bid price, another currency, a negative price"),
        501: error("The embedded store backend records no bids"),
        503: error("Redis unavailable: retry later"),
    },
)
async def win(request: Request) -> Response:
    notice = decode_win_notice(await request.body())
    ledger: CampaignLedger | None = getattr(request.app.state.services, "ledger", None)
    if ledger is None:
        return error_response(
            501,
            "win_notices_disabled",
            "win notices need store_backend=redis (the embedded store keeps no bids)",
        )
    if signed_notices_only(notice.bid_id):
        return error_response(
            403,
            "signed_notice_required",
            f"bid {notice.bid_id!r} was made for an exchange: only its signed burl/nurl bills it",
            "bid_id",
        )
    # Not on a bid's clock: billing had rather wait than fail, up to the ledger's own (configured) cap.
    deadline = time.monotonic() + ledger.timeout_s
    result = await ledger.record_win(notice.bid_id, notice.price, notice.cur, deadline)
    count_impression(request, result)
    return win_answer(result, notice.price, notice.cur)


def count_impression(request: Request, result: WinResult) -> None:
    """A win recorded now is an impression of the model version that priced it (live calibration); this
    route and the signed bill/win notice URLs both bill, so both count here."""
    calibration: CalibrationMetrics | None = getattr(request.app.state.services, "calibration", None)
    if result.outcome is WinOutcome.RECORDED and result.attribution is not None and calibration is not None:
        calibration.on_impression(result.attribution, result.cost_micros)


def win_answer(result: WinResult, price: float, cur: str | None, bid_field: str = "bid_id") -> Response:
    """The HTTP answer for a billing attempt (this route and the signed bill/win notice URLs, whose bid id
    travels in `bid_field`)."""
    if result.outcome is WinOutcome.UNKNOWN_BID:
        return error_response(404, "unknown_bid", f"bid {result.bid_id!r} is unknown or expired", bid_field)
    if result.outcome is WinOutcome.ABOVE_BID_PRICE:
        return error_response(
            422,
            "price_above_bid",
            f"clearing price {price} is above the bid price {result.bid_price}",
            "price",
        )
    if result.outcome is WinOutcome.CURRENCY_MISMATCH:
        return error_response(
            422,
            "currency_mismatch",
            f"the bid was priced in {result.currency}, the notice says {cur}",
            "cur",
        )
    body = {
        "bid_id": result.bid_id,
        "duplicate": result.outcome is WinOutcome.DUPLICATE,
        "campaign_id": result.campaign_id,
        "cost_micros": result.cost_micros,
    }
    return Response(orjson.dumps(body), media_type="application/json")
