"""A small, bounded async load generator for the fault and overload tests (aiohttp, loopback only).

`closed_loop`: `concurrency` clients, each sending its next request when the previous one is answered.
`open_loop`: requests start at a fixed arrival rate whatever the answers (how real bidders behave), with
the number outstanding capped so a stuck server cannot make the generator grow without bound.
Both stop after `duration_s` (or when `stop` is set) and record one `Outcome` per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import aiohttp
import numpy as np
import orjson

JSON_HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class Outcome:
    started: float  # time.monotonic() when the request was sent
    latency_s: float  # until the whole answer was read (or the transport failed)
    status: int  # HTTP status; 0 when no answer came (connection refused, reset, ...)
    degraded: bool = False  # ext.degraded of a 200
    nbr: int | None = None  # no-bid reason of a 200
    has_bid: bool = False  # a 200 with at least one bid
    error_code: str | None = None  # error.code of a 4xx/5xx
    retry_after: str | None = None
    transport_error: str | None = None  # the exception type when status is 0

    @property
    def finished(self) -> float:
        return self.started + self.latency_s


@contextlib.contextmanager
def generator_without_gc_pauses() -> Iterator[None]:
    """The load generator shares this pytest process with every module the suite imported (torch among
    them): a full collection of that heap stalled all 8 clients for ~200 ms at once (seen in the whole
    suite, never alone), and the stall was read as the gateway answering late. Freezing what exists now
    keeps the generator's own collections short, so the latencies are the gateway's."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def percentile_ms(outcomes: Iterable[Outcome], q: float) -> float:
    latencies = [o.latency_s for o in outcomes]
    if not latencies:
        raise ValueError("no outcomes to take a percentile of")
    return float(np.percentile(latencies, q)) * 1000.0


def new_session(limit: int = 0) -> aiohttp.ClientSession:
    """One session per load run; limit 0 = as many connections as requests outstanding."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def send(session: aiohttp.ClientSession, url: str, body: bytes) -> Outcome:
    """POST one body and classify the answer; transport failures become status 0, never exceptions."""
    started = time.monotonic()
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as response:
            payload = await response.read()
            latency = time.monotonic() - started
            status = response.status
            retry_after = response.headers.get("Retry-After")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Outcome(started, time.monotonic() - started, 0, transport_error=type(exc).__name__)
    if status == 200:
        document = orjson.loads(payload)
        ext = document.get("ext") or {}
        seatbids = document.get("seatbid") or []
        return Outcome(
            started,
            latency,
            status,
            degraded=bool(ext.get("degraded")),
            nbr=document.get("nbr"),
            has_bid=any(seat.get("bid") for seat in seatbids),
            retry_after=retry_after,
        )
    try:
        error = orjson.loads(payload)["error"]
        code = error.get("code") if isinstance(error, dict) else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        code = None
    return Outcome(started, latency, status, error_code=code, retry_after=retry_after)


async def closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    body: Callable[[], bytes],
    *,
    concurrency: int,
    duration_s: float,
    stop: asyncio.Event | None = None,
) -> list[Outcome]:
    end = time.monotonic() + duration_s
    outcomes: list[Outcome] = []

    async def client() -> None:
        while time.monotonic() < end and not (stop and stop.is_set()):
            outcomes.append(await send(session, url, body()))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcomes


@dataclass(frozen=True, slots=True)
class OpenLoopResult:
    outcomes: list[Outcome]
    offered_rate: float  # requests actually started per second
    skipped: int  # arrivals not sent because `max_outstanding` requests were still unanswered


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    body: Callable[[], bytes],
    *,
    rate_per_s: float,
    duration_s: float,
    max_outstanding: int = 512,
) -> OpenLoopResult:
    """Arrivals at `rate_per_s` for `duration_s`; a late generator catches up rather than slowing down."""
    outcomes: list[Outcome] = []
    pending: set[asyncio.Task[None]] = set()
    skipped = 0
    total = int(rate_per_s * duration_s)
    start = time.monotonic()

    async def one() -> None:
        outcomes.append(await send(session, url, body()))

    for i in range(total):
        delay = start + i / rate_per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= max_outstanding:
            skipped += 1
            continue
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
    sent_for = time.monotonic() - start
    if pending:
        await asyncio.gather(*pending)
    return OpenLoopResult(outcomes, (total - skipped) / max(sent_for, 1e-9), skipped)
