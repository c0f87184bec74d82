"""Many gateways over many Tritons, for real: two gateway servers (2 workers each) over three, then four,
local Triton servers behind one DNS name served by a real DNS server on loopback.

Each Triton binds its own loopback address (127.0.0.11 ...) on the same ports, as pods of a headless
Service do on their pod IPs; the name's A records are those addresses. Load is a bounded open loop on
loopback. The checks are the issue's: an even split of Triton executions (Triton's own
nv_inference_exec_count), a SIGKILLed Triton costing no error and no late answer, a new Triton taking its
share within the re-resolution bound, and readiness that survives losing every Triton.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.local_triton import DEFAULT_MODEL_REPOSITORY, LocalTriton, TritonPorts, free_port
from tests.integration.bid_requests import ads_with_distinct_advertisers, candidate, site_request
from tests.integration.dns_server import TestDnsServer
from tests.integration.gateway_process import GatewayProcess, gateway_process
from tests.integration.load import Outcome, generator_without_gc_pauses, new_session, open_loop
from tests.integration.triton_rows import metric_values

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "triton.fleet.test"
HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14")
RESOLVE_INTERVAL_S = 3.0  # the gateways' re-resolution bound in this test (the default is 10 s)
TMAX_MS = 100
SLACK_S = 0.050  # an answer is late after tmax + 50 ms
RATE_PER_GATEWAY = 120.0  # bids/s per gateway: a few hundred in all, what 2 cores carry with 4 Tritons


def fleet_repository(into: Path) -> Path:
    """The committed ranker, version 1 only, two CPU instances: four servers must fit on two cores."""
    repository = into / "fleet_models"
    model_dir = repository / "ranker"
    (model_dir / "configs").mkdir(parents=True)
    shutil.copytree(
        DEFAULT_MODEL_REPOSITORY / "ranker" / "1",
        model_dir / "1",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    config = model_config_pb2.ModelConfig()
    text_format.Parse((DEFAULT_MODEL_REPOSITORY / "ranker" / "configs" / "cpu.pbtxt").read_text(), config)
    config.instance_group[0].count = 2
    config.version_policy.specific.versions[:] = [1]
    text = text_format.MessageToString(config)
    (model_dir / "config.pbtxt").write_text(text)
    (model_dir / "configs" / "cpu.pbtxt").write_text(text)
    return repository


def ports_free_on_every_host() -> TritonPorts:
    """Three ports no listener holds on any of HOSTS."""
    while True:
        ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
        try:
            for host in HOSTS:
                for port in ports.named().values():
                    with socket.socket() as sock:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        sock.bind((host, port))
        except OSError:
            continue
        return ports


@dataclass
class Fleet:
    dns: TestDnsServer
    ports: TritonPorts
    repository: Path
    tritons: dict[str, LocalTriton]
    gateways: list[GatewayProcess]

    def triton(self, host: str) -> LocalTriton:
        server = self.tritons.get(host)
        if server is None or not server.is_running():
            server = self.tritons[host] = LocalTriton(
                self.ports, model_repository=self.repository, host=host, startup_timeout_s=180.0
            )
        return server

    def executions(self, hosts: tuple[str, ...]) -> dict[str, float]:
        """Triton's own count of model executions per server (0 for a server that is down)."""
        counts = {}
        for host in hosts:
            server = self.tritons.get(host)
            if server is None or not server.is_running():
                counts[host] = 0.0
                continue
            values = metric_values(server.metrics_url, "nv_inference_exec_count")
            counts[host] = sum(values.values())
        return counts


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    repository = fleet_repository(tmp_path_factory.mktemp("fleet"))
    with TestDnsServer() as dns:
        fleet = Fleet(dns, ports_free_on_every_host(), repository, {}, [])
        try:
            # One after the other, on this thread: the kernel's parent-death signal follows the thread
            # that started a server, so a server started from a pool thread dies with that thread.
            for host in HOSTS[:3]:
                fleet.triton(host).start()
            dns.set(NAME, list(HOSTS[:3]))
            env = {
                "BIDGW_TRITON_URL": f"dns://{dns.address}/{NAME}:{fleet.ports.http}",
                "BIDGW_TRITON_RESOLVE_INTERVAL_S": str(RESOLVE_INTERVAL_S),
                "BIDGW_WORKERS": "2",
                "BIDGW_LOG_LEVEL": "warning",
            }
            with gateway_process(env) as first, gateway_process(env) as second:
                fleet.gateways = [first, second]
                _wait_until_scored(fleet)
                yield fleet
        finally:
            for server in fleet.tritons.values():
                server.stop()


def bid_body() -> bytes:
    ads = ads_with_distinct_advertisers(20)
    request = site_request([candidate(ad, bid=1.0 + i / 10) for i, ad in enumerate(ads)], tmax=TMAX_MS)
    return orjson.dumps(request)


BODY = bid_body()


def _wait_until_scored(fleet: Fleet, timeout_s: float = 30.0) -> None:
    """Every gateway answers model-scored bids (its workers are up and have resolved the name)."""
    deadline = time.monotonic() + timeout_s
    for gateway in fleet.gateways:
        scored = 0
        while scored < 10:
            assert time.monotonic() < deadline, f"a gateway never scored with the model:\n{gateway.log()}"
            answer = httpx.post(
                f"{gateway.url}/v1/bid", content=BODY, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 200, answer.text
            scored = scored + 1 if not answer.json()["ext"].get("degraded") else 0


async def load(fleet: Fleet, duration_s: float) -> list[Outcome]:
    """Open-loop bids at RATE_PER_GATEWAY to every gateway at once, for `duration_s`."""
    with generator_without_gc_pauses():
        async with new_session() as session:
            runs = await asyncio.gather(
                *(
                    open_loop(
                        session,
                        f"{gateway.url}/v1/bid",
                        lambda: BODY,
                        rate_per_s=RATE_PER_GATEWAY,
                        duration_s=duration_s,
                    )
                    for gateway in fleet.gateways
                )
            )
    return [outcome for run in runs for outcome in run.outcomes]


def late_or_failed(outcomes: list[Outcome]) -> list[str]:
    bound = TMAX_MS / 1000.0 + SLACK_S
    return [
        f"{o.status} {o.error_code or o.transport_error or ''} in {o.latency_s * 1000:.0f} ms"
        for o in outcomes
        if o.status != 200 or o.latency_s > bound
    ]


def split(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {host: after[host] - before[host] for host in after}


async def test_1_executions_split_evenly_across_three_tritons(fleet: Fleet) -> None:
    hosts = HOSTS[:3]
    before = fleet.executions(hosts)
    outcomes = await load(fleet, duration_s=6.0)
    done = split(before, fleet.executions(hosts))
    assert late_or_failed(outcomes) == []
    assert not any(o.degraded for o in outcomes)
    mean = sum(done.values()) / len(done)
    assert mean >= 50, f"too few executions to judge a split: {done}"
    shares = {host: count / mean for host, count in done.items()}
    print(f"\nMEASURED: {len(outcomes)} bids; executions per Triton {done}; share of even {shares}")
    assert all(0.75 <= share <= 1.25 for share in shares.values()), shares


async def test_2_a_sigkilled_triton_costs_no_error_and_rejoins_after_restart(fleet: Fleet) -> None:
    victim = fleet.triton(HOSTS[1])
    running = asyncio.create_task(load(fleet, duration_s=6.0))
    await asyncio.sleep(2.0)
    killed_at = time.monotonic()
    await asyncio.to_thread(victim.kill)
    outcomes = await running

    assert late_or_failed(outcomes) == [], f"{len(outcomes)} bids"
    degraded_after = [o.started - killed_at for o in outcomes if o.degraded and o.started >= killed_at]
    last_degraded_s = max(degraded_after, default=0.0)
    print(
        f"\nMEASURED: Triton SIGKILLed under load: {len(outcomes)} bids, 0 errors, "
        f"{len(degraded_after)} degraded, the last sent {last_degraded_s:.2f} s after the kill"
    )
    assert last_degraded_s <= 2.0, "\n".join(g.log()[-3000:] for g in fleet.gateways)
    assert sum(1 for o in outcomes if o.started >= killed_at + 2.0 and not o.degraded) >= 100

    victim.stop()
    fleet.triton(HOSTS[1]).start()  # same address and ports, a fresh server (on this thread: see fleet())
    restarted_at = time.monotonic()
    joined_s = await _first_execution(fleet, HOSTS[1], since=restarted_at, timeout_s=RESOLVE_INTERVAL_S + 5)
    print(f"MEASURED: the restarted Triton executed its first request {joined_s:.2f} s after it was ready")
    assert joined_s <= RESOLVE_INTERVAL_S


async def _first_execution(fleet: Fleet, host: str, since: float, timeout_s: float) -> float:
    """Seconds from `since` until `host` has executed a request, with bids flowing meanwhile."""
    async with new_session() as session:
        while time.monotonic() - since < timeout_s:
            await asyncio.gather(
                *(
                    open_loop(session, f"{g.url}/v1/bid", lambda: BODY, rate_per_s=100, duration_s=0.2)
                    for g in fleet.gateways
                )
            )
            if fleet.executions((host,))[host] > 0:
                return time.monotonic() - since
    raise AssertionError(f"{host} got no execution within {timeout_s} s of its restart")


async def test_3_a_fourth_triton_added_to_the_name_gets_its_share(fleet: Fleet) -> None:
    newcomer = fleet.triton(HOSTS[3])
    newcomer.start()
    running = asyncio.create_task(load(fleet, duration_s=RESOLVE_INTERVAL_S + 6.0))
    await asyncio.sleep(0.5)
    fleet.dns.set(NAME, list(HOSTS))
    added_at = time.monotonic()
    joined_s = await _wait_for_executions(fleet, HOSTS[3], timeout_s=RESOLVE_INTERVAL_S + 2.0)
    # Its share once every worker has re-resolved: measured over the rest of the run.
    await asyncio.sleep(max(0.0, added_at + RESOLVE_INTERVAL_S - time.monotonic()))
    before = fleet.executions(HOSTS)
    outcomes = await running
    done = split(before, fleet.executions(HOSTS))
    share = done[HOSTS[3]] / max(sum(done.values()), 1.0)
    print(
        f"\nMEASURED: a 4th Triton added to the name executed {joined_s:.2f} s later; "
        f"{share:.0%} of executions after the bound; per server {done}"
    )
    assert late_or_failed(outcomes) == []
    assert sum(done.values()) >= 100, done
    assert share >= 0.15


async def _wait_for_executions(fleet: Fleet, host: str, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if fleet.executions((host,))[host] > 0:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"{host} executed nothing within {timeout_s} s of joining the name")


async def test_4_every_triton_killed_readiness_stays_and_bids_degrade(fleet: Fleet) -> None:
    for server in list(fleet.tritons.values()):
        await asyncio.to_thread(server.kill)
    outcomes = await load(fleet, duration_s=3.0)
    assert late_or_failed(outcomes) == []
    assert outcomes
    assert all(o.degraded and o.has_bid for o in outcomes), "an answer was not a fallback bid"
    async with httpx.AsyncClient() as client:
        for gateway in fleet.gateways:
            # Several polls: each may reach either worker.
            statuses = [(await client.get(f"{gateway.url}/readyz")).status_code for _ in range(10)]
            assert statuses == [200] * 10
            model = await client.get(f"{gateway.url}/readyz", params={"model": "1"})
            assert model.status_code == 503
            assert model.json()["error"]["message"] == "not ready: model"
