"""The Triton scorer over HTTP/REST with binary tensors: the cheap call, driven by the event loop itself.

Same contract as `gateway.scoring.triton.TritonScorer` (gRPC), for one Triton address ("host:port" of its
HTTP endpoint). Why another transport: a tritonclient gRPC aio call costs 134-177 us of client CPU plus a
poller thread; a KServe v2 request with the binary tensor data extension (a small JSON header, then the
raw little-endian tensors; `Inference-Header-Content-Length` says where the JSON ends) over a kept-alive
HTTP/1.1 connection, parsed by httptools inside an `asyncio.Protocol`, costs tens of microseconds and is
cheaper for Triton to take as well (docs/protocol/extension_binary_data.md in Triton's repository).

Per call the Python work is: one bytes join (request head, JSON header, tensor bytes: every part but
the timeout digits and two lengths is prebuilt per request shape), one write, one future, one timer, one
orjson parse of the response header and two `np.frombuffer` views of the body.

Connections: up to `max_connections` per server, one request at a time each (HTTP/1.1 without
pipelining: a response is matched to its request by order alone), idle ones reused last-in first-out (the
warmest socket), a new one opened only when all are busy, else the call waits for one within its deadline.
A connection that saw anything but a complete, well-framed answer (a deadline, a cancellation, a parse
error, bytes nobody asked for) is closed, never reused: a late answer would be read as the next call's.

Semantics, as the gRPC scorer's: the remaining budget bounds the client's wait and is sent as Triton's
per-request queue `timeout` (microseconds; the budget minus `queue_margin_s`, at least 1) so a request
that cannot run in time is dropped from Triton's queue (REJECTED in its metrics). Errors:
  * deadline passed before sending, or no free connection by then       -> ScoringTimeout
  * sent, and no complete answer by the deadline                         -> ScoringNoAnswer
  * Triton's "Request timeout expired" (its queue policy rejected it)    -> ScoringTimeout
  * connection refused, reset or closed before the answer was complete   -> ScoringUnreachable
    (strictly true only for a request Triton never read; one dropped after sending is reported the
    same, since scoring is idempotent and the fleet retries it once elsewhere)
  * HTTP 503 from Triton (UNAVAILABLE: the model cannot be served there now) -> ScoringUnreachable, as
    the gRPC scorer reports Triton's UNAVAILABLE status
  * any other status, a malformed or truncated answer, wrong sizes, missing outputs -> ScoringUnavailable
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from types import TracebackType
from typing import Final, Self, cast
from urllib.parse import quote

import httptools
import numpy as np
import numpy.typing as npt
import orjson

from gateway.core import feature_spec
from gateway.core.ports import Scores
from gateway.errors import (
    ScoringError,
    ScoringNoAnswer,
    ScoringTimeout,
    ScoringUnavailable,
    ScoringUnreachable,
)

# Triton's own words when its queue policy rejects a request whose `timeout` expired before it ran.
_TRITON_QUEUE_TIMEOUT: Final = "Request timeout expired"
_HEADER_LENGTH: Final = b"inference-header-content-length"
_OUTPUTS: Final = (feature_spec.OUTPUT_PCTR, feature_spec.OUTPUT_PCVR)
_FP32_BYTES: Final = 4
# Bytes of response allowed beyond the binary outputs themselves (the JSON header is ~250 bytes; a
# Triton error message a few hundred): a bound, so a server streaming garbage cannot exhaust memory.
_RESPONSE_SLACK_BYTES: Final = 64 * 1024
# Request shapes whose prebuilt header is kept; the micro-batcher produces a few hundred distinct row
# counts at most, and a full cache is simply emptied (rebuilding one costs a few microseconds).
_MAX_TEMPLATES: Final = 1024

_Response = tuple[int, bytes, int]  # HTTP status, body, Inference-Header-Content-Length (-1: absent)


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection carrying at most one request at a time.

    The httptools parser calls the `on_*` methods from inside `data_received`; the answer is handed to the
    waiting call only once `feed_data` returns, so bytes trailing a complete response in the same read
    (a server that framed its answer wrongly) fail the call instead of poisoning the next one.
    """

    def __init__(self, pool: TritonHttpScorer) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._waiter: asyncio.Future[_Response] | None = None
        self._status = 0
        self._header_length = -1
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = 0
        self._complete = False
        self._keep_alive = True
        self._trailing = False
        self.received = 0
        self.requests = 0

    # --- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A request is one write and its answer one small read: Nagle would only add latency.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Nobody asked: a late or unframed answer. Reading it as the next call's would be wrong.
            self.abort()
            return
        self.received += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(ScoringUnavailable(f"{self._pool.target} sent a malformed HTTP response: {exc}"))
            return
        if self._size > self._limit:
            # Failed as soon as it is known, not after reading (and buffering) what a broken server sends.
            self._fail(
                ScoringUnavailable(f"{self._pool.target} sent a response body over {self._limit} bytes")
            )
            return
        if self._complete:
            if self._trailing:
                self._fail(
                    ScoringUnavailable(f"{self._pool.target} sent bytes beyond its response's framing")
                )
                return
            self._waiter = None
            body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            waiter.set_result((self._status, body, self._header_length))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            reason = f": {exc}" if exc is not None else ""
            waiter.set_exception(
                ScoringUnreachable(
                    f"{self._pool.target} unreachable: connection closed after {self.received} bytes "
                    f"of its answer{reason}"
                )
            )

    # --- httptools callbacks ----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:
            self._trailing = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == len(_HEADER_LENGTH) and name.lower() == _HEADER_LENGTH:
            try:
                self._header_length = int(value)
            except ValueError:
                self._header_length = -2  # present but not a number: reported when the body is read

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= self._limit:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()

    # --- used by the scorer -----------------------------------------------------------------------------
    def send(self, message: bytes, limit: int) -> asyncio.Future[_Response]:
        """Writes one request; the future gets its response, or a ScoringError."""
        assert self.transport is not None
        self._status = 0
        self._header_length = -1
        self._chunks = []
        self._size = 0
        self._limit = limit
        self._complete = False
        self._trailing = False
        self.received = 0
        self.requests += 1
        waiter: asyncio.Future[_Response] = self._pool._loop.create_future()
        self._waiter = waiter
        self.transport.write(message)
        return waiter

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep_alive and self._waiter is None

    def expire(self) -> None:
        """The deadline passed with the answer incomplete: the call fails and the connection is closed."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # answered (or failed) in the same loop pass: the connection is fine
        waiter.set_exception(ScoringNoAnswer(f"{self._pool.target} did not answer before the deadline"))
        self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self._pool._forget(self)

    def _fail(self, error: ScoringError) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.abort()


class TritonHttpScorer:
    """`ports.Scorer` over Triton's HTTP/REST API with binary tensors, for one server address.

    `url` is "host:port" (an "http://" prefix is accepted). `await start()` (or `async with`) enables it
    inside the running event loop; connections open on first use. `model_version=""` lets Triton choose.
    `connections_opened` counts every connection ever opened (reuse shows as it staying small).
    """

    def __init__(
        self,
        url: str,
        *,
        model_name: str = feature_spec.MODEL_NAME,
        model_version: str = "1",
        ready_timeout_s: float = 1.0,
        queue_margin_s: float = 0.002,
        max_connections: int = 8,
    ) -> None:
        if queue_margin_s < 0:
            raise ValueError(f"queue_margin_s must be >= 0, got {queue_margin_s}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        address = url.removeprefix("http://").rstrip("/")
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"url must be host:port, got {url!r}")
        self.url = address
        self.model_name = model_name
        self.model_version = model_version
        self.max_connections = max_connections
        self.connections_opened = 0
        self._host = host.strip("[]")
        self._port = int(port)
        self._queue_margin_s = queue_margin_s
        self._ready_timeout_s = ready_timeout_s
        self.target = f"{model_name}:{model_version or 'default'} at {address}"
        model_path = f"/v2/models/{quote(model_name, safe='')}"
        if model_version:
            model_path += f"/versions/{quote(model_version, safe='')}"
        host_header = f"Host: {address}\r\n"
        # Everything of the request head but the two lengths, which change with the timeout's digits.
        self._infer_head = (
            f"POST {model_path}/infer HTTP/1.1\r\n{host_header}"
            "Content-Type: application/octet-stream\r\n"
            "Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
        ).encode()
        self._ready_request = f"GET {model_path}/ready HTTP/1.1\r\n{host_header}\r\n".encode()
        self._templates: dict[tuple[int, int, int], tuple[bytes, int]] = {}
        self._started = False
        self._loop: asyncio.AbstractEventLoop  # set by start(); nothing reads it before
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()

    async def start(self) -> None:
        # The connections belong to the loop the scorer starts in, as a grpc.aio channel does.
        self._loop = asyncio.get_running_loop()
        self._started = True

    async def aclose(self) -> None:
        self._started = False
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ScoringUnavailable(f"scorer for {self.target} is closed"))
        self._waiters.clear()
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def open_connections(self) -> int:
        return len(self._all)

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores:
        remaining = deadline - time.monotonic()
        if remaining <= 0.0:
            raise ScoringTimeout(f"deadline passed {-remaining * 1000:.1f} ms before calling {self.target}")
        if not self._started:
            raise ScoringUnavailable(f"scorer for {self.target} is not started")
        # No copy when the arrays already are what Triton reads (C order, little-endian); else one.
        cat_ids = np.ascontiguousarray(cat_ids, dtype="<i8")
        dense = np.ascontiguousarray(dense, dtype="<f4")
        rows = cat_ids.shape[0]
        prefix, data_bytes = self._template(rows, cat_ids, dense)
        # 0 would mean "no timeout" to Triton; a tiny budget still has to shorten it.
        timeout = b"%d}}" % max(1, int((remaining - self._queue_margin_s) * 1_000_000))
        json_length = len(prefix) + len(timeout)
        message = b"".join(
            (
                self._infer_head % (json_length, json_length + data_bytes),
                prefix,
                timeout,
                cat_ids.data,
                dense.data,
            )
        )
        status, body, header_length = await self._roundtrip(
            message, deadline, rows * len(_OUTPUTS) * _FP32_BYTES + _RESPONSE_SLACK_BYTES
        )
        if status != 200:
            raise self._error(status, body)
        return self._scores(body, header_length, rows)

    async def ready(self) -> bool:
        """Whether Triton reports the model ready; False (never an exception) when it cannot be asked."""
        if not self._started:
            return False
        try:
            status, _, _ = await self._roundtrip(
                self._ready_request, time.monotonic() + self._ready_timeout_s, _RESPONSE_SLACK_BYTES
            )
        except ScoringError:
            return False
        return status == 200

    # --- request building and response parsing ----------------------------------------------------------
    def _template(
        self, rows: int, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32]
    ) -> tuple[bytes, int]:
        """The JSON header up to the timeout's digits, and the tensor bytes' total, per request shape."""
        cat_cols = cat_ids.shape[1] if cat_ids.ndim == 2 else -1
        dense_cols = dense.shape[1] if dense.ndim == 2 else -1
        key = (rows, cat_cols, dense_cols)
        found = self._templates.get(key)
        if found is not None:
            return found
        if len(self._templates) >= _MAX_TEMPLATES:
            self._templates.clear()
        header = {
            "inputs": [
                {
                    "name": feature_spec.INPUT_CAT,
                    "shape": list(cat_ids.shape),
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": cat_ids.nbytes},
                },
                {
                    "name": feature_spec.INPUT_DENSE,
                    "shape": list(dense.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": dense.nbytes},
                },
            ],
            "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in _OUTPUTS],
            # Last, so that the per-call part is the tail: `"timeout":<digits>}}`.
            "parameters": {"timeout": 0},
        }
        encoded = orjson.dumps(header)
        prefix = encoded[: -len(b"0}}")]
        found = (prefix, cat_ids.nbytes + dense.nbytes)
        self._templates[key] = found
        return found

    def _scores(self, body: bytes, header_length: int, rows: int) -> Scores:
        if header_length < 0:
            raise ScoringUnavailable(
                f"{self.target} answered without a valid Inference-Header-Content-Length "
                f"(binary outputs were asked for)"
            )
        if header_length > len(body):
            raise ScoringUnavailable(
                f"{self.target} answered a {header_length}-byte inference header in a {len(body)}-byte body"
            )
        try:
            header = orjson.loads(body[:header_length])
            found, binary_bytes = _binary_outputs(header["outputs"], body, header_length, rows)
            version = header.get("model_version") or self.model_version
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ScoringUnavailable(
                f"{self.target} answered an inference response it could not be read from: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if binary_bytes != len(body) - header_length:
            raise ScoringUnavailable(
                f"{self.target} answered {len(body) - header_length} bytes of binary outputs, "
                f"its header accounts for {binary_bytes}"
            )
        pctr = found.get(feature_spec.OUTPUT_PCTR)
        pcvr = found.get(feature_spec.OUTPUT_PCVR)
        if pctr is None or pcvr is None:
            raise ScoringUnavailable(
                f"{self.target} answered without {feature_spec.OUTPUT_PCTR}/{feature_spec.OUTPUT_PCVR} "
                f"for {rows} rows"
            )
        return Scores(pctr=pctr, pcvr=pcvr, model_version=str(version))

    def _error(self, status: int, body: bytes) -> ScoringTimeout | ScoringUnavailable:
        try:
            message = str(orjson.loads(body)["error"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = body[:200].decode("utf-8", "replace")
        if _TRITON_QUEUE_TIMEOUT in message:
            return ScoringTimeout(
                f"{self.target} dropped the request from its queue: HTTP {status}: {message}"
            )
        if status == 503:
            return ScoringUnreachable(f"{self.target} unavailable: HTTP 503: {message}")
        return ScoringUnavailable(f"{self.target} failed: HTTP {status}: {message}")

    # --- connections ------------------------------------------------------------------------------------
    async def _roundtrip(self, message: bytes, deadline: float, limit: int) -> _Response:
        try:
            return await self._exchange(message, deadline, limit, retry_stale=True)
        except _StaleConnection:
            # A kept-alive connection the server had closed while idle (the close crossed the request
            # on the wire): not the server being down. Once more, on a fresh or another idle one.
            return await self._exchange(message, deadline, limit, retry_stale=False)

    async def _exchange(self, message: bytes, deadline: float, limit: int, *, retry_stale: bool) -> _Response:
        conn = await self._acquire(deadline)
        remaining = deadline - time.monotonic()
        if remaining <= 0.0:
            self._release(conn)
            raise ScoringTimeout(f"deadline passed while waiting for a connection to {self.target}")
        reused = conn.requests > 0
        waiter = conn.send(message, limit)
        timer = self._loop.call_later(remaining, conn.expire)
        try:
            response = await waiter
        except ScoringUnreachable as exc:
            conn.abort()
            if retry_stale and reused and conn.received == 0:
                raise _StaleConnection from exc
            raise
        except BaseException:
            # A deadline, a bad answer or the caller's cancellation: the answer may still be on its way,
            # so this connection can never carry another request.
            conn.abort()
            raise
        finally:
            timer.cancel()
        self._release(conn)
        return response

    async def _acquire(self, deadline: float) -> _Connection:
        # Bounded: every pass either returns, raises, or waits on a future that the deadline ends.
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
            if len(self._all) + self._opening < self.max_connections:
                return await self._connect(deadline)
            remaining = deadline - time.monotonic()
            if remaining <= 0.0:
                raise ScoringTimeout(
                    f"deadline passed with all {self.max_connections} connections to {self.target} busy"
                )
            waiter: asyncio.Future[_Connection | None] = self._loop.create_future()
            self._waiters.append(waiter)
            timer = self._loop.call_later(remaining, _expire_waiter, waiter, self.target)
            try:
                conn_or_none = await waiter
            except asyncio.CancelledError:
                # Handed a connection just as the caller was cancelled: pass it on, do not leak it.
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()
                    if handed is not None:
                        self._release(handed)
                raise
            finally:
                timer.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if conn_or_none is not None and not conn_or_none.closed:
                return conn_or_none
            # None: a slot freed (a connection closed); try again for an idle one or a new one.

    async def _connect(self, deadline: float) -> _Connection:
        remaining = deadline - time.monotonic()
        if remaining <= 0.0:
            raise ScoringTimeout(f"deadline passed before connecting to {self.target}")
        self._opening += 1
        try:
            try:
                async with asyncio.timeout(remaining):
                    _, conn = await self._loop.create_connection(
                        lambda: _Connection(self), self._host, self._port
                    )
            except TimeoutError as exc:
                raise ScoringNoAnswer(
                    f"{self.target} did not accept a connection before the deadline"
                ) from exc
            except OSError as exc:
                raise ScoringUnreachable(f"{self.target} unreachable: connect failed: {exc}") from exc
        except BaseException:
            self._opening -= 1
            self._wake_one(None)
            raise
        self._opening -= 1
        if not self._started:
            conn.abort()
            raise ScoringUnavailable(f"scorer for {self.target} is closed")
        self.connections_opened += 1
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if not conn.reusable or not self._started:
            conn.abort()
            return
        if not self._wake_one(conn):
            self._idle.append(conn)

    def _wake_one(self, conn: _Connection | None) -> bool:
        """Hands `conn` (or, with None, a freed slot) to the oldest call still waiting for one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _forget(self, conn: _Connection) -> None:
        """A connection closed: it leaves the pool, and its slot may let a waiting call open another."""
        if conn in self._all:
            self._all.discard(conn)
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)
            self._wake_one(None)


def _binary_outputs(
    outputs: list[dict[str, object]], body: bytes, header_length: int, rows: int
) -> tuple[dict[str, npt.NDArray[np.float32]], int]:
    """The FP32 [rows] views of the outputs the scorer reads, and the binary bytes the header accounts
    for. Raises KeyError/TypeError/ValueError for a header that does not describe what was asked."""
    found: dict[str, npt.NDArray[np.float32]] = {}
    offset = header_length
    for output in outputs:
        parameters = output["parameters"]
        size = parameters["binary_data_size"]  # type: ignore[index]
        if type(size) is not int or size < 0:
            raise TypeError(f"binary_data_size {size!r}")
        name = output["name"]
        if name in _OUTPUTS:
            if output["datatype"] != "FP32" or size != rows * _FP32_BYTES:
                raise ValueError(f"{name} is {output['datatype']} of {size} bytes for {rows} rows")
            # A view, no copy: the body bytes live as long as the scores do.
            found[str(name)] = np.frombuffer(body, dtype="<f4", count=rows, offset=offset)
        offset += size
    return found, offset - header_length


class _StaleConnection(Exception):
    """Internal: a reused connection was found closed before any byte of the answer."""


def _expire_waiter(waiter: asyncio.Future[_Connection | None], target: str) -> None:
    if not waiter.done():
        waiter.set_exception(ScoringTimeout(f"deadline passed waiting for a free connection to {target}"))
