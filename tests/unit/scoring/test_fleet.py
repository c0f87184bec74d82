"""TritonFleet's picking, ejection, probing and re-resolution, over fake servers (one module, unit).

The real thing, three and four real Triton servers behind a real DNS server, is
tests/integration/test_fleet.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import numpy as np
import numpy.typing as npt
import pytest

from gateway.core.ports import Scores
from gateway.errors import (
    DiscoveryError,
    ScoringNoAnswer,
    ScoringTimeout,
    ScoringUnavailable,
    ScoringUnreachable,
)
from gateway.scoring.fleet import TritonFleet
from gateway.scoring.targets import DnsName, parse_target

ROWS = 3
CAT = np.zeros((ROWS, 2), dtype=np.int64)
DENSE = np.zeros((ROWS, 2), dtype=np.float32)


class FakeServer:
    """One server: answers, refuses (unreachable), stays silent, or holds calls until released."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.mode = "ok"
        self.model_ready = True
        self.calls = 0
        self.closed = False
        self.release = asyncio.Event()
        self.release.set()

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores:
        self.calls += 1
        await self.release.wait()
        if self.mode == "unreachable":
            raise ScoringUnreachable(f"{self.address} refused")
        if self.mode == "silent":
            raise ScoringNoAnswer(f"{self.address} silent")
        rows = cat_ids.shape[0]
        return Scores(
            pctr=np.full(rows, 0.1, np.float32), pcvr=np.full(rows, 0.2, np.float32), model_version="1"
        )

    async def ready(self) -> bool:
        return self.model_ready and self.mode == "ok"


class Servers(dict[str, FakeServer]):
    def connect(self, address: str) -> FakeServer:
        self[address] = FakeServer(address)
        return self[address]


def deadline(seconds: float = 1.0) -> float:
    return time.monotonic() + seconds


async def fixed_fleet(count: int, **options: float) -> tuple[TritonFleet, Servers]:
    servers = Servers()
    addresses = ",".join(f"10.0.0.{i}:8001" for i in range(1, count + 1))
    fleet = TritonFleet(parse_target(f"ipv4:{addresses}"), servers.connect, **options)  # type: ignore[arg-type]
    await fleet.start()
    return fleet, servers


async def test_sequential_calls_rotate_evenly_over_every_server() -> None:
    fleet, servers = await fixed_fleet(3)
    for _ in range(30):
        await fleet.score(CAT, DENSE, deadline())
    assert [s.calls for s in servers.values()] == [10, 10, 10]
    await fleet.aclose()
    assert all(s.closed for s in servers.values())


async def test_a_busy_server_gets_no_new_call_while_others_are_idle() -> None:
    fleet, servers = await fixed_fleet(3)
    busy = servers["10.0.0.1:8001"]
    busy.release.clear()
    held: list[asyncio.Task[Scores]] = []
    while busy.calls == 0:  # calls elsewhere finish; the first one on 10.0.0.1 stays outstanding
        held.append(asyncio.create_task(fleet.score(CAT, DENSE, deadline())))
        await asyncio.sleep(0)
    before = busy.calls
    for _ in range(20):
        await fleet.score(CAT, DENSE, deadline())
    assert busy.calls == before, "least outstanding rows sent a call to the server still holding one"
    busy.release.set()
    await asyncio.gather(*held)
    await fleet.aclose()


async def test_an_unreachable_server_is_ejected_and_its_call_retried_elsewhere() -> None:
    fleet, servers = await fixed_fleet(3, probe_interval_s=60)
    dead = servers["10.0.0.2:8001"]
    dead.mode = "unreachable"
    for _ in range(30):
        scores = await fleet.score(CAT, DENSE, deadline())  # never an error: retried on a live server
        assert scores.pctr.shape == (ROWS,)
    assert dead.calls == 1
    assert fleet.stats.ejections == 1
    assert fleet.stats.retries == 1
    assert sorted(fleet.healthy_addresses) == ["10.0.0.1:8001", "10.0.0.3:8001"]
    await fleet.aclose()


async def test_every_server_unreachable_fails_fast_with_scoring_unavailable() -> None:
    fleet, servers = await fixed_fleet(2, probe_interval_s=60)
    for server in servers.values():
        server.mode = "unreachable"
    with pytest.raises(ScoringUnreachable):
        await fleet.score(CAT, DENSE, deadline())
    with pytest.raises(ScoringUnavailable, match=r"no healthy Triton server .* all 2 ejected"):
        await fleet.score(CAT, DENSE, deadline())
    assert sum(s.calls for s in servers.values()) == 2
    assert not await fleet.ready()
    await fleet.aclose()


async def test_an_ejected_server_is_readmitted_when_its_model_is_ready_again() -> None:
    fleet, servers = await fixed_fleet(2, probe_interval_s=0.01)
    flaky = servers["10.0.0.1:8001"]
    flaky.mode = "unreachable"
    for _ in range(4):
        await fleet.score(CAT, DENSE, deadline())
    assert fleet.healthy_addresses == ["10.0.0.2:8001"]
    await asyncio.sleep(0.05)
    assert fleet.healthy_addresses == ["10.0.0.2:8001"], "readmitted while still refusing"
    flaky.mode = "ok"
    for _ in range(100):
        if len(fleet.healthy_addresses) == 2:
            break
        await asyncio.sleep(0.01)
    assert fleet.stats.readmissions == 1
    calls = flaky.calls
    for _ in range(10):
        await fleet.score(CAT, DENSE, deadline())
    assert flaky.calls == calls + 5
    await fleet.aclose()


async def test_a_silent_server_is_ejected_after_the_limit_but_never_the_last_one() -> None:
    fleet, servers = await fixed_fleet(2, probe_interval_s=60, eject_after_silent=2)
    for server in servers.values():
        server.mode = "silent"
    outcomes: Counter[str] = Counter()
    for _ in range(8):
        try:
            await fleet.score(CAT, DENSE, deadline())
        except ScoringNoAnswer:
            outcomes["silent"] += 1
    assert outcomes["silent"] == 8  # a timeout is not retried: the deadline is spent
    assert fleet.stats.ejections == 1
    assert len(fleet.healthy_addresses) == 1, "the last healthy server was ejected on timeouts"
    await fleet.aclose()


async def test_success_resets_the_silence_count() -> None:
    fleet, servers = await fixed_fleet(1, probe_interval_s=60, eject_after_silent=2)
    [server] = servers.values()
    for mode in ("silent", "ok", "silent", "ok", "silent"):
        server.mode = mode
        with contextlib.suppress(ScoringNoAnswer):
            await fleet.score(CAT, DENSE, deadline())
    assert server.calls == 5
    assert fleet.stats.ejections == 0
    await fleet.aclose()


async def test_a_passed_deadline_calls_nobody() -> None:
    fleet, servers = await fixed_fleet(2)
    with pytest.raises(ScoringTimeout):
        await fleet.score(CAT, DENSE, time.monotonic() - 0.001)
    assert sum(s.calls for s in servers.values()) == 0
    await fleet.aclose()


async def test_a_cancelled_call_gives_its_rows_back() -> None:
    fleet, servers = await fixed_fleet(1)
    [server] = servers.values()
    server.release.clear()
    task = asyncio.create_task(fleet.score(CAT, DENSE, deadline()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fleet._servers[server.address].outstanding_rows == 0
    await fleet.aclose()


class Dns:
    """A resolver whose answer the test changes, or makes fail."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.failing = False
        self.asked = 0

    async def __call__(self, name: DnsName, timeout_s: float) -> tuple[str, ...]:
        self.asked += 1
        if self.failing:
            raise DiscoveryError("resolver down")
        return self.addresses


async def test_re_resolution_adds_and_removes_servers_and_survives_failures() -> None:
    dns = Dns("10.0.0.1:8001", "10.0.0.2:8001")
    servers = Servers()
    fleet = TritonFleet(
        parse_target("dns:///triton:8001"),
        servers.connect,
        resolver=dns,
        resolve_interval_s=0.02,
        probe_interval_s=0.01,
    )
    await fleet.start()
    assert sorted(fleet.addresses) == ["10.0.0.1:8001", "10.0.0.2:8001"]

    leaving = servers["10.0.0.1:8001"]
    leaving.release.clear()
    held: list[asyncio.Task[Scores]] = []
    while leaving.calls == 0:  # calls on 10.0.0.2 finish; the first on 10.0.0.1 stays outstanding
        held.append(asyncio.create_task(fleet.score(CAT, DENSE, deadline())))
        await asyncio.sleep(0)
    dns.addresses = ("10.0.0.2:8001", "10.0.0.3:8001")
    for _ in range(100):
        if sorted(fleet.addresses) == ["10.0.0.2:8001", "10.0.0.3:8001"]:
            break
        await asyncio.sleep(0.01)
    assert sorted(fleet.addresses) == ["10.0.0.2:8001", "10.0.0.3:8001"]
    assert not leaving.closed, "closed while a call was still outstanding on it"
    leaving.release.set()
    await asyncio.gather(*held)
    await asyncio.sleep(0.01)
    assert leaving.closed
    calls = leaving.calls
    for _ in range(10):
        await fleet.score(CAT, DENSE, deadline())
    assert leaving.calls == calls
    assert servers["10.0.0.3:8001"].calls >= 5

    dns.failing = True
    asked = dns.asked
    while dns.asked < asked + 2:
        await asyncio.sleep(0.01)
    assert sorted(fleet.addresses) == ["10.0.0.2:8001", "10.0.0.3:8001"], "a failed lookup dropped servers"
    assert fleet.stats.resolution_failures >= 2
    await fleet.aclose()


async def test_a_name_that_never_resolved_fails_fast() -> None:
    dns = Dns()
    dns.failing = True
    fleet = TritonFleet(parse_target("dns:///triton:8001"), Servers().connect, resolver=dns)
    await fleet.start()
    with pytest.raises(ScoringUnavailable, match="no address resolved yet"):
        await fleet.score(CAT, DENSE, deadline())
    await fleet.aclose()
