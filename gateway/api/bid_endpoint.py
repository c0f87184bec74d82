"""POST /v1/bid as a raw ASGI endpoint, dispatched before FastAPI's routing and middleware.

Why: profiled at 50 candidates, FastAPI's Request/Response objects, routing and its middleware stack
(server errors, telemetry, body limit, request id, the instrumentator) cost about 180 us of CPU per bid,
more than the whole data plane now costs. So this endpoint does, for the one hot route, exactly what
those layers did for it and nothing else:
  * X-Request-ID in (when it is a sane token) and out, set for every log line of the bid;
  * `http_requests_total` / `http_request_duration_seconds` with handler="/v1/bid", in the families the
    instrumentator's middleware records every other route into (`HttpMetrics`): dashboards and SLO rules
    are unchanged;
  * the body limit: a declared Content-Length over it is refused before reading, a chunked body as soon
    as it passes it;
  * admission control: 503 overloaded (Retry-After) before the body is read, on the bids-in-flight
    limit or on a standing queue in the event loop (`gateway.api.admission`, whose lag also shortens the
    budget). The limit is learnt (`bid_concurrency_mode=adaptive`, `gateway.api.bid_limit`) from each
    bid's latency from its estimated arrival: when this worker's CPU saturates, every bid in flight
    shares the one event loop, so latency grows with the bids admitted; the limit falls until it does
    not, and the excess gets a 503 costing a fraction of a bid, instead of a queue that makes every
    admitted bid late;
  * every failure as the one JSON error shape (`gateway.api.errors`); an unexpected exception is logged
    with its traceback and answered 500 internal_error, never a bare text 500.
Every other route (and any other method on this path: 405) still goes through FastAPI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from starlette.types import Receive, Scope, Send

from gateway.api.decode import decode_bid_request
from gateway.api.errors import RETRY_AFTER_S, ErrorAnswer, answer_for, error_body
from gateway.errors import GatewayError, Overloaded, RequestTooLarge
from gateway.observability.logging import REQUEST_ID_HEADER_BYTES, new_request_id, request_id_var
from gateway.observability.metrics import HttpMetrics
from gateway.openrtb import BidRequest, encode_response
from gateway.services import Services

log = logging.getLogger(__name__)

BID_PATH: Final = "/v1/bid"
NO_CONTENT: Final = 204
_CONTENT_TYPE: Final = (b"content-type", b"application/json")
_RETRY_AFTER: Final = (b"retry-after", RETRY_AFTER_S.encode())
_CONTENT_LENGTH: Final = b"content-length"
# Statuses grouped as the instrumentator groups them (its should_group_status_codes).
_STATUS_GROUPS: Final = tuple(f"{hundreds}xx" for hundreds in range(6))


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is nobody to answer."""


class BidEndpoint:
    """The ASGI callable for POST /v1/bid; `services()` is None until the app's lifespan has started."""

    def __init__(self, services: Callable[[], Services | None], http_metrics: HttpMetrics) -> None:
        self._services = services
        self._http_metrics = http_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        received_at = time.monotonic()
        request_id = new_request_id(scope["headers"])
        token = request_id_var.set(request_id)
        try:
            try:
                status, body, retry = await self._answer(scope, receive, received_at)
            except ClientGone:
                return
            headers = [
                (_CONTENT_LENGTH, str(len(body)).encode()),
                (REQUEST_ID_HEADER_BYTES, request_id.encode("latin-1")),
            ]
            if status != NO_CONTENT:
                headers.append(_CONTENT_TYPE)
            if retry:
                headers.append(_RETRY_AFTER)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            self._http_metrics.record(
                BID_PATH, "POST", _STATUS_GROUPS[status // 100], time.monotonic() - received_at
            )
        finally:
            request_id_var.reset(token)

    async def _answer(self, scope: Scope, receive: Receive, received_at: float) -> tuple[int, bytes, bool]:
        """(status, body, whether to send Retry-After)."""
        services = self._services()
        if services is None:
            return 503, error_body("not_ready", "the gateway is still starting"), True
        try:
            return *await self._bid(services, scope, receive, received_at), False
        except ClientGone:
            raise
        except GatewayError as exc:
            answer = answer_for(exc)
        except Exception:  # a bug: logged, and still answered in the API's error shape
            log.exception("bid failed")
            answer = ErrorAnswer(500, error_body("internal_error", "internal error (see the gateway log)"))
        return answer.status, answer.body, answer.retry_after

    async def _bid(
        self, services: Services, scope: Scope, receive: Receive, received_at: float
    ) -> tuple[int, bytes]:
        """(status, body): 200 and the BidResponse, or 204 and no body for a plain request's no-bid."""
        limit = services.limits.max_body_bytes
        declared = _declared_length(scope["headers"])
        if declared is not None and declared > limit:
            # Refuse before reading a body we will not accept.
            raise RequestTooLarge("body_too_large", f"body is {declared} bytes; the limit is {limit}")
        concurrency_limit = services.bid_concurrency_limit
        if services.inflight_bids >= concurrency_limit:
            # Shed before reading the body: a fast 503 lets the caller try another replica within its tmax,
            # while queueing here would make every admitted bid late too.
            services.shed_bids += 1
            raise Overloaded(
                f"{services.inflight_bids} bids in flight in this worker (limit {concurrency_limit})"
            )
        admission = services.admission
        if not admission.admit():
            # The CPU is the bottleneck (the loop itself is queueing): a 503 is the cheapest answer.
            services.shed_bids += 1
            raise Overloaded(
                f"event loop {admission.stats.lag_s * 1000:.1f} ms behind for over "
                f"{admission.interval_s * 1000:.0f} ms: this worker's CPU is saturated"
            )
        # The budget runs from when the bid most likely arrived, not from when this code first saw it.
        arrived_at = admission.arrival_estimate(
            received_at, scope["headers"] if services.trust_request_start else None
        )
        services.inflight_bids += 1
        inflight = services.inflight_bids
        try:
            body = await _read_body(receive, limit)
            bid_request = decode_bid_request(body, services.limits)
            timings = {"decode": (time.monotonic() - received_at) * 1000.0}
            decision = await services.pipeline.decide(bid_request, arrived_at, timings)
        finally:
            services.inflight_bids -= 1
        encode_at = time.monotonic()
        if services.bid_limit is not None and not decision.degraded:
            # Latency from the estimated arrival: the wait in the loop is the queue this limit must see.
            # Its rows are the candidates ranked, so a bigger bid is not read as congestion. Bids scored on
            # priors (Triton failing) are left out: several times faster than a model's, they would set a
            # baseline that every model-scored bid exceeds once Triton is back.
            services.bid_limit.on_done(encode_at - arrived_at, decision.candidates, inflight)
        encoded = encode_response(decision.response)
        done_at = time.monotonic()
        services.tally.record(decision, done_at - encode_at)
        services.bid_log.decided(decision, done_at - received_at)
        if services.plain_nobid_status == NO_CONTENT and not decision.wins and _is_plain(bid_request):
            return NO_CONTENT, b""  # an exchange's usual no-bid: nothing to parse
        return 200, encoded


def _is_plain(request: BidRequest) -> bool:
    """An exchange's request: no `ext.candidates`, the catalog chose what to rank."""
    return request.ext is None or not request.ext.candidates


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == _CONTENT_LENGTH:
            return int(value) if value.isdigit() else None
    return None


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` (a chunked body declares no length)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge("body_too_large", f"body is over {limit} bytes; the limit is {limit}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
