"""All settings in one place: `BIDGW_*` environment variables (or a .env file), validated at start.

Nested values use JSON in the variable, e.g. BIDGW_CURRENCY_RATES='{"USD": 1, "EUR": 0.92, "JPY": 151}'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.core.currency import DEFAULT_RATES_PER_USD
from gateway.notices.keyring import check_key
from gateway.scoring.targets import parse_target

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BIDGW_", env_file=".env", extra="ignore", frozen=True)

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes; one per core is the rule")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = Field("json", description="json: one object per line")
    log_bid_sample_rate: float = Field(
        0.01, ge=0.0, le=1.0, description="share of bids logged at info (debug logs every bid)"
    )

    # Metrics
    metrics_sync_interval_s: float = Field(
        1.0, gt=0, le=60, description="how often each worker exports its counters to /metrics"
    )
    # prometheus_client's own variable (no BIDGW_ prefix): with several workers every worker writes its
    # metrics there and /metrics merges them. `serve` sets it (a temp dir) when workers > 1.
    prometheus_multiproc_dir: Path | None = Field(
        None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
    )

    # Triton
    triton_url: str = Field(
        "127.0.0.1:8000",
        description="Triton, in gRPC's target forms, on the port of triton_protocol: host:port, "
        "dns:///name:port (every address of the name, e.g. a headless Service), "
        "dns://dns-server:53/name:port, ipv4:a:port,b:port (gateway/scoring/targets.py)",
    )
    triton_protocol: Literal["grpc", "http"] = Field(
        "http",
        description="how to call Triton: grpc (tritonclient.aio, its gRPC port) or http (HTTP/REST with "
        "binary tensors on the event loop's own keep-alive connections, its HTTP port); triton_url names "
        "that port",
    )
    triton_http_connections: int = Field(
        8, ge=1, le=256, description="http: keep-alive connections per Triton server and worker, at most"
    )
    triton_resolve_interval_s: float = Field(
        10.0, gt=0, le=300, description="re-resolve a Triton name this often: new pods get calls within it"
    )
    triton_probe_interval_s: float = Field(
        0.5, gt=0, le=60, description="ask an ejected Triton server this often whether its model is ready"
    )
    triton_eject_after_silent: int = Field(
        3, ge=1, description="calls in a row a Triton server leaves unanswered before it is ejected"
    )
    model_name: str = "ranker"
    model_version: str = Field("1", description="model version to score with ('' = Triton's choice)")

    # Micro-batcher: coalesces concurrent bids of one worker into one Triton request.
    batch_max_rows: int = Field(2048, ge=1, le=4096)
    # 0: a batch leaves on the next loop iteration, with every bid that arrived in the same tick; under load
    # the concurrency cap makes batches grow by themselves. A wait costs every unmerged bid that long, and
    # uvloop's timers are whole milliseconds: 500 us measured as +1.1 ms p50 and +170 us CPU per bid.
    batch_max_wait_us: int = Field(0, ge=0, le=50_000)
    batch_concurrency: int = Field(
        4, ge=1, description="Triton calls in flight per worker: the ceiling (adaptive) or the limit (fixed)"
    )
    batch_concurrency_mode: Literal["adaptive", "fixed"] = Field(
        "adaptive",
        description="adaptive: lower the in-flight limit while Triton's latency shows a queue, so bids wait "
        "and merge here instead (gateway/scoring/limiter.py); fixed: always batch_concurrency",
    )
    batch_concurrency_min: int = Field(1, ge=1, description="adaptive: the floor of the in-flight limit")
    batch_upstream_latency_us: int = Field(2_000, ge=0)

    # Experiments (docs/experiments.md): a split of traffic across model versions, and shadow scoring.
    experiment_path: Path | None = Field(
        None,
        description="JSON experiment configuration (arms, weights, salt, shadow), watched and reloaded "
        "without a restart; unset: every bid on model_version",
    )
    experiment_reload_interval_s: float = Field(
        5.0, gt=0, le=3600, description="how often to look at experiment_path for a change"
    )
    shadow_max_queued_rows: int = Field(
        4096, ge=1, description="rows awaiting shadow scoring per worker; beyond, shadow jobs are dropped"
    )
    shadow_timeout_ms: float = Field(500.0, gt=0, description="cap on one shadow scoring request")

    # Deadlines (milliseconds): budget = min(tmax - network margin, server cap); default when tmax absent.
    default_tmax_ms: int = Field(100, gt=0)
    network_margin_ms: int = Field(10, ge=0)
    server_cap_ms: int = Field(200, gt=0)

    # Faults and overload
    on_scoring_failure: Literal["priors", "nobid"] = Field(
        "priors", description="Triton failed: bid on the ads' prior CTR/CVR (degraded) or no-bid with nbr 1"
    )
    breaker_failure_threshold: int = Field(5, ge=1, description="consecutive failed Triton calls to open")
    breaker_reset_s: float = Field(1.0, gt=0, description="open circuit: seconds before a probe call")
    max_inflight_bids: int = Field(
        64,
        ge=1,
        description="per worker: bids worked on at once, the ceiling (adaptive) or the limit (fixed); "
        "beyond it a bid is shed (503)",
    )
    bid_concurrency_mode: Literal["adaptive", "fixed"] = Field(
        "adaptive",
        description="adaptive: lower the bids-in-flight limit while even the fastest bids (latency from "
        "arrival, the event loop's queue included) show a standing queue, so excess bids get a cheap 503 "
        "instead of making every bid late (gateway/api/bid_limit.py); fixed: always max_inflight_bids",
    )
    bid_concurrency_min: int = Field(4, ge=1, description="adaptive: the floor of the bids-in-flight limit")
    bid_concurrency_tolerance: float = Field(
        2.0,
        ge=1.0,
        description="adaptive: a standing queue is an interval whose fastest bid took over this many times "
        "the no-load latency of a bid its size",
    )
    bid_concurrency_interval_ms: float = Field(
        50.0,
        gt=0,
        description="adaptive: how long a standing queue must last (its fastest bid still slow); 25 holds "
        "admitted latency lower under overload and sheds more near capacity, 100 the other way",
    )
    bid_concurrency_headroom: float = Field(
        4.0,
        ge=2.0,
        description="adaptive: the limit comes down to this many times the most bids in flight over the "
        "last 10-20 s, so the first burst of an overload admits a few times the recent use, not the ceiling",
    )
    bid_concurrency_burst: int = Field(
        16,
        ge=1,
        description="adaptive: low use never brings the limit under this many bids (or max_inflight_bids), "
        "so a burst after a quiet spell is admitted (latency still can lower it)",
    )
    overload_lag_target_ms: float = Field(
        25.0,
        ge=0,
        description="shed (503) while the event loop lags above this for a whole interval: the worker's CPU "
        "is saturated; 0 turns it off (gateway/api/admission.py)",
    )
    overload_lag_interval_ms: float = Field(
        500.0, gt=0, description="how long the lag must stay above target before shedding starts"
    )
    trust_request_start: bool = Field(
        False, description="count a proxy's X-Request-Start: t=<unix s> age against the bid's budget"
    )
    auction_reserve_ms: float = Field(2.0, ge=0, description="budget kept back from scoring for the auction")
    shutdown_grace_s: float = Field(10.0, gt=0, description="SIGTERM: in-flight bids get this long")
    drain_delay_s: float = Field(0.0, ge=0, description="SIGTERM: unready this long before closing")

    # Request limits
    max_body_bytes: int = Field(1 << 20, gt=0)
    max_imps: int = Field(64, gt=0)
    max_candidates: int = Field(1000, gt=0)

    # Money: units of each currency per 1 USD (USD is the base and always 1).
    currency_rates: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_RATES_PER_USD))
    seat: str = "bid-gateway"

    # Stores
    store_backend: Literal["embedded", "redis"] = Field(
        "embedded", description="embedded: the snapshots in memory; redis: shared features + campaign state"
    )
    snapshot_dir: Path = REPO_ROOT / "data" / "snapshots"
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="one server: redis://host:port/db (rediss:// TLS); a Redis Cluster: "
        "redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster:// TLS)",
    )
    redis_timeout_ms: float = Field(
        10.0, gt=0, description="cap on a bid's Redis round trip (also capped by the bid's remaining budget)"
    )
    redis_connect_timeout_ms: float = Field(
        500.0, gt=0, description="TCP connect cap; a bid still never waits past its own deadline"
    )
    redis_max_connections: int = Field(64, ge=1, description="per worker; bids wait (within budget) beyond")
    redis_win_timeout_ms: float = Field(1000.0, gt=0, description="cap on a win notice's Redis calls")
    redis_win_replicas: int = Field(
        0,
        ge=0,
        description="replicas that must confirm a win (WAIT) before it is acknowledged; set 1 on a cluster "
        "with replicas, so a failover cannot lose an acknowledged notice",
    )
    store_cache_size: int = Field(100_000, ge=1, description="ad rows + campaign configs cached per worker")
    store_cache_ttl_s: float = Field(30.0, gt=0, description="how stale a cached ad row or config may be")

    # Catalog: the candidates of plain OpenRTB requests (those without ext.candidates), docs/catalog.md
    catalog_source: Literal["file", "redis", "off"] = Field(
        "file",
        description="file: catalog_path; redis: the catalog seed-catalog wrote to redis_url; off: every "
        "request must bring ext.candidates (422 empty_list otherwise)",
    )
    catalog_path: Path = REPO_ROOT / "data" / "catalog" / "catalog.jsonl"
    catalog_reload_interval_s: float = Field(
        5.0, gt=0, le=3600, description="how often to look for a new catalog version (file or Redis)"
    )
    retrieval_top_k: int = Field(
        200, ge=1, le=4096, description="retrieved candidates the model scores per request, by prior eCPM"
    )
    # An int checked below, not Literal[204, 200]: an environment variable arrives as the string "204".
    plain_nobid_status: int = Field(
        204,
        description="a no-bid to a request without ext.candidates: 204 and no body (most exchanges), or "
        "200 with seatbid [] and nbr; requests with ext.candidates always get the latter",
    )

    # Notices: the signed nurl/burl/lurl of catalog bids and the endpoints they call (docs/notices.md)
    notice_base_url: str = Field(
        "http://127.0.0.1:8000",
        pattern=r"^https?://[^\s?#]+$",
        description="where exchanges reach this gateway: notice URLs are <base>/v1/notices/{win,bill,loss}",
    )
    notice_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="key id -> HMAC secret (>= 32 bytes) signing notice URLs, as JSON; at most two: the "
        "active key and the previous one during a rotation",
    )
    notice_keys_dir: Path | None = Field(
        None,
        description="a directory with one file per key (name = key id, content = secret): a mounted "
        "Kubernetes Secret; merged with notice_keys",
    )
    notice_active_key: str | None = Field(
        None, description="the key id that signs; may be omitted when exactly one key is configured"
    )
    notice_allow_dev_key: bool = Field(
        True,
        description="without any key, sign with the built-in, public, INSECURE dev key (make run); false "
        "refuses to start instead (the chart sets false)",
    )
    bill_on: Literal["burl", "nurl"] = Field(
        "burl",
        description="which notice charges: burl (billing notice, the default of OpenRTB 2.6) or nurl (for "
        "exchanges that bill on win); the other kind only answers 200. Both charge at most once per bid",
    )
    notice_ttl_s: int = Field(
        300,
        ge=1,
        description="a notice URL verifies this long after its bid; <= bid_ttl_s (an unwon bid's record "
        "lives that long: a later billing notice would find nothing to bill)",
    )

    # Campaigns (redis backend): bid records, holds and pacing
    bid_ttl_s: int = Field(300, ge=1, description="a returned bid may be won (and holds budget) this long")
    win_dedupe_ttl_s: int = Field(172_800, ge=1, description="a won bid id answers 'duplicate' this long")
    pacing_horizon_s: float = Field(
        900.0, ge=0, le=86_400, description="how far ahead of plan spend may run; 0 turns pacing off"
    )
    pacing_hourly_weights: tuple[float, ...] = Field(
        (1.0,) * 24, description="24 UTC-hour traffic weights shaping the planned spend curve"
    )

    @field_validator("notice_keys")
    @classmethod
    def _notice_keys(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for kid, secret in value.items():
            check_key(kid, secret.get_secret_value().encode())  # ValueError naming the key id
        return value

    @field_validator("plain_nobid_status")
    @classmethod
    def _nobid_status(cls, value: int) -> int:
        if value not in (200, 204):
            raise ValueError("plain_nobid_status must be 204 (no body) or 200 (seatbid [] with nbr)")
        return value

    @field_validator("triton_url")
    @classmethod
    def _triton_target(cls, value: str) -> str:
        parse_target(value)  # a typo fails at start, naming the problem, not at the first bid
        return value

    @model_validator(mode="after")
    def _http_needs_tcp(self) -> Self:
        addresses = parse_target(self.triton_url).addresses
        if self.triton_protocol == "http" and any(a.startswith("unix:") for a in addresses):
            raise ValueError("triton_url: unix: is a gRPC target; triton_protocol=http needs host:port")
        return self

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.currency_rates.get("USD", 1.0) != 1.0:
            raise ValueError("currency_rates: USD is the base currency and must be 1")
        if any(rate <= 0 for rate in self.currency_rates.values()):
            raise ValueError("currency_rates: every rate must be > 0")
        if self.network_margin_ms >= self.server_cap_ms:
            raise ValueError("network_margin_ms must be below server_cap_ms")
        if len(self.pacing_hourly_weights) != 24 or sum(self.pacing_hourly_weights) <= 0:
            raise ValueError("pacing_hourly_weights: 24 non-negative weights, not all zero")
        if self.batch_concurrency_min > self.batch_concurrency:
            raise ValueError(
                "batch_concurrency_min must be <= batch_concurrency (the adaptive limit's ceiling)"
            )
        if self.bid_concurrency_min > self.max_inflight_bids:
            raise ValueError(
                "bid_concurrency_min must be <= max_inflight_bids (the adaptive limit's ceiling)"
            )
        if self.catalog_source == "redis" and self.store_backend != "redis":
            raise ValueError("catalog_source=redis needs store_backend=redis (the catalog lives beside it)")
        if self.retrieval_top_k > self.max_candidates:
            raise ValueError("retrieval_top_k must be <= max_candidates (what one Triton call may carry)")
        if self.win_dedupe_ttl_s < self.bid_ttl_s:
            raise ValueError("win_dedupe_ttl_s must be >= bid_ttl_s")
        if self.notice_ttl_s > self.bid_ttl_s:
            # A notice that verifies must find its bid record: an unwon record lives bid_ttl_s (a won one
            # win_dedupe_ttl_s >= bid_ttl_s, so replays answer duplicate as long as they verify). A burl
            # passing the signature after its record expired would be charged by the exchange, not here.
            raise ValueError("notice_ttl_s must be <= bid_ttl_s (raise both for late billing, e.g. CTV)")
        if self.store_backend == "redis":
            from gateway.stores.shards import parse_redis_url  # noqa: PLC0415 - redis only when it is used

            parse_redis_url(self.redis_url)  # ValueError: the message names the URL and what is wrong
        return self
