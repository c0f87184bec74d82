"""Observability proven on real servers: the gateway with 2 uvicorn workers (multiprocess metrics) in front
of the real local Triton, scraped by a real Prometheus (Debian's `prometheus` package, run by a fixture).

* every PromQL expression of every dashboard panel returns data after a bounded load (GPU-only panels:
  valid PromQL, empty on a CPU Triton);
* `promtool check rules` and `promtool test rules` pass (unit tests for each alert, firing and not);
* metric names and label sets are pinned, so a rename breaks here rather than in a dashboard;
* counters and histograms add up across workers, whichever worker answers the scrape;
* request ids and the JSON bid log line.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import REPO_ROOT, Settings
from gateway.core.eligibility import LossReason
from gateway.core.pipeline import Decision
from gateway.local_triton import LocalTriton, free_port
from gateway.observability.logging import BidLog, JsonFormatter, request_id_var
from gateway.observability.metrics import STAGES
from gateway.openrtb import BidResponse
from tests.integration.bid_requests import ads_with_distinct_advertisers, candidate, site_request
from tests.integration.exchange import bids_of, plain_banner_request, substituted
from tests.integration.gateway_process import GatewayProcess, gateway_process
from tests.integration.gateway_server import serve_in_thread
from tests.integration.redis_server import RedisServer
from tests.integration.test_win_notices import reset

pytestmark = pytest.mark.integration

CHART = REPO_ROOT / "charts" / "bid-gateway"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
RULES = CHART / "rules" / "bid-gateway-rules.yaml"
RULE_TESTS = sorted((CHART / "rules" / "tests").glob("*.yaml"))
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
NO_PROMETHEUS = "Debian's prometheus package is not installed (apt-get install prometheus; `make test` does)"
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason=NO_PROMETHEUS)
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMETHEUS)

# Panels that read metrics only a GPU Triton exports: valid PromQL, but empty on the CPU Triton here.
GPU_ONLY_PANELS = {("bidgw-triton", "GPU utilisation"), ("bidgw-triton", "GPU memory used")}
# Panels on the Redis shards' metrics, exported only with store_backend=redis (this stack is embedded):
# valid PromQL here; test_redis_cluster.py checks that a gateway on a cluster exports what they query.
REDIS_ONLY_PANELS = {
    ("bidgw-overview", "Round trip latency per shard (p50, p99)"),
    ("bidgw-overview", "Round trips per second per shard"),
    ("bidgw-overview", "Failed round trips per shard"),
}
SCRAPE_INTERVAL_S = 1.0
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval); a window that
# spans the whole bounded load is what a dashboard shows right after it.
RATE_INTERVAL = "15s"
LOAD_SECONDS = 6.0
SYNC_INTERVAL_S = 0.2

# name -> (type, label names). Counters without `_total`, as the exposition format names the family.
EXPECTED_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "http_requests": ("counter", frozenset({"handler", "method", "status"})),
    "http_request_duration_seconds": ("histogram", frozenset({"handler", "method", "status"})),
    "bidgw_stage_duration_seconds": ("histogram", frozenset({"stage"})),
    "bidgw_bids": ("counter", frozenset({"outcome", "degraded"})),
    "bidgw_bid_candidates": ("histogram", frozenset()),
    "bidgw_retrieval_matches": ("histogram", frozenset()),
    "bidgw_catalog_version_info": ("gauge", frozenset({"version"})),
    "bidgw_catalog_loaded_timestamp_seconds": ("gauge", frozenset()),
    "bidgw_catalog_creatives": ("gauge", frozenset()),
    "bidgw_catalog_reloads": ("counter", frozenset({"result"})),
    "bidgw_notices": ("counter", frozenset({"kind", "result"})),
    "bidgw_clearing_price_usd": ("histogram", frozenset()),
    "bidgw_win_ecpm_usd": ("histogram", frozenset()),
    "bidgw_candidates_dropped": ("counter", frozenset({"reason"})),
    "bidgw_triton_errors": ("counter", frozenset({"kind"})),
    "bidgw_breaker_state": ("gauge", frozenset()),
    "bidgw_breaker_opens": ("counter", frozenset()),
    "bidgw_triton_servers_healthy": ("gauge", frozenset()),
    "bidgw_triton_servers_ejected": ("gauge", frozenset()),
    "bidgw_triton_ejections": ("counter", frozenset()),
    "bidgw_triton_retries": ("counter", frozenset()),
    "bidgw_triton_resolutions": ("counter", frozenset({"result"})),
    "bidgw_event_loop_lag_seconds": ("gauge", frozenset()),
    "bidgw_loop_lag_sheds": ("counter", frozenset()),
    "bidgw_inflight_bids": ("gauge", frozenset()),
    "bidgw_bid_concurrency_limit": ("gauge", frozenset()),
    "bidgw_bid_limit_standing_queues": ("counter", frozenset()),
    "bidgw_store_lookups": ("counter", frozenset({"table", "result"})),
    "bidgw_store_failures": ("counter", frozenset()),
    "bidgw_scoring_failures": ("counter", frozenset()),
    "bidgw_batcher_batches": ("counter", frozenset({"reason"})),
    "bidgw_batcher_rows": ("counter", frozenset()),
    "bidgw_batcher_callers": ("counter", frozenset()),
    "bidgw_batcher_callers_per_batch": ("histogram", frozenset()),
    "bidgw_batcher_rejected": ("counter", frozenset({"reason"})),
    "bidgw_batcher_concurrency_limit": ("gauge", frozenset()),
    "bidgw_shadow_rows": ("counter", frozenset()),
    "bidgw_shadow_failures": ("counter", frozenset()),
}
_MODEL = frozenset({"version", "arm", "role"})
# Families that exist once something fed them: Redis shards (store_backend=redis), the calibration
# counters (win, click and conversion notices), shadow scoring and experiment reloads. Pinned too.
CONDITIONAL_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "bidgw_notice_losses": ("counter", frozenset({"reason"})),  # a child per reason, once one is seen
    "bidgw_redis_round_trip_seconds": ("histogram", frozenset({"shard"})),
    "bidgw_redis_errors": ("counter", frozenset({"shard"})),
    **{
        f"bidgw_model_{name}": ("counter", _MODEL)
        for name in (
            "impressions",
            "clicks",
            "conversions",
            "predicted_clicks",
            "predicted_conversions",
            "pctr_nll_base",
            "pctr_nll_event",
            "pctr_nll_event_base",
            "pcvr_nll_base",
            "pcvr_nll_event",
            "pcvr_nll_event_base",
            "spend_micros",
        )
    },
    "bidgw_feedback_events": ("counter", frozenset({"kind", "outcome"})),
    "bidgw_shadow_jobs": ("counter", frozenset({"outcome"})),
    "bidgw_experiment_reloads": ("counter", frozenset({"result"})),
}
# The stack below runs an experiment (both versions, version 2 in shadow on every control bid) on Redis.
EXPERIMENT = {
    "name": "obs",
    "salt": "obs-1",
    "arms": [
        {"name": "control", "version": "1", "weight": 50},
        {"name": "candidate", "version": "2", "weight": 50},
    ],
    "shadow": {"version": "2", "sample": 1.0},
}


# -- helpers --


def bid_body(bid: float = 2.0, count: int = 5, step: float = 1.0) -> bytes:
    """CPM candidates bidding bid, bid + step, ...; the imp's floor is 0.1."""
    ads = ads_with_distinct_advertisers(count)
    return json.dumps(site_request([candidate(ad, bid=bid + i * step) for i, ad in enumerate(ads)])).encode()


def post_bid(client: httpx.Client, body: bytes, **headers: str) -> httpx.Response:
    return client.post("/v1/bid", content=body, headers={"content-type": "application/json", **headers})


def scrape(url: str) -> dict[str, Any]:
    """name -> family, from one GET /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_sum(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    return float(
        sum(
            s.value
            for s in families[family].samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )
    )


def label_sets(families: dict[str, Any]) -> dict[str, tuple[str, frozenset[str]]]:
    found = {}
    for name, family in families.items():
        # `*_created` (creation timestamps) exist in single-process mode only; not something to query.
        # A labelled family nothing has fed yet has no samples (and no labels to pin).
        if name.startswith(("bidgw_", "http_")) and not name.endswith("_created") and family.samples:
            labels = {key for s in family.samples for key in s.labels if key != "le"}
            found[name] = (family.type, frozenset(labels))
    return found


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) for every target of every panel (rows included)."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        panels = list(dashboard["panels"])
        panels += [inner for panel in dashboard["panels"] for inner in panel.get("panels", [])]
        for panel in panels:
            for target in panel.get("targets", []):
                queries.append((dashboard["uid"], panel["title"], target["expr"]))
    return queries


def grafana_to_promql(expr: str) -> str:
    for macro, value in (
        ("$__rate_interval", RATE_INTERVAL),
        ("$__interval", "1s"),
        ("$__range", "1m"),
        ("${datasource}", ""),
        ("$datasource", ""),
    ):
        expr = expr.replace(macro, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr}"
    return expr


# -- fixtures --


@pytest.fixture(scope="module")
def multiproc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("multiproc")


def assert_pinned(families: dict[str, Any]) -> None:
    found = label_sets(families)
    assert {k: v for k, v in found.items() if k not in CONDITIONAL_METRICS} == EXPECTED_METRICS
    assert {k: v for k, v in found.items() if k in CONDITIONAL_METRICS} == {
        k: CONDITIONAL_METRICS[k] for k in found.keys() & CONDITIONAL_METRICS.keys()
    }


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    triton: LocalTriton,
    multiproc_dir: Path,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """`python -m gateway serve` with 2 workers sharing metrics through PROMETHEUS_MULTIPROC_DIR, on Redis
    (win, click and conversion notices feed the calibration counters) with an experiment running."""
    reset(redis_server.url)
    experiment = tmp_path_factory.mktemp("experiment") / "experiment.json"
    experiment.write_text(json.dumps(EXPERIMENT))
    env = {
        "BIDGW_STORE_BACKEND": "redis",
        "BIDGW_REDIS_URL": redis_server.url,
        "BIDGW_REDIS_TIMEOUT_MS": "100",
        "BIDGW_EXPERIMENT_PATH": str(experiment),
        "BIDGW_TRITON_URL": triton.http_address,
        "BIDGW_WORKERS": "2",
        "BIDGW_LOG_LEVEL": "warning",
        "BIDGW_METRICS_SYNC_INTERVAL_S": str(SYNC_INTERVAL_S),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
    }
    with gateway_process(env, startup_timeout_s=120) as process:
        deadline = time.monotonic() + 120
        ready = 0
        while ready < 6:  # several answers in a row: both workers are up
            assert time.monotonic() < deadline, process.log()
            try:
                ready = ready + 1 if httpx.get(f"{process.url}/readyz").status_code == 200 else 0
            except httpx.TransportError:
                ready = 0
            time.sleep(0.1)
        yield process


@dataclass(frozen=True, slots=True)
class Prometheus:
    url: str
    loaded_until: float  # Unix time: the load ended and its last samples are scraped

    def query(self, promql: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.url}/api/v1/query",
            params={"query": promql, "time": f"{self.loaded_until:.3f}"},
            timeout=10,
        )
        body: dict[str, Any] = response.json()
        assert response.status_code == 200, (promql, body)
        assert body["status"] == "success", (promql, body)
        return body


def send_feedback(client: httpx.Client, response: httpx.Response, i: int) -> None:
    """A win notice for each bid; a click on every third, a conversion on every sixth (after its click)."""
    for seatbid in response.json().get("seatbid", []):
        for bid in seatbid["bid"]:
            body = json.dumps({"bid_id": bid["id"], "price": bid["price"]})
            if client.post("/v1/events/win", content=body).status_code != 200:
                continue  # an unheld bid (its hold timed out): no record, no impression
            if i % 3 == 0:
                assert client.get("/v1/events/click", params={"bid_id": bid["id"]}).status_code == 200
            if i % 6 == 0:
                assert client.get("/v1/events/conversion", params={"bid_id": bid["id"]}).status_code == 200


def plain_bid_with_notice(client: httpx.Client, i: int) -> None:
    """A plain request bid from the catalog, then its billing notice (even i) or its loss notice (odd i),
    through the signed URLs the bid carries, as an exchange calls them."""
    response = post_bid(client, plain_banner_request(f"plain-{i}"))
    assert response.status_code in (200, 204), response.text
    if response.status_code == 204:
        return
    for bid in bids_of(response.json()):
        url = bid["burl"] if i % 2 == 0 else bid["lurl"]
        assert client.get(substituted(url, response.json(), bid)).status_code == 200


def run_load(url: str, seconds: float) -> int:
    """Bids (most win, some below the floor) with their win, click and conversion notices, plain requests
    bid from the catalog with their bill or loss notices, a few malformed requests; 2 threads, bounded by
    `seconds`."""
    bodies = [bid_body(2.0), bid_body(0.01, count=3, step=0.0), bid_body(5.0, count=20)]
    sent = [0, 0]
    stop_at = time.monotonic() + seconds

    def worker(index: int) -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            i = 0
            while time.monotonic() < stop_at:
                if i % 25 == 0:
                    client.post("/v1/bid", content=b"{not json", headers={"content-type": "application/json"})
                elif i % 5 == 0:
                    plain_bid_with_notice(client, i)
                else:
                    response = post_bid(client, bodies[i % len(bodies)])
                    assert response.status_code == 200
                    send_feedback(client, response, i)
                    sent[index] += 1
                i += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(sent)


@pytest.fixture(scope="module")
def prometheus(
    gateway: GatewayProcess, triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """A real Prometheus scraping the gateway and Triton every second, with the alert and recording rules
    loaded (group intervals dropped so they evaluate every second too); yields after a bounded load."""
    if PROMETHEUS is None:
        pytest.skip(NO_PROMETHEUS)
    workdir = tmp_path_factory.mktemp("prometheus")
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group.pop("interval", None)
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
    triton_metrics = triton.metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(workdir / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": "bid-gateway",
                "static_configs": [{"targets": [gateway.url.removeprefix("http://")]}],
            },
            {"job_name": "triton", "static_configs": [{"targets": [triton_metrics]}]},
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (workdir / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            try:
                if httpx.get(f"{url}/-/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        time.sleep(2 * SCRAPE_INTERVAL_S)  # a scrape before the load: rates start from a sample
        assert run_load(gateway.url, LOAD_SECONDS) > 0
        # The workers export every SYNC_INTERVAL_S; then one more scrape and one more rule evaluation.
        time.sleep(SYNC_INTERVAL_S + 2.5 * SCRAPE_INTERVAL_S)
        yield Prometheus(url, time.time())
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# -- (a) dashboards on real data --


def test_dashboards_are_provisionable_json() -> None:
    assert {path.name for path in DASHBOARDS} == {"gateway-overview.json", "triton.json"}
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        assert dashboard["schemaVersion"] >= 39
        assert "__inputs" not in dashboard
        [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
        assert variable["type"] == "datasource"
        assert variable["query"] == "prometheus"
        assert "${DS_" not in path.read_text()
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                if "rate(" in target["expr"]:
                    assert "[$__rate_interval]" in target["expr"], target["expr"]
    assert uids == {"bidgw-overview", "bidgw-triton"}


@needs_prometheus
@pytest.mark.parametrize(
    ("uid", "title", "expr"), dashboard_queries(), ids=lambda v: str(v)[:60] if isinstance(v, str) else ""
)
def test_every_dashboard_query_returns_data(prometheus: Prometheus, uid: str, title: str, expr: str) -> None:
    body = prometheus.query(grafana_to_promql(expr))
    result = body["data"]["result"]
    if (uid, title) in GPU_ONLY_PANELS | REDIS_ONLY_PANELS:
        return  # valid PromQL (the query succeeded); no GPU metrics on a CPU Triton, no Redis here
    assert result, f"panel {title!r} of {uid} has no data: {expr}"
    assert any(sample["value"][1] not in ("NaN", "+Inf", "-Inf") for sample in result), (title, result)


@needs_prometheus
def test_prometheus_scrapes_both_targets_and_the_rules_evaluate(prometheus: Prometheus) -> None:
    up = prometheus.query("up")["data"]["result"]
    assert {s["metric"]["job"]: s["value"][1] for s in up} == {"bid-gateway": "1", "triton": "1"}
    rules = httpx.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
    health = {rule["name"]: rule["health"] for group in rules for rule in group["rules"]}
    assert health
    assert set(health.values()) == {"ok"}, health
    alerts = httpx.get(f"{prometheus.url}/api/v1/alerts").json()["data"]["alerts"]
    # A healthy stack under light load: only the GPU alert could be silent for lack of data; none fires.
    assert [a for a in alerts if a["state"] == "firing"] == []
    availability = prometheus.query("bidgw:slo_availability_errors:ratio_rate5m")["data"]["result"]
    assert availability
    assert float(availability[0]["value"][1]) == 0.0


# -- (b) rules --


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_cover_every_alert_firing_and_not() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test["alert_rule_test"]:
                (firing if case["exp_alerts"] else silent).add(case["alertname"])
    assert firing == alerts
    assert silent == alerts


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    runbook = (REPO_ROOT / "docs" / "runbook.md").read_text()
    anchors = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            assert rule["labels"]["severity"] in {"page", "ticket"}
            annotations = rule["annotations"]
            assert annotations["summary"]
            assert annotations["description"]
            path, anchor = annotations["runbook_url"].split("#")
            assert path == "docs/runbook.md"
            assert anchor == rule["alert"].lower()
            assert anchor in anchors


# -- (c) names and labels --


def test_metric_names_and_label_sets_are_pinned(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        assert post_bid(client, bid_body()).status_code == 200
    time.sleep(3 * SYNC_INTERVAL_S)
    families = scrape(gateway.url)
    assert_pinned(families)
    stages = {s.labels["stage"] for s in families["bidgw_stage_duration_seconds"].samples}
    assert stages == set(STAGES)
    reasons = {s.labels["reason"] for s in families["bidgw_candidates_dropped"].samples}
    assert reasons == {str(reason) for reason in LossReason}
    outcomes = {s.labels["outcome"] for s in families["bidgw_bids"].samples}
    assert all(re.fullmatch(r"bid|shed|nobid_\d+", outcome) for outcome in outcomes), outcomes
    handlers = {s.labels["handler"] for s in families["http_requests"].samples}
    assert "/v1/bid" in handlers
    assert "/metrics" not in handlers
    assert {s.labels["status"] for s in families["http_requests"].samples} <= {"2xx", "3xx", "4xx", "5xx"}


def test_a_single_worker_exposes_the_same_metrics(triton: LocalTriton) -> None:
    """One worker (no multiprocess dir) serves its in-memory registry; the names and labels are the same."""
    with (
        serve_in_thread(Settings(triton_url=triton.http_address)) as url,
        httpx.Client(base_url=url) as client,
    ):
        assert post_bid(client, bid_body()).status_code == 200
        assert post_bid(client, bid_body(0.01, step=0.0)).json()["nbr"] == 502
        families = scrape(url)  # a scrape exports this worker's tallies first: exact, no waiting
    assert_pinned(families)
    assert sample_sum(families, "bidgw_bids", "bidgw_bids_total", outcome="bid") == 1
    assert sample_sum(families, "bidgw_bids", "bidgw_bids_total", outcome="nobid_502") == 1
    assert sample_sum(families, "bidgw_clearing_price_usd", "bidgw_clearing_price_usd_count") == 1
    # The winner paid the runner-up's 5.0 + 0.01 (bids 2..6 CPM): the bulk-added sum is the real price.
    assert sample_sum(families, "bidgw_clearing_price_usd", "bidgw_clearing_price_usd_sum") == pytest.approx(
        5.01
    )
    for stage in STAGES:
        # Both bids brought ext.candidates: nothing was retrieved from the catalog.
        expected = 0 if stage == "retrieval" else 2
        assert (
            sample_sum(
                families, "bidgw_stage_duration_seconds", "bidgw_stage_duration_seconds_count", stage=stage
            )
            == expected
        ), stage
    # Bucket counts are cumulative in the exposition: +Inf holds both bids.
    inf = sample_sum(families, "bidgw_bid_candidates", "bidgw_bid_candidates_bucket", le="+Inf")
    assert inf == 2
    assert sample_sum(families, "bidgw_bid_candidates", "bidgw_bid_candidates_bucket", le="5.0") == 2
    assert sample_sum(families, "bidgw_bid_candidates", "bidgw_bid_candidates_bucket", le="1.0") == 0
    assert (
        sample_sum(
            families, "bidgw_candidates_dropped", "bidgw_candidates_dropped_total", reason="below_floor"
        )
        == 5
    )
    assert (
        sample_sum(
            families, "bidgw_candidates_dropped", "bidgw_candidates_dropped_total", reason="lost_auction"
        )
        == 4
    )
    assert (
        sample_sum(families, "bidgw_store_lookups", "bidgw_store_lookups_total", table="user", result="hit")
        == 2
    )


# -- (d) several workers --


def test_two_workers_add_up_whichever_answers_the_scrape(
    gateway: GatewayProcess, multiproc_dir: Path
) -> None:
    bids = 40
    before = scrape_settled(gateway.url)
    for _ in range(bids):  # a new connection each time: the kernel spreads them over both workers
        with httpx.Client(base_url=gateway.url) as client:
            assert post_bid(client, bid_body()).status_code == 200
    time.sleep(4 * SYNC_INTERVAL_S)
    for _ in range(6):  # each scrape may reach either worker: every one must see every bid
        after = scrape(gateway.url)
        assert totals(after) - totals(before) == pytest.approx(
            {"bids": bids, "http": bids, "decode": bids, "wins": bids}
        )
        assert sample_sum(after, "bidgw_inflight_bids", "bidgw_inflight_bids") == 0
        assert sample_sum(after, "bidgw_breaker_state", "bidgw_breaker_state") == 0
    per_worker = [
        sum(
            s.value
            for metric in multiprocess.MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
            if metric.name == "bidgw_bids"
            for s in metric.samples
        )
        for path in multiproc_dir.glob("counter_*.db")
    ]
    assert len([count for count in per_worker if count > 0]) == 2, per_worker


def totals(families: dict[str, Any]) -> _Totals:
    return _Totals(
        {
            "bids": sample_sum(families, "bidgw_bids", "bidgw_bids_total", outcome="bid"),
            "http": sample_sum(
                families, "http_requests", "http_requests_total", handler="/v1/bid", status="2xx"
            ),
            "decode": sample_sum(
                families, "bidgw_stage_duration_seconds", "bidgw_stage_duration_seconds_count", stage="decode"
            ),
            "wins": sample_sum(families, "bidgw_clearing_price_usd", "bidgw_clearing_price_usd_count"),
        }
    )


class _Totals(dict[str, float]):
    def __sub__(self, other: _Totals) -> dict[str, float]:
        return {key: value - other[key] for key, value in self.items()}


def scrape_settled(url: str) -> dict[str, Any]:
    """A scrape after every worker exported what it had (earlier tests' bids included)."""
    time.sleep(4 * SYNC_INTERVAL_S)
    return scrape(url)


# -- request ids and the bid log --


def test_request_id_is_echoed_or_generated(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        given = post_bid(client, bid_body(), **{"X-Request-ID": "bidder-42.a"})
        assert given.headers["x-request-id"] == "bidder-42.a"
        generated = post_bid(client, bid_body())
        assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
        # A value that could forge log fields is replaced, not echoed.
        forged = post_bid(client, bid_body(), **{"X-Request-ID": 'x", "level": "error'})
        assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])
        assert client.get("/healthz").headers["x-request-id"]
        assert client.post("/v1/bid", content=b"{").headers["x-request-id"]


def _decision() -> Decision:
    return Decision(
        response=BidResponse(id="openrtb-1", seatbid=[], nbr=502),
        outcome="nobid_502",
        timings_ms={"decode": 0.1, "features": 0.2},
        candidates=3,
    )


def _capture(level: int) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.bids.{level}.{time.monotonic_ns()}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(level)
    return logger, stream


def test_bid_log_is_one_json_line_with_the_request_id() -> None:
    logger, stream = _capture(logging.DEBUG)
    token = request_id_var.set("rid-1")
    try:
        for _ in range(3):
            BidLog(0.0, logger).decided(_decision(), 0.0042)
    finally:
        request_id_var.reset(token)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # debug: every bid, whatever the sample rate
    entry = json.loads(lines[0])
    assert entry["level"] == "debug"
    assert entry["request_id"] == "rid-1"
    assert entry["openrtb_id"] == "openrtb-1"
    assert entry["outcome"] == "nobid_502"
    assert entry["nbr"] == 502
    assert entry["timings_ms"] == {"decode": 0.1, "features": 0.2}
    assert entry["total_ms"] == 4.2


def test_bid_log_is_sampled_at_info_and_silent_above() -> None:
    logger, stream = _capture(logging.INFO)
    for _ in range(200):
        BidLog(0.0, logger).decided(_decision(), 0.001)
    assert stream.getvalue() == ""
    for _ in range(200):
        BidLog(1.0, logger).decided(_decision(), 0.001)
    assert len(stream.getvalue().splitlines()) == 200
    sampled = BidLog(0.25, logger)
    stream.truncate(0)
    stream.seek(0)
    for _ in range(2000):
        sampled.decided(_decision(), 0.001)
    assert 300 < len(stream.getvalue().splitlines()) < 700
    quiet, quiet_stream = _capture(logging.WARNING)
    BidLog(1.0, quiet).decided(_decision(), 0.001)
    assert quiet_stream.getvalue() == ""
