"""SIGTERM during load: readiness turns false at once, bids keep being answered through the drain delay,
every bid in flight when the server stops accepting still completes, and the process exits in time."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from types import SimpleNamespace

import aiohttp
import orjson
import pytest

from gateway.local_triton import LocalTriton, free_ports
from tests.integration.bid_requests import ads_with_distinct_advertisers, candidate, site_request
from tests.integration.gateway_process import GatewayProcess, gateway_process
from tests.integration.load import JSON_HEADERS
from tests.integration.slow_model import slow_model_repository

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRAIN_DELAY_S = 1.0
GRACE_S = 10.0
# Longer than the drain delay: bids sent before SIGTERM are still running when uvicorn stops accepting.
MODEL_SLEEP_MS = 1500


@pytest.fixture(scope="module")
def slow_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    repository = slow_model_repository(
        tmp_path_factory.mktemp("drain"), sleep_ms=MODEL_SLEEP_MS, instances=2, queue_policy=False
    )
    with LocalTriton(free_ports(), model_repository=repository, startup_timeout_s=180.0) as server:
        yield server


async def _on_body_sent(
    _session: aiohttp.ClientSession, context: SimpleNamespace, _params: aiohttp.TraceRequestChunkSentParams
) -> None:
    sent: asyncio.Event | None = context.trace_request_ctx
    if sent is not None:
        sent.set()


def body_sent_tracing() -> aiohttp.TraceConfig:
    """Sets the Event passed as `trace_request_ctx` once the request body is written to the socket."""
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(_on_body_sent)
    return trace


async def bid(
    session: aiohttp.ClientSession, url: str, body: bytes, sent: asyncio.Event
) -> tuple[int, float]:
    """(status, finished at); status 0 when the connection failed (a dropped bid)."""
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS, trace_request_ctx=sent) as response:
            document = await response.read()
            status = response.status
    except (aiohttp.ClientError, OSError):
        return 0, time.monotonic()
    if status == 200:
        assert orjson.loads(document)["ext"]["degraded"] is False, "a bid was cut short: fallback used"
    return status, time.monotonic()


async def wait_until_draining(session: aiohttp.ClientSession, gateway: GatewayProcess) -> float:
    deadline = time.monotonic() + DRAIN_DELAY_S
    while time.monotonic() < deadline:
        async with session.get(f"{gateway.url}/readyz") as response:
            document = orjson.loads(await response.read())
            if response.status == 503:
                assert document["error"]["code"] == "draining", document
                return time.monotonic()
            assert response.status == 200, document
        await asyncio.sleep(0.01)
    raise AssertionError("/readyz did not turn 503 within the drain delay")


async def test_sigterm_finishes_every_bid_in_flight_then_exits(slow_triton: LocalTriton) -> None:
    ads = ads_with_distinct_advertisers(3)
    body = orjson.dumps(site_request([candidate(ad, bid=2.0 + i) for i, ad in enumerate(ads)], tmax=5000))
    env = {
        "BIDGW_TRITON_URL": slow_triton.http_address,
        "BIDGW_SERVER_CAP_MS": "5000",
        "BIDGW_BATCH_MAX_WAIT_US": "20000",  # the 8 bids leave as one Triton call
        "BIDGW_DRAIN_DELAY_S": str(DRAIN_DELAY_S),
        "BIDGW_SHUTDOWN_GRACE_S": str(GRACE_S),
    }
    with gateway_process(env) as gateway:
        url = f"{gateway.url}/v1/bid"
        async with aiohttp.ClientSession(trace_configs=[body_sent_tracing()]) as session:
            sent = [asyncio.Event() for _ in range(8)]
            in_flight = [asyncio.create_task(bid(session, url, body, event)) for event in sent]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in sent)), timeout=5.0)

            sigterm_at = time.monotonic()
            gateway.process.send_signal(signal.SIGTERM)
            draining_at = await wait_until_draining(session, gateway)
            # Still answering while draining: the load balancer may route here until it sees readiness.
            late_sent = asyncio.Event()
            during_drain = asyncio.create_task(bid(session, url, body, late_sent))
            answers = await asyncio.gather(*in_flight, during_drain)

        returncode = await asyncio.to_thread(gateway.process.wait, DRAIN_DELAY_S + GRACE_S + 5.0)
        exited_at = time.monotonic()
        shutdown_at = gateway.wait_for_line("Shutting down", timeout_s=1.0)
        gateway.wait_for_line("Waiting for connections to close", timeout_s=1.0)

    print(
        f"\nMEASURED: SIGTERM with {len(answers)} bids in flight: /readyz 503 after "
        f"{(draining_at - sigterm_at) * 1000:.0f} ms; uvicorn shut down after "
        f"{shutdown_at - sigterm_at:.2f} s; "
        f"last bid answered {max(at for _, at in answers) - sigterm_at:.2f} s; exit code {returncode} after "
        f"{exited_at - sigterm_at:.2f} s"
    )
    assert [status for status, _ in answers] == [200] * len(answers)
    # They were in flight when uvicorn stopped accepting (after the drain delay), and still completed.
    assert shutdown_at - sigterm_at >= DRAIN_DELAY_S
    assert all(at > shutdown_at for _, at in answers)
    assert exited_at - sigterm_at <= DRAIN_DELAY_S + GRACE_S
    # uvicorn re-raises the SIGTERM it handled once shut down cleanly: the process dies of it.
    assert returncode == -signal.SIGTERM


def test_a_gateway_that_was_never_loaded_exits_promptly_on_sigterm(slow_triton: LocalTriton) -> None:
    env = {"BIDGW_TRITON_URL": slow_triton.http_address, "BIDGW_DRAIN_DELAY_S": "0.2"}
    with gateway_process(env) as gateway:
        sigterm_at = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        try:
            returncode = gateway.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 5 s after SIGTERM:\n{gateway.log()}")
        took = time.monotonic() - sigterm_at
    assert returncode == -signal.SIGTERM
    assert 0.2 <= took < 2.0
