"""GET and POST /v1/notices/{win,bill,loss}: the signed notice URLs a catalog bid carries (nurl, burl, lurl).

Every field travels in the query string (a POST body, if any, is ignored: exchanges send the same URL
either way, and may send it twice). The checks run in this order (gateway.notices.checks):

  400 malformed_query / missing_field / unsubstituted_macro   the URL is not one an exchange filled in
  403 forged_notice                                           unknown key, bad signature, altered field,
                                                              another kind's URL, currency, expired
  422 invalid_value / price_above_bid                         price not a finite number >= 0, or above
                                                              the signed bid price; a loss reason not an int
then the ledger, exactly as POST /v1/events/win:
  bill (and win when bill_on=nurl)  200 {bid_id, duplicate, campaign_id, cost_micros}; 404 unknown_bid;
                                    422 currency_mismatch
  win when bill_on=burl             200 {bid_id, recorded: false}: nothing recorded (the burl bills)
  loss                              200 {bid_id, duplicate, campaign_id, reason, released_micros};
                                    404 unknown_bid; 409 already_won (the bid was billed)
  501 notices_disabled (embedded backend: no bid records), 503 store_unavailable (Retry-After)
Nothing is charged unless every check passed. Every notice is counted by kind and result; forged ones are
logged at warning with the failing check, rate-limited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from gateway.api.errors import error_response
from gateway.api.events import WIN_RESULT_SCHEMA, count_impression, win_answer
from gateway.api.openapi import error, json_content
from gateway.errors import BadRequest, ForgedNotice, StoreError
from gateway.notices.checks import CheckedNotice, check_notice, required_fields
from gateway.notices.keyring import NoticeKeyring
from gateway.notices.signing import MACROS, NOTICE_PATH, NoticeKind
from gateway.observability.metrics import NoticeMetrics
from gateway.observability.rate_limited import RateLimitedLog
from gateway.stores.campaigns import CampaignLedger, LossOutcome, WinOutcome

__all__ = ["NoticeService", "install", "notice_router"]

log = logging.getLogger(__name__)

# Refusal code -> the metric's result label.
_RESULT_BY_CODE: Final = {
    "unsubstituted_macro": "unsubstituted_macro",
    "price_above_bid": "price_above_bid",
    "forged_notice": "forged",
}
_WIN_RESULTS: Final = {
    WinOutcome.RECORDED: "recorded",
    WinOutcome.DUPLICATE: "duplicate",
    WinOutcome.UNKNOWN_BID: "unknown_bid",
    WinOutcome.ABOVE_BID_PRICE: "price_above_bid",
    WinOutcome.CURRENCY_MISMATCH: "currency_mismatch",
}


@dataclass(slots=True)
class NoticeService:
    """What the notice routes need, built once per app (`app.state.notices`)."""

    keyring: NoticeKeyring
    bill_on: Literal["burl", "nurl"]
    metrics: NoticeMetrics
    forged_log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))
    clock: Callable[[], float] = time.time  # wall time: URL expiry is epoch seconds


def _refusal_result(exc: BadRequest) -> str:
    if exc.code in _RESULT_BY_CODE:
        return _RESULT_BY_CODE[exc.code]
    if exc.code == "invalid_value":
        return "invalid_reason" if exc.field == "loss" else "invalid_price"
    return "malformed"


def _ledger(request: Request) -> CampaignLedger | None:
    services = getattr(request.app.state, "services", None)
    ledger: CampaignLedger | None = getattr(services, "ledger", None)
    return ledger


async def _handle(kind: NoticeKind, request: Request) -> Response:
    notices: NoticeService = request.app.state.notices
    try:
        checked = check_notice(kind, request.scope.get("query_string", b""), notices.keyring, notices.clock())
    except ForgedNotice as exc:
        notices.metrics.count(kind.value, "forged")
        notices.forged_log.warning(
            "forged %s notice refused: %s",
            kind.value,
            exc.check,
            extra={"check": exc.check, "detail": exc.message},
        )
        return error_response(exc.status_code, exc.code, exc.message, exc.field)
    except BadRequest as exc:
        notices.metrics.count(kind.value, _refusal_result(exc))
        return error_response(exc.status_code, exc.code, exc.message, exc.field)
    # Only the configured kind bills; the other is acknowledged, so an exchange firing both (and a markup
    # tracker) cannot bill through the kind nobody agreed to bill on.
    if (kind is NoticeKind.WIN and notices.bill_on == "burl") or (
        kind is NoticeKind.BILL and notices.bill_on == "nurl"
    ):
        notices.metrics.count(kind.value, "acknowledged")
        return _json({"bid_id": checked.bid_id, "recorded": False})
    ledger = _ledger(request)
    if ledger is None:
        notices.metrics.count(kind.value, "disabled")
        return error_response(
            501, "notices_disabled", "notices need store_backend=redis (the embedded store keeps no bids)"
        )
    try:
        if kind is NoticeKind.LOSS:
            return await _loss(notices, ledger, checked)
        return await _bill(request, notices, ledger, checked)
    except StoreError:
        notices.metrics.count(kind.value, "store_unavailable")
        raise  # gateway.api.errors: 503 store_unavailable with Retry-After; the exchange retries


async def _bill(
    request: Request, notices: NoticeService, ledger: CampaignLedger, checked: CheckedNotice
) -> Response:
    assert checked.price is not None  # check_notice sets it for win and bill
    # Not on a bid's clock: billing had rather wait than fail, up to the ledger's own (configured) cap.
    deadline = time.monotonic() + ledger.timeout_s
    result = await ledger.record_win(checked.bid_id, checked.price, checked.currency, deadline)
    notices.metrics.count(checked.kind.value, _WIN_RESULTS[result.outcome])
    count_impression(request, result)
    return win_answer(result, checked.price, checked.currency, bid_field="bid")


async def _loss(notices: NoticeService, ledger: CampaignLedger, checked: CheckedNotice) -> Response:
    assert checked.loss_reason is not None  # check_notice sets it for loss
    deadline = time.monotonic() + ledger.timeout_s
    result = await ledger.record_loss(checked.bid_id, checked.loss_reason, deadline)
    notices.metrics.count(checked.kind.value, result.outcome.value)
    if result.outcome is LossOutcome.UNKNOWN_BID:
        return error_response(404, "unknown_bid", f"bid {checked.bid_id!r} is unknown or expired", "bid")
    if result.outcome is LossOutcome.ALREADY_WON:
        return error_response(409, "already_won", f"bid {checked.bid_id!r} was billed: it cannot lose", "bid")
    if result.outcome is LossOutcome.RECORDED:
        notices.metrics.loss(checked.loss_reason)
    return _json(
        {
            "bid_id": checked.bid_id,
            "duplicate": result.outcome is LossOutcome.DUPLICATE,
            "campaign_id": result.campaign_id,
            "reason": checked.loss_reason,
            "released_micros": result.released_micros,
        }
    )


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


# ------------------------------------------------------------------------------------------------ OpenAPI

_LOSS_RESULT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["bid_id", "duplicate", "reason"],
    "properties": {
        "bid_id": {"type": "string"},
        "duplicate": {"type": "boolean"},
        "campaign_id": {"type": "string"},
        "reason": {"type": "integer", "description": "OpenRTB 2.6 loss reason code (${AUCTION_LOSS})"},
        "released_micros": {"type": "integer", "description": "budget hold released, micro-USD"},
    },
}
_ACK_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["bid_id", "recorded"],
    "properties": {"bid_id": {"type": "string"}, "recorded": {"type": "boolean"}},
}
_PARAMETER_DOCS: Final = {
    "bid": "our bid id (Bid.id)",
    "c": "campaign id",
    "bp": "bid price, in bc",
    "bc": "bid currency",
    "exp": "expiry, epoch seconds",
    "kid": "signing key id",
    "sig": "HMAC-SHA256 signature, base64url",
}


def _parameters(kind: NoticeKind) -> list[dict[str, Any]]:
    def describe(name: str) -> str:
        return f"substituted {MACROS[name]}" if name in MACROS else _PARAMETER_DOCS[name]

    return [
        {
            "name": name,
            "in": "query",
            "required": True,
            "description": describe(name),
            "schema": {"type": "string"},
        }
        for name in required_fields(kind)
    ]


def _responses(kind: NoticeKind) -> dict[int | str, dict[str, Any]]:
    if kind is NoticeKind.LOSS:
        ok = json_content(_LOSS_RESULT_SCHEMA, "Loss recorded (its hold released), or a duplicate")
    elif kind is NoticeKind.WIN:
        ok = json_content(
            {"oneOf": [WIN_RESULT_SCHEMA, _ACK_SCHEMA]},
            "bill_on=nurl: billed or a duplicate; bill_on=burl: acknowledged, nothing recorded",
        )
    else:
        ok = json_content(WIN_RESULT_SCHEMA, "Billed, or a duplicate of a notice already billed")
    responses: dict[int | str, dict[str, Any]] = {
        200: ok,
        400: error("malformed_query, missing_field, or unsubstituted_macro: a macro the exchange left as is"),
        403: error("forged_notice: unknown key, signature mismatch (an altered field, another kind's or "
                   "bid's URL), currency other than the bid's, or expired; nothing charged"),
        404: error("unknown_bid: no such bid, or its record expired"),
        422: error("invalid_value (price not a finite number >= 0, loss reason not an integer), "
                   "price_above_bid, currency_mismatch"),
        501: error("notices_disabled: the embedded store backend records no bids"),
        503: error("Redis unavailable: retry later"),
    }  # fmt: skip
    if kind is NoticeKind.LOSS:
        responses[409] = error("already_won: the bid was billed, a loss cannot undo that")
    return responses


_SUMMARIES: Final = {
    NoticeKind.WIN: "Win notice (nurl): bills when bill_on=nurl, else acknowledged",
    NoticeKind.BILL: "Billing notice (burl): bills once per bid when bill_on=burl (the default)",
    NoticeKind.LOSS: "Loss notice (lurl): record the loss reason once per bid and release its budget hold",
}


def _endpoint(kind: NoticeKind) -> Callable[[Request], Awaitable[Response]]:
    async def notice(request: Request) -> Response:
        return await _handle(kind, request)

    return notice


def notice_router() -> APIRouter:
    """GET and POST for each kind, each its own OpenAPI operation."""
    router = APIRouter()
    for kind in NoticeKind:
        for method in ("GET", "POST"):
            router.add_api_route(
                f"{NOTICE_PATH}/{kind.value}",
                _endpoint(kind),
                methods=[method],
                name=f"{kind.value}_notice_{method.lower()}",
                summary=_SUMMARIES[kind],
                responses=_responses(kind),
                openapi_extra={"parameters": _parameters(kind)},
            )
    return router


def install(app: FastAPI, service: NoticeService) -> None:
    """Mount the notice routes on `app`, with the service they use."""
    app.state.notices = service
    app.include_router(notice_router())
