"""Gateway exceptions -> HTTP, in one table. Every error body is {"error": {"code", "message", "field"}}."""

from __future__ import annotations

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


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message, "field": field}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _bad_request(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return error_response(exc.status_code, exc.code, exc.message, exc.field)


async def _upstream(_request: Request, exc: Exception) -> Response:
    status, code = next(
        (entry for kind, entry in _UPSTREAM.items() if isinstance(exc, kind)), (500, "internal_error")
    )
    headers = {"Retry-After": "1"} if status == 503 else None
    return error_response(status, code, str(exc), headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(BadRequest, _bad_request)
    app.add_exception_handler(GatewayError, _upstream)
