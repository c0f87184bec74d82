"""TritonHttpScorer's wire handling against a fake HTTP server on loopback.

The fake server reads each request as Triton's HTTP frontend would (head, Content-Length body, the JSON
header of Inference-Header-Content-Length bytes, then the tensors) and answers whatever the test scripts:
valid, partial, malformed, fuzzed or nothing at all. Every case must end in a gateway ScoringError
subclass, by the deadline, with no connection left half-read in the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import orjson
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core import feature_spec
from gateway.errors import (
    ScoringError,
    ScoringNoAnswer,
    ScoringTimeout,
    ScoringUnavailable,
    ScoringUnreachable,
)
from gateway.scoring.triton_http import TritonHttpScorer

DEADLINE_S = 0.3
SLACK_S = 0.25  # timer granularity and a busy, shared 2-core host
# The fuzzed cases only have to prove "never a hang": a wider bound keeps a loaded host from flaking.
FUZZ_SLACK_S = 1.0


def rows(n: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(n)
    cat = rng.integers(0, 64, size=(n, len(feature_spec.CATEGORICAL_FIELDS)), dtype=np.int64)
    dense = rng.random((n, len(feature_spec.DENSE_FIELDS)), dtype=np.float32)
    return cat, dense


def expected_scores(n: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    base = np.arange(n, dtype=np.float32)
    return base / 1000.0, base / 100.0


def inference_body(
    n: int,
    *,
    outputs: tuple[str, ...] = (feature_spec.OUTPUT_PCTR, feature_spec.OUTPUT_PCVR),
    size_delta: int = 0,
) -> tuple[bytes, int]:
    """A response body as Triton's frontend writes one: JSON header, then the binary outputs in order."""
    pctr, pcvr = expected_scores(n)
    data = {feature_spec.OUTPUT_PCTR: pctr.tobytes(), feature_spec.OUTPUT_PCVR: pcvr.tobytes()}
    header = orjson.dumps(
        {
            "model_name": feature_spec.MODEL_NAME,
            "model_version": "1",
            "outputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": [n, 1],
                    "parameters": {"binary_data_size": len(data[name]) + size_delta},
                }
                for name in outputs
            ],
        }
    )
    return header + b"".join(data[name] for name in outputs), len(header)


def http_response(
    body: bytes,
    *,
    status: str = "200 OK",
    header_length: int | str | None = None,
    content_length: int | None = None,
    extra: str = "",
) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n"
    if header_length is not None:
        head += f"Inference-Header-Content-Length: {header_length}\r\n"
    head += f"Content-Length: {len(body) if content_length is None else content_length}\r\n{extra}\r\n"
    return head.encode() + body


def valid_response(n: int) -> bytes:
    body, header_length = inference_body(n)
    return http_response(body, header_length=header_length)


def error_response(status: str, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Request:
    line: bytes
    headers: dict[str, str]
    json_header: dict[str, object]
    tensors: bytes


Answer = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class FakeTriton:
    url: str
    requests: list[Request] = field(default_factory=list)
    connections: int = 0


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *fields = head[:-4].split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (f.decode().partition(":") for f in fields)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    split = int(headers.get("inference-header-content-length", len(body)))
    json_header = orjson.loads(body[:split]) if split else {}
    return Request(line, headers, json_header, body[split:])


@asynccontextmanager
async def fake_triton(answer: Answer) -> AsyncIterator[FakeTriton]:
    handlers: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.append(writer)
        fake.connections += 1
        try:
            for _ in range(1000):  # bounded: a test sends far fewer requests per connection
                request = await read_request(reader)
                if request is None:
                    return
                fake.requests.append(request)
                await answer(request, writer)
                if writer.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fake = FakeTriton(url=f"127.0.0.1:{port}")
    try:
        yield fake
    finally:
        server.close()
        # Closing each connection ends its handler (its read sees EOF); cancelling one would make
        # asyncio's stream callback log the CancelledError.
        for writer in writers:
            writer.close()
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=2.0)
            for task in stuck:
                task.cancel()
        await server.wait_closed()


def valid(request: Request, *, extra: str = "") -> bytes:
    shape = request.json_header["inputs"][0]["shape"]  # type: ignore[index]
    body, header_length = inference_body(shape[0])
    return http_response(body, header_length=header_length, extra=extra)


async def answer_valid(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(valid(request))
    await writer.drain()


def replies(*payloads: bytes, close: bool = False) -> Answer:
    """Answers the first request with the payloads (separate writes), then maybe closes; later requests
    (on any connection) get a valid answer, so a test can tell whether the scorer recovered cleanly."""
    answered = 0

    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        answered += 1
        if answered > 1:
            await answer_valid(request, writer)
            return
        for payload in payloads:
            writer.write(payload)
            await writer.drain()
        if close:
            writer.close()

    return answer


async def expect_error(
    answer: Answer, kind: type[ScoringError], match: str | None, n: int = 5
) -> ScoringError:
    async with fake_triton(answer) as fake, TritonHttpScorer(fake.url) as scorer:
        cat, dense = rows(n)
        started = time.monotonic()
        with pytest.raises(kind, match=match) as caught:
            await scorer.score(cat, dense, started + DEADLINE_S)
        assert time.monotonic() - started <= DEADLINE_S + SLACK_S
        # Kept only when the bad answer was still well framed; either way the next call is clean.
        assert scorer.open_connections <= 1
        scores = await scorer.score(cat, dense, time.monotonic() + 1)
        np.testing.assert_array_equal(scores.pctr, expected_scores(n)[0])
        return caught.value


# --- the request on the wire --------------------------------------------------------------------------
async def test_a_valid_answer_is_scores_and_the_request_is_triton_s_binary_format() -> None:
    async with fake_triton(answer_valid) as fake, TritonHttpScorer(fake.url, queue_margin_s=0.01) as scorer:
        cat, dense = rows(7)
        started = time.monotonic()
        scores = await scorer.score(cat, dense, started + 0.5)
    pctr, pcvr = expected_scores(7)
    np.testing.assert_array_equal(scores.pctr, pctr)
    np.testing.assert_array_equal(scores.pcvr, pcvr)
    assert scores.pctr.shape == (7,)
    assert scores.model_version == "1"
    (request,) = fake.requests
    assert request.line == b"POST /v2/models/ranker/versions/1/infer HTTP/1.1"
    assert request.headers["content-type"] == "application/octet-stream"
    inputs = request.json_header["inputs"]
    assert inputs == [
        {
            "name": "cat_ids",
            "shape": [7, 18],
            "datatype": "INT64",
            "parameters": {"binary_data_size": 7 * 144},
        },
        {"name": "dense", "shape": [7, 6], "datatype": "FP32", "parameters": {"binary_data_size": 7 * 24}},
    ]
    assert request.json_header["outputs"] == [
        {"name": "pctr", "parameters": {"binary_data": True}},
        {"name": "pcvr", "parameters": {"binary_data": True}},
    ]
    # Triton's queue timeout: the budget minus the margin, in microseconds.
    timeout = request.json_header["parameters"]["timeout"]  # type: ignore[index]
    assert 0.4 * 1e6 < timeout <= 0.49 * 1e6
    assert request.tensors == cat.astype("<i8").tobytes() + dense.astype("<f4").tobytes()


async def test_version_chosen_by_the_server_and_odd_inputs() -> None:
    async with fake_triton(answer_valid) as fake, TritonHttpScorer(fake.url, model_version="") as scorer:
        cat, dense = rows(3)
        # Not C-contiguous, other dtypes: sent as the INT64/FP32 rows they hold.
        scores = await scorer.score(
            np.asfortranarray(cat).astype(np.int32), dense.astype(np.float64), time.monotonic() + 1
        )
    assert scores.pctr.shape == (3,)
    assert fake.requests[0].line == b"POST /v2/models/ranker/infer HTTP/1.1"
    assert fake.requests[0].tensors == cat.tobytes() + dense.tobytes()


async def test_tiny_budget_still_sends_a_positive_timeout() -> None:
    async with fake_triton(answer_valid) as fake, TritonHttpScorer(fake.url, queue_margin_s=1.0) as scorer:
        await scorer.score(*rows(2), time.monotonic() + 0.2)
    assert fake.requests[0].json_header["parameters"] == {"timeout": 1}


async def test_expired_deadline_sends_nothing() -> None:
    async with fake_triton(answer_valid) as fake, TritonHttpScorer(fake.url) as scorer:
        with pytest.raises(ScoringTimeout, match="before calling"):
            await scorer.score(*rows(2), time.monotonic() - 0.001)
    assert fake.connections == 0


async def test_ready_asks_the_model_version_and_is_false_on_anything_else() -> None:
    async with fake_triton(replies(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) as fake:
        async with TritonHttpScorer(fake.url) as scorer:
            assert await scorer.ready()
        assert fake.requests[0].line == b"GET /v2/models/ranker/versions/1/ready HTTP/1.1"
    not_ready = replies(error_response("400 Bad Request", "not ready"))
    async with fake_triton(not_ready) as fake, TritonHttpScorer(fake.url) as scorer:
        assert not await scorer.ready()
    async with fake_triton(replies(b"")) as fake, TritonHttpScorer(fake.url, ready_timeout_s=0.1) as scorer:
        started = time.monotonic()
        assert not await scorer.ready()
        assert time.monotonic() - started < 0.1 + SLACK_S


# --- keep-alive and the pool ----------------------------------------------------------------------------
async def test_calls_reuse_one_kept_alive_connection() -> None:
    async with fake_triton(answer_valid) as fake, TritonHttpScorer(fake.url) as scorer:
        for _ in range(20):
            await scorer.score(*rows(3), time.monotonic() + 1)
    assert fake.connections == 1
    assert len(fake.requests) == 20


async def test_concurrent_calls_open_at_most_max_connections_and_wait_for_one() -> None:
    async def slow_valid(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.02)
        writer.write(valid(request))
        await writer.drain()

    async with fake_triton(slow_valid) as fake, TritonHttpScorer(fake.url, max_connections=2) as scorer:
        results = await asyncio.gather(*(scorer.score(*rows(4), time.monotonic() + 2) for _ in range(10)))
        assert all(r.pctr.shape == (4,) for r in results)
        assert fake.connections == scorer.connections_opened == 2
        # All busy until past the deadline: a timeout, and the request was never sent.
        busy = [asyncio.ensure_future(scorer.score(*rows(4), time.monotonic() + 2)) for _ in range(2)]
        await asyncio.sleep(0.005)
        with pytest.raises(ScoringTimeout, match=r"busy|free connection"):
            await scorer.score(*rows(4), time.monotonic() + 0.005)
        await asyncio.gather(*busy)
    assert len(fake.requests) == 12


async def test_connection_close_answers_are_used_then_not_reused() -> None:
    async def closing(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(valid(request, extra="Connection: close\r\n"))
        await writer.drain()
        writer.close()

    async with fake_triton(closing) as fake, TritonHttpScorer(fake.url) as scorer:
        for _ in range(3):
            await scorer.score(*rows(2), time.monotonic() + 1)
    assert fake.connections == 3


async def test_a_server_closing_an_idle_kept_alive_connection_costs_no_error() -> None:
    """The close races the next request on the wire: the scorer retries once on a fresh connection."""

    async def answer_then_drop(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(valid(request))
        await writer.drain()
        writer.close()  # no Connection: close header: the client believes it kept-alive

    async with fake_triton(answer_then_drop) as fake, TritonHttpScorer(fake.url) as scorer:
        await scorer.score(*rows(2), time.monotonic() + 1)
        await asyncio.sleep(0.02)
        await scorer.score(*rows(2), time.monotonic() + 1)
    assert fake.connections == 2


async def test_unsolicited_bytes_on_an_idle_connection_retire_it() -> None:
    async def valid_then_junk(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(valid(request))
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with fake_triton(valid_then_junk) as fake, TritonHttpScorer(fake.url) as scorer:
        await scorer.score(*rows(2), time.monotonic() + 1)
        await asyncio.sleep(0.05)
        assert scorer.open_connections == 0
        await scorer.score(*rows(2), time.monotonic() + 1)
    assert fake.connections == 2


async def test_a_cancelled_call_closes_its_connection() -> None:
    async def slow_valid(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(valid(request))
        await writer.drain()

    async with fake_triton(slow_valid) as fake, TritonHttpScorer(fake.url) as scorer:
        call = asyncio.ensure_future(scorer.score(*rows(2), time.monotonic() + 1))
        await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert scorer.open_connections == 0
        await asyncio.sleep(0.06)
        scores = await scorer.score(*rows(2), time.monotonic() + 1)
        assert scores.pctr.shape == (2,)
    assert fake.connections == 2


async def test_a_closed_scorer_refuses_and_drops_its_connections() -> None:
    async with fake_triton(answer_valid) as fake:
        scorer = TritonHttpScorer(fake.url)
        await scorer.start()
        await scorer.score(*rows(2), time.monotonic() + 1)
        assert scorer.open_connections == 1
        await scorer.aclose()
        assert scorer.open_connections == 0
        with pytest.raises(ScoringUnavailable, match="not started"):
            await scorer.score(*rows(2), time.monotonic() + 1)


# --- bad answers ----------------------------------------------------------------------------------------
async def test_chunked_answers_are_read() -> None:
    async def chunked(request: Request, writer: asyncio.StreamWriter) -> None:
        body, header_length = inference_body(request.json_header["inputs"][0]["shape"][0])  # type: ignore[index]
        head = (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            f"Inference-Header-Content-Length: {header_length}\r\n\r\n"
        ).encode()
        pieces = [body[i : i + 37] for i in range(0, len(body), 37)]
        writer.write(head)
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with fake_triton(chunked) as fake, TritonHttpScorer(fake.url) as scorer:
        scores = await scorer.score(*rows(9), time.monotonic() + 1)
        np.testing.assert_array_equal(scores.pcvr, expected_scores(9)[1])


async def test_an_answer_split_across_many_reads_is_read() -> None:
    async def trickle(request: Request, writer: asyncio.StreamWriter) -> None:
        payload = valid(request)
        for i in range(0, len(payload), 50):
            writer.write(payload[i : i + 50])
            await writer.drain()
            await asyncio.sleep(0.001)

    async with fake_triton(trickle) as fake, TritonHttpScorer(fake.url) as scorer:
        scores = await scorer.score(*rows(20), time.monotonic() + 1)
        np.testing.assert_array_equal(scores.pctr, expected_scores(20)[0])


N = 5
BODY, HEADER_LENGTH = inference_body(N)

CASES: list[tuple[str, Answer, type[ScoringError], str | None]] = [
    # The body stops short of its Content-Length and the server hangs up: closed mid-answer.
    (
        "truncated body, closed",
        replies(http_response(BODY[:-3], header_length=HEADER_LENGTH, content_length=len(BODY)), close=True),
        ScoringUnreachable,
        "closed after",
    ),
    # ... and the server keeps the connection open: silence until the deadline.
    (
        "truncated body, held open",
        replies(http_response(BODY[:-3], header_length=HEADER_LENGTH, content_length=len(BODY))),
        ScoringNoAnswer,
        "did not answer",
    ),
    (
        "content-length shorter than the body",
        replies(http_response(BODY, header_length=HEADER_LENGTH, content_length=len(BODY) - 4)),
        ScoringUnavailable,
        None,
    ),
    (
        "header length larger than the body",
        replies(http_response(BODY, header_length=len(BODY) + 1)),
        ScoringUnavailable,
        "inference header",
    ),
    (
        "header length not a number",
        replies(http_response(BODY, header_length="many")),
        ScoringUnavailable,
        "Inference-Header-Content-Length",
    ),
    (
        "no header length (a JSON-only answer)",
        replies(http_response(BODY)),
        ScoringUnavailable,
        "Inference-Header-Content-Length",
    ),
    (
        "non-JSON header",
        replies(http_response(b"<html>oops</html>" + BODY[HEADER_LENGTH:], header_length=17)),
        ScoringUnavailable,
        "could not be read",
    ),
    (
        "JSON header of the wrong shape",
        replies(http_response(b'["outputs"]', header_length=11)),
        ScoringUnavailable,
        "could not be read",
    ),
    (
        "missing output",
        replies(
            http_response(
                inference_body(N, outputs=("pctr",))[0],
                header_length=inference_body(N, outputs=("pctr",))[1],
            )
        ),
        ScoringUnavailable,
        "without pctr/pcvr",
    ),
    (
        "wrong binary size",
        replies(
            http_response(
                inference_body(N, size_delta=4)[0], header_length=inference_body(N, size_delta=4)[1]
            )
        ),
        ScoringUnavailable,
        "could not be read",
    ),
    (
        "500 with a JSON error",
        replies(error_response("500 Internal Server Error", "onnxruntime exploded")),
        ScoringUnavailable,
        "HTTP 500: onnxruntime exploded",
    ),
    (
        "400 for an unknown version",
        replies(error_response("400 Bad Request", "Request for unknown model: 'ranker' version 1")),
        ScoringUnavailable,
        "HTTP 400: Request for unknown model",
    ),
    (
        "400 with a non-JSON body",
        replies(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\noops!"),
        ScoringUnavailable,
        "HTTP 400: oops!",
    ),
    (
        "503, the model cannot be served there now",
        replies(error_response("503 Service Unavailable", "model unavailable")),
        ScoringUnreachable,
        "HTTP 503",
    ),
    (
        "closed mid-response",
        replies(b"HTTP/1.1 200 OK\r\nContent-Le", close=True),
        ScoringUnreachable,
        "closed after 27 bytes",
    ),
    ("closed before any answer", replies(close=True), ScoringUnreachable, "closed after 0 bytes"),
    ("never answers", replies(), ScoringNoAnswer, "did not answer before the deadline"),
    ("not HTTP at all", replies(b"SSH-2.0-OpenSSH_9.2\r\n"), ScoringUnavailable, "malformed HTTP"),
    (
        "a body far over what was asked",
        replies(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 10_000_000),
        ScoringUnavailable,
        "over",
    ),
    (
        "an upgrade",
        replies(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nxx"),
        ScoringError,
        None,
    ),
]


@pytest.mark.parametrize(("answer", "kind", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_answers_are_clean_scoring_errors_by_the_deadline(
    answer: Answer, kind: type[ScoringError], match: str | None
) -> None:
    await expect_error(answer, kind, match)


async def test_triton_s_queue_timeout_is_a_timeout_not_an_unanswered_call() -> None:
    for status in ("400 Bad Request", "503 Service Unavailable"):
        error = await expect_error(
            replies(error_response(status, "Request timeout expired")),
            ScoringTimeout,
            "dropped the request from its queue",
        )
        assert not isinstance(error, ScoringNoAnswer)


def test_under_uvloop_a_valid_call_and_a_silent_server() -> None:
    async def main() -> None:
        async with fake_triton(answer_valid) as fake, TritonHttpScorer(fake.url) as scorer:
            scores = await scorer.score(*rows(6), time.monotonic() + 1)
            np.testing.assert_array_equal(scores.pctr, expected_scores(6)[0])
        await expect_error(replies(), ScoringNoAnswer, "did not answer")

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


# --- fuzzed answers -------------------------------------------------------------------------------------
VALID = valid_response(N)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid response with a few random byte edits: flips, deletions, insertions or a truncation."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind in ("insert", "flip"):
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


async def score_against(payload: bytes, *, hold_open: bool) -> None:
    async with (
        fake_triton(replies(payload, close=not hold_open)) as fake,
        TritonHttpScorer(fake.url) as scorer,
    ):
        started = time.monotonic()
        budget = 0.05
        try:
            scores = await scorer.score(*rows(N), started + budget)
        except ScoringError:
            assert scorer.open_connections <= 1
        else:
            assert scores.pctr.shape == scores.pcvr.shape == (N,)
        assert time.monotonic() - started <= budget + FUZZ_SLACK_S


@settings(
    max_examples=150,
    deadline=None,
    database=None,  # no example database written into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)
@given(payload=mutated(), hold_open=st.booleans())
def test_fuzzed_answers_are_scores_or_scoring_errors(payload: bytes, hold_open: bool) -> None:
    # A loop per example: hypothesis drives plain functions; each example is a fresh server and scorer.
    asyncio.run(score_against(payload, hold_open=hold_open))
