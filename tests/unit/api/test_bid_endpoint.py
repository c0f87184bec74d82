"""BidEndpoint on its own: the answers it owns besides a decision (not ready, a bug, a client gone, the
Content-Length refusal) and the HTTP metrics and request id every answer carries. The pipeline is a stub:
end to end, the endpoint is tested against the real Triton in tests/integration/test_bid_api.py."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any, cast

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.api.bid_endpoint import BID_PATH, BidEndpoint
from gateway.api.bid_limit import BidConcurrencyLimit
from gateway.api.decode import RequestLimits
from gateway.core.pipeline import BidPipeline, Decision
from gateway.core.ports import FeatureStore, Scorer
from gateway.observability.metrics import HttpMetrics
from gateway.openrtb import BidRequest, BidResponse
from gateway.services import Services

Message = dict[str, Any]
BODY = orjson.dumps({"id": "r1", "imp": [{"id": "1"}], "ext": {"candidates": [
    {"id": "ad-1", "campaign_id": "c", "advertiser": "a.com", "bid_type": "cpm", "bid": 1.0}
]}})  # fmt: skip


class _Pipeline:
    """Answers a fixed no-bid, or raises what it is given."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.seen: list[BidRequest] = []

    async def decide(self, request: BidRequest, received_at: float, timings: dict[str, float]) -> Decision:
        self.seen.append(request)
        if self.error is not None:
            raise self.error
        return Decision(response=BidResponse(id=request.id, seatbid=[], nbr=501), outcome="nobid_501")


def _services(pipeline: _Pipeline, max_inflight: int = 4) -> Services:
    return Services(
        limits=RequestLimits(known_currencies=frozenset({"USD"}), max_body_bytes=4096),
        store=cast(FeatureStore, None),
        scorer=cast(Scorer, None),
        pipeline=cast(BidPipeline, pipeline),
        max_inflight_bids=max_inflight,
    )


def _scope(headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": BID_PATH,
        "headers": headers if headers is not None else [(b"content-type", b"application/json")],
        "query_string": b"",
    }


async def _exchange(
    endpoint: BidEndpoint, messages: list[Message], headers: list[tuple[bytes, bytes]] | None = None
) -> list[Message]:
    """What the endpoint sends for one request whose body arrives as `messages`."""
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await endpoint(_scope(headers), receive, send)
    return sent


def _call(
    endpoint: BidEndpoint, messages: list[Message], headers: list[tuple[bytes, bytes]] | None = None
) -> list[Message]:
    return asyncio.run(_exchange(endpoint, messages, headers))


def _body(message_body: bytes = BODY, *, more: bool = False) -> Message:
    return {"type": "http.request", "body": message_body, "more_body": more}


def _status_and_json(sent: list[Message]) -> tuple[int, dict[str, Any], dict[bytes, bytes]]:
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    return sent[0]["status"], orjson.loads(sent[1]["body"]), dict(sent[0]["headers"])


def _requests_total(registry: CollectorRegistry, status: str) -> float:
    value = registry.get_sample_value(
        "http_requests_total", {"handler": BID_PATH, "method": "POST", "status": status}
    )
    return value or 0.0


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_a_decision_is_answered_with_metrics_and_a_request_id(registry: CollectorRegistry) -> None:
    pipeline = _Pipeline()
    endpoint = BidEndpoint(lambda: _services(pipeline), HttpMetrics(registry))
    status, body, headers = _status_and_json(
        _call(endpoint, [_body(BODY[:10], more=True), _body(BODY[10:])], [(b"x-request-id", b"bidder-1")])
    )
    assert (status, body["id"], body["nbr"]) == (200, "r1", 501)
    assert headers[b"x-request-id"] == b"bidder-1"
    assert headers[b"content-length"] == str(len(orjson.dumps(body))).encode()
    assert [r.id for r in pipeline.seen] == ["r1"]  # the chunks were joined
    assert _requests_total(registry, "2xx") == 1
    duration = {"handler": BID_PATH, "method": "POST", "status": "2xx"}
    assert registry.get_sample_value("http_request_duration_seconds_count", duration) == 1


def test_before_the_lifespan_started_it_answers_503_not_ready(registry: CollectorRegistry) -> None:
    status, body, headers = _status_and_json(
        _call(BidEndpoint(lambda: None, HttpMetrics(registry)), [_body()])
    )
    assert (status, body["error"]["code"], headers[b"retry-after"]) == (503, "not_ready", b"1")
    assert _requests_total(registry, "5xx") == 1


def test_a_bug_is_logged_and_answered_500_in_the_error_shape(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    services = _services(_Pipeline(KeyError("boom")))
    status, body, _ = _status_and_json(_call(BidEndpoint(lambda: services, HttpMetrics(registry)), [_body()]))
    assert (status, body["error"]["code"]) == (500, "internal_error")
    assert "KeyError: 'boom'" in caplog.text
    assert services.inflight_bids == 0  # released on the way out
    assert _requests_total(registry, "5xx") == 1


def test_a_declared_oversized_body_is_refused_unread(registry: CollectorRegistry) -> None:
    pipeline = _Pipeline()
    messages = [_body()]
    sent = _call(
        BidEndpoint(lambda: _services(pipeline), HttpMetrics(registry)),
        messages,
        [(b"content-length", b"5000")],
    )
    status, body, _ = _status_and_json(sent)
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    assert messages == [_body()]  # never read
    assert _requests_total(registry, "4xx") == 1


def test_a_client_gone_before_its_body_gets_no_answer(registry: CollectorRegistry) -> None:
    services = _services(_Pipeline())
    sent = _call(
        BidEndpoint(lambda: services, HttpMetrics(registry)),
        [_body(b"{", more=True), {"type": "http.disconnect"}],
    )
    assert sent == []
    assert services.inflight_bids == 0
    assert _requests_total(registry, "2xx") + _requests_total(registry, "5xx") == 0


def test_over_the_inflight_limit_it_sheds_before_reading(registry: CollectorRegistry) -> None:
    services = _services(_Pipeline(), max_inflight=1)
    services.inflight_bids = 1
    messages = [_body()]
    status, body, headers = _status_and_json(
        _call(BidEndpoint(lambda: services, HttpMetrics(registry)), messages)
    )
    assert (status, body["error"]["code"], headers[b"retry-after"]) == (503, "overloaded", b"1")
    assert (services.shed_bids, len(messages)) == (1, 1)


class _SharedCpuPipeline(_Pipeline):
    """A worker whose bids share one CPU: every bid takes `per_bid_s` for each bid in flight beside it."""

    def __init__(self, per_bid_s: float) -> None:
        super().__init__()
        self.per_bid_s = per_bid_s
        self.inflight = 0

    async def decide(self, request: BidRequest, received_at: float, timings: dict[str, float]) -> Decision:
        self.inflight += 1
        try:
            await asyncio.sleep(0)  # the rest of a simultaneous wave comes in
            await asyncio.sleep(self.per_bid_s * self.inflight)
            return await super().decide(request, received_at, timings)
        finally:
            self.inflight -= 1


def _waves(endpoint: BidEndpoint, count: int, size: int = 48) -> list[list[int]]:
    """Statuses of `count` waves of `size` simultaneous bids, one wave after the other."""

    async def one() -> int:
        return int((await _exchange(endpoint, [_body()]))[0]["status"])

    async def waves() -> list[list[int]]:
        return [list(await asyncio.gather(*(one() for _ in range(size)))) for _ in range(count)]

    return asyncio.run(waves())


def test_a_learnt_limit_sheds_the_bids_that_would_only_queue(registry: CollectorRegistry) -> None:
    """Bids one at a time (the no-load baseline), then waves of 48 simultaneous ones under a ceiling of 64:
    low use has brought the limit to its burst floor (16), so the first wave admits 16; those all queue,
    so the limit falls to a few and later waves get 503s beyond it."""
    services = _services(_SharedCpuPipeline(per_bid_s=0.0005), max_inflight=64)
    services.bid_limit = BidConcurrencyLimit(min_limit=2, max_limit=64, burst=16, interval_s=0.001)
    endpoint = BidEndpoint(lambda: services, HttpMetrics(registry))
    assert _waves(endpoint, 5, size=1) == [[200]] * 5
    statuses = _waves(endpoint, 6)
    assert statuses[0].count(200) == 16
    assert services.bid_concurrency_limit <= 4
    assert set(statuses[-1]) == {200, 503}
    assert statuses[-1].count(200) <= 4  # the limit when the wave arrived (all arrive before one is done)
    assert services.inflight_bids == 0


class _DegradedPipeline(_Pipeline):
    async def decide(self, request: BidRequest, received_at: float, timings: dict[str, float]) -> Decision:
        decision = await super().decide(request, received_at, timings)
        decision.degraded = True
        return decision


class _LimitSpy(BidConcurrencyLimit):
    def __init__(self) -> None:
        super().__init__()
        self.samples: list[tuple[float, int, int]] = []

    def on_done(self, latency_s: float, rows: int, inflight: int) -> int:
        self.samples.append((latency_s, rows, inflight))
        return super().on_done(latency_s, rows, inflight)


@pytest.mark.parametrize(("pipeline", "fed"), [(_Pipeline(), 1), (_DegradedPipeline(), 0)])
def test_model_scored_bids_feed_the_limit_and_bids_on_priors_do_not(
    registry: CollectorRegistry, pipeline: _Pipeline, fed: int
) -> None:
    services = _services(pipeline)
    spy = _LimitSpy()
    services.bid_limit = spy
    status, _, _ = _status_and_json(_call(BidEndpoint(lambda: services, HttpMetrics(registry)), [_body()]))
    assert status == 200
    assert len(spy.samples) == fed
    if fed:
        latency, rows, inflight = spy.samples[0]
        assert (rows, inflight) == (0, 1)  # the stub ranked nothing; it was alone
        assert 0 < latency < 1


def test_a_fixed_limit_admits_everything_under_its_ceiling(registry: CollectorRegistry) -> None:
    """The same waves without a learnt limit: all admitted, however late (what `fixed` means)."""
    services = _services(_SharedCpuPipeline(per_bid_s=0.0005), max_inflight=64)
    assert _waves(BidEndpoint(lambda: services, HttpMetrics(registry)), 6) == [[200] * 48] * 6


PLAIN_BODY = orjson.dumps({"id": "r2", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]})


def _plain_services(pipeline: _Pipeline, plain_nobid_status: int) -> Services:
    services = _services(pipeline)
    services.limits = RequestLimits(
        known_currencies=frozenset({"USD"}), max_body_bytes=4096, candidates_required=False
    )
    services.plain_nobid_status = plain_nobid_status
    return services


def test_a_plain_requests_no_bid_is_204_without_a_body(registry: CollectorRegistry) -> None:
    endpoint = BidEndpoint(lambda: _plain_services(_Pipeline(), 204), HttpMetrics(registry))
    sent = _call(endpoint, [_body(PLAIN_BODY)])
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 204
    assert sent[1]["body"] == b""
    headers = dict(sent[0]["headers"])
    assert headers[b"content-length"] == b"0"
    assert b"content-type" not in headers
    assert _requests_total(registry, "2xx") == 1


def test_a_plain_requests_no_bid_can_be_200_with_nbr(registry: CollectorRegistry) -> None:
    endpoint = BidEndpoint(lambda: _plain_services(_Pipeline(), 200), HttpMetrics(registry))
    status, body, _ = _status_and_json(_call(endpoint, [_body(PLAIN_BODY)]))
    assert (status, body["nbr"], body["seatbid"]) == (200, 501, [])


def test_a_no_bid_to_a_request_with_candidates_stays_200_with_nbr(registry: CollectorRegistry) -> None:
    endpoint = BidEndpoint(lambda: _plain_services(_Pipeline(), 204), HttpMetrics(registry))
    status, body, _ = _status_and_json(_call(endpoint, [_body(BODY)]))
    assert (status, body["nbr"]) == (200, 501)
