"""Structured JSON logs: one object per line, every line of a request carrying its request id.

* `RequestIdMiddleware` takes `X-Request-ID` from the request when it is a sane token (else makes one),
  puts it in a context variable for every log line of that request, and echoes it in the response.
* `BidLog` writes the one line per bid: every bid when the `gateway.bids` logger is at DEBUG, a random
  `sample_rate` share of bids at INFO (a 1,000 bid/s worker would otherwise write 1,000 lines/s).
* `logging_config()` is the dictConfig uvicorn applies in each worker process (`log_config=`).
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Iterable, MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.pipeline import Decision

REQUEST_ID_HEADER: Final = "x-request-id"
REQUEST_ID_HEADER_BYTES: Final = REQUEST_ID_HEADER.encode()
# A caller's id is logged and echoed verbatim, so only a short token is accepted (no log injection).
_VALID_ID: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
BID_LOGGER: Final = "gateway.bids"

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return request_id_var.get()


class RequestIdMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware task hop): a header scan and one context-variable set per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id(scope["headers"])
        header = (REQUEST_ID_HEADER_BYTES, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def new_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID when it is a sane token, else 128 random bits as hex."""
    return _incoming_request_id(headers) or os.urandom(16).hex()


def _incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == REQUEST_ID_HEADER_BYTES:
            return value.decode("latin-1") if _VALID_ID.fullmatch(value) else None
    return None


# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName", "color_message"}  # color_message: uvicorn's ANSI duplicate of msg
)


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", "request_id"?, ...extra fields, "exc"?} as one orjson line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class BidLog:
    """The per-bid line: all bids at DEBUG, `sample_rate` of them at INFO, none above."""

    def __init__(self, sample_rate: float, logger: logging.Logger | None = None) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        self.sample_rate = sample_rate
        self._log = logger or logging.getLogger(BID_LOGGER)

    def decided(self, decision: Decision, total_s: float) -> None:
        log = self._log
        if log.isEnabledFor(logging.DEBUG):
            level = logging.DEBUG
        elif self.sample_rate > 0 and log.isEnabledFor(logging.INFO) and random.random() < self.sample_rate:
            level = logging.INFO
        else:
            return
        response = decision.response
        log.log(
            level,
            "bid %s",
            decision.outcome,
            extra={
                "openrtb_id": response.id,
                "outcome": decision.outcome,
                "nbr": response.nbr,
                "degraded": decision.degraded,
                "candidates": decision.candidates,
                "wins": len(decision.wins),
                "price_usd": [round(win.price_usd, 6) for win in decision.wins],
                "timings_ms": {stage: round(ms, 3) for stage, ms in decision.timings_ms.items()},
                "total_ms": round(total_s * 1000.0, 3),
            },
        )


def logging_config(
    level: Literal["debug", "info", "warning", "error"], log_format: Literal["json", "text"]
) -> dict[str, Any]:
    """dictConfig for the gateway's and uvicorn's loggers (uvicorn applies it in every worker)."""
    formatter: MutableMapping[str, Any] = (
        {"()": f"{JsonFormatter.__module__}.{JsonFormatter.__qualname__}"}
        if log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "gateway": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
    }
