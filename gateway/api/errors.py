"""Gateway exceptions -> HTTP, in one table. Every error body is {"error": {"code", "message", "field"}}.

Two consumers: FastAPI's exception handlers (every route but the bid endpoint) and the raw ASGI bid
endpoint (`gateway.api.bid_endpoint`), which sends `ErrorAnswer`s itself."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from gateway.errors import BadRequest, GatewayError, Overloaded, ScoringError, ScoringTimeout, StoreError

# (status, code) for the errors that carry no code of their own. Retry-After tells a well-behaved bidder
# to back off instead of hammering a gateway whose model server is down.
_UPSTREAM: dict[type[GatewayError], tuple[int, str]] = {
    Overloaded: (503, "overloaded"),
    ScoringTimeout: (503, "scoring_timeout"),
    ScoringError: (503, "scoring_unavailable"),
    StoreError: (503, "store_unavailable"),
}
RETRY_AFTER_S = "1"


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """One error response: status, the JSON body, and whether the caller should retry after a pause."""

    status: int
    body: bytes
    retry_after: bool = False

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": RETRY_AFTER_S} if self.retry_after else None


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "field": field}})


def answer_for(exc: GatewayError) -> ErrorAnswer:
    """The HTTP answer for a gateway exception; one the table does not know is a 500 internal_error."""
    if isinstance(exc, BadRequest):
        return ErrorAnswer(exc.status_code, error_body(exc.code, exc.message, exc.field))
    status, code = next(
        (entry for kind, entry in _UPSTREAM.items() if isinstance(exc, kind)), (500, "internal_error")
    )
    return ErrorAnswer(status, error_body(code, str(exc)), retry_after=status == 503)


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(code, message, field), status_code=status, media_type="application/json", headers=headers
    )


async def _gateway_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    answer = answer_for(exc)
    return Response(
        answer.body, status_code=answer.status, media_type="application/json", headers=answer.headers()
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
