"""HttpMetrics: the bid endpoint and the instrumentator's middleware record into the same families."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from gateway.observability.metrics import HttpMetrics, instrument_http


def _count(registry: CollectorRegistry, handler: str, method: str, status: str) -> float:
    labels = {"handler": handler, "method": method, "status": status}
    return registry.get_sample_value("http_requests_total", labels) or 0.0


async def test_fastapi_routes_and_direct_records_share_one_family() -> None:
    registry = CollectorRegistry()
    app = FastAPI()
    metrics = instrument_http(app, registry)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404  # untemplated: not recorded
    metrics.record("/v1/bid", "POST", "2xx", 0.003)
    assert _count(registry, "/healthz", "GET", "2xx") == 1
    assert _count(registry, "/v1/bid", "POST", "2xx") == 1
    buckets = {"handler": "/v1/bid", "method": "POST", "status": "2xx", "le": "0.005"}
    assert registry.get_sample_value("http_request_duration_seconds_bucket", buckets) == 1
    assert len(list(registry.collect())) == 2  # nothing else registered: no second family


def test_many_label_sets_are_all_counted_beyond_the_cache() -> None:
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    for i in range(300):
        metrics.record("/v1/bid", f"M{i}", "4xx", 0.001)
        metrics.record("/v1/bid", f"M{i}", "4xx", 0.001)
    assert sum(_count(registry, "/v1/bid", f"M{i}", "4xx") for i in range(300)) == 600
