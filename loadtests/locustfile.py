"""Locust traffic for bid-gateway: realistic bids (loadtests/workload.py), strict failure rules.

    locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000 -u 8 -r 8 -t 60s \
        --csv loadtests/results/locust --html loadtests/results/locust.html

A bid is a failure when the answer is a 5xx (503 overloaded included: the caller lost the bid), a 4xx
(the workload only sends valid requests), or arrives later than the request's own `tmax`. With
`--win-notices` (env LOCUST_WIN_NOTICES=true; only for a stack with the Redis store, the embedded one
answers 501) a `--win-share` of the returned bids is reported won at its price, as an exchange would.

Options (also as env vars): --candidates-mean (50), --candidates-distribution (lognormal|fixed|uniform),
--bid-rate (bids per second per user, 0 = back to back; default 5), --seed.
"""

from __future__ import annotations

import random
from typing import Any, cast

import orjson
from locust import FastHttpUser, constant_throughput, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from loadtests.workload import CandidateDistribution, Workload, WorkloadConfig

JSON_HEADERS = {"content-type": "application/json"}


def _options(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("bid-gateway workload")
    group.add_argument("--candidates-mean", type=float, default=50.0, env_var="LOCUST_CANDIDATES_MEAN")
    group.add_argument(
        "--candidates-distribution",
        choices=["lognormal", "fixed", "uniform"],
        default="lognormal",
        env_var="LOCUST_CANDIDATES_DISTRIBUTION",
    )
    group.add_argument(
        "--bid-rate", type=float, default=5.0, env_var="LOCUST_BID_RATE", help="bids/s per user; 0 = no wait"
    )
    group.add_argument(
        "--win-notices",
        type=lambda v: str(v).lower() in {"1", "true", "yes"},
        default=False,
        env_var="LOCUST_WIN_NOTICES",
        help="send win notices (the stack must use the Redis store)",
    )
    group.add_argument("--win-share", type=float, default=0.2, env_var="LOCUST_WIN_SHARE")
    group.add_argument("--seed", type=int, default=0, env_var="LOCUST_SEED")


class _Shared:
    """The workload, loaded once per locust process (snapshot parsing is not per user)."""

    workload: Workload | None = None
    users_started = 0


def _load_workload(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    mean = options.candidates_mean if options else 50.0
    distribution = cast(CandidateDistribution, options.candidates_distribution if options else "lognormal")
    _Shared.workload = Workload.load(
        WorkloadConfig(
            candidates_mean=mean,
            candidates_distribution=distribution,
            candidates_max=max(500, int(mean)),
        )
    )


# Registering the listeners is the locustfile's one import-time job.
events.init_command_line_parser.add_listener(_options)
events.init.add_listener(_load_workload)


def _bid_rate(environment: Environment) -> float:
    options = environment.parsed_options
    return float(options.bid_rate) if options else 5.0


class Bidder(FastHttpUser):
    """One exchange connection sending bid requests (at `--bid-rate` per second each)."""

    def wait_time(self) -> float:
        rate = _bid_rate(self.environment)
        return constant_throughput(rate)(self) if rate > 0 else 0.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        seed = options.seed if options else 0
        _Shared.users_started += 1
        self._rng = random.Random(seed * 1_000_003 + _Shared.users_started)  # reproducible per user
        self._win_notices = bool(options and options.win_notices)
        self._win_share = float(options.win_share) if options else 0.0

    @task
    def bid(self) -> None:
        workload = _Shared.workload
        assert workload is not None
        request = workload.request(self._rng)
        tmax_s = request["tmax"] / 1000.0
        with self.client.post(
            "/v1/bid",
            data=orjson.dumps(request).decode(),
            headers=JSON_HEADERS,
            catch_response=True,
            name="bid",
        ) as response:
            if response.status_code >= 400 or response.status_code == 0:
                response.failure(f"HTTP {response.status_code}: {str(response.text)[:200]}")
                return
            elapsed_s = response.request_meta["response_time"] / 1000.0
            if elapsed_s > tmax_s:
                response.failure(f"late: {elapsed_s * 1000:.0f} ms > tmax {request['tmax']} ms")
                return
            response.success()
            wins = self._wins(response.text) if self._win_notices else []
        for bid_id, price in wins:
            self._notify_win(bid_id, price)

    def _wins(self, body: str | None) -> list[tuple[str, float]]:
        document = orjson.loads(body or "{}")
        return [
            (bid["id"], float(bid["price"]))
            for seat in document.get("seatbid") or []
            for bid in seat.get("bid") or []
            if self._rng.random() < self._win_share
        ]

    def _notify_win(self, bid_id: str, price: float) -> None:
        body = orjson.dumps({"bid_id": bid_id, "price": price}).decode()
        with self.client.post(
            "/v1/events/win", data=body, headers=JSON_HEADERS, catch_response=True, name="win"
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {str(response.text)[:200]}")
