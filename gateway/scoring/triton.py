"""The Triton scorer: one gRPC aio channel per worker, numpy in, numpy out.

This is the only module that imports tritonclient. Every failure leaves it as a gateway
exception: a passed deadline (before the call, gRPC DEADLINE_EXCEEDED, or Triton rejecting a request that
outlived its queue timeout) is `ScoringTimeout`; anything else Triton or the channel reports (unreachable,
model not ready, bad input) is `ScoringUnavailable`, raised from the tritonclient exception.

Each call carries the remaining budget twice: as the gRPC deadline (`client_timeout`, seconds) so the
caller stops waiting, and as Triton's per-request `timeout` (microseconds) so a request that cannot run
in time is dropped from Triton's queue instead of burning a model execution nobody waits for. The model's
queue policy allows that override only to shorten its default, which is what a bid budget does.
The queue timeout is the budget minus `queue_margin_s` (about one model execution): a request still
queued then cannot finish in time anyway, and Triton rejects it (counted as REJECTED in its metrics)
instead of the gRPC deadline cancelling it a moment later.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Final, Self

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from gateway.core import feature_spec
from gateway.core.ports import Scores
from gateway.errors import ScoringNoAnswer, ScoringTimeout, ScoringUnavailable, ScoringUnreachable

# Triton's own words when its queue policy rejects a request whose `timeout` expired before it ran.
_TRITON_QUEUE_TIMEOUT: Final = "Request timeout expired"
# tritonclient reports a gRPC failure with status str(grpc.StatusCode.X).
_DEADLINE_EXCEEDED: Final = "StatusCode.DEADLINE_EXCEEDED"
# No connection, or it dropped (Triton also says UNAVAILABLE for a model it cannot serve now).
_UNAVAILABLE: Final = "StatusCode.UNAVAILABLE"


def _channel_args(reconnect_backoff_ms: int) -> list[tuple[str, int]]:
    """tritonclient's own defaults, plus a short reconnect backoff.

    gRPC's default backoff grows to 120 s after repeated failures: a worker would keep failing fast for
    minutes after Triton came back. Capping it lets a restarted Triton be picked up within about a second.
    """
    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", min(reconnect_backoff_ms, 1000)),
        ("grpc.min_reconnect_backoff_ms", min(reconnect_backoff_ms, 1000)),
        ("grpc.max_reconnect_backoff_ms", reconnect_backoff_ms),
    ]


class TritonScorer:
    """`ports.Scorer` over Triton's gRPC API.

    `await start()` (or `async with`) opens the channel inside the running event loop (a grpc.aio channel
    belongs to the loop that created it); `aclose()` closes it. `model_version=""` lets Triton choose.
    """

    def __init__(
        self,
        url: str,
        *,
        model_name: str = feature_spec.MODEL_NAME,
        model_version: str = "1",
        ready_timeout_s: float = 1.0,
        reconnect_backoff_ms: int = 1000,
        queue_margin_s: float = 0.002,
    ) -> None:
        if queue_margin_s < 0:
            raise ValueError(f"queue_margin_s must be >= 0, got {queue_margin_s}")
        self.url = url
        self._queue_margin_s = queue_margin_s
        self.model_name = model_name
        self.model_version = model_version
        self._ready_timeout_s = ready_timeout_s
        self._reconnect_backoff_ms = reconnect_backoff_ms
        self._client: aioclient.InferenceServerClient | None = None
        self._target = f"{model_name}:{model_version or 'default'} at {url}"

    async def start(self) -> None:
        if self._client is None:
            self._client = aioclient.InferenceServerClient(
                self.url, channel_args=_channel_args(self._reconnect_backoff_ms)
            )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores:
        remaining = deadline - time.monotonic()
        if remaining <= 0.0:
            raise ScoringTimeout(f"deadline passed {-remaining * 1000:.1f} ms before calling {self._target}")
        client = self._client
        if client is None:
            raise ScoringUnavailable(f"scorer for {self._target} is not started")
        rows = cat_ids.shape[0]
        cat_input = aioclient.InferInput(feature_spec.INPUT_CAT, list(cat_ids.shape), "INT64")
        cat_input.set_data_from_numpy(cat_ids)
        dense_input = aioclient.InferInput(feature_spec.INPUT_DENSE, list(dense.shape), "FP32")
        dense_input.set_data_from_numpy(dense)
        try:
            result = await client.infer(
                self.model_name,
                [cat_input, dense_input],
                model_version=self.model_version,
                # 0 would mean "no timeout" to Triton; a tiny budget still has to shorten it.
                timeout=max(1, int((remaining - self._queue_margin_s) * 1_000_000)),
                client_timeout=remaining,
            )
        except InferenceServerException as exc:
            raise self._convert(exc) from exc
        pctr = result.as_numpy(feature_spec.OUTPUT_PCTR)
        pcvr = result.as_numpy(feature_spec.OUTPUT_PCVR)
        if pctr is None or pcvr is None or pctr.size != rows or pcvr.size != rows:
            raise ScoringUnavailable(
                f"{self._target} answered without {feature_spec.OUTPUT_PCTR}/{feature_spec.OUTPUT_PCVR} "
                f"for {rows} rows"
            )
        version: str = result.get_response().model_version or self.model_version
        return Scores(pctr=pctr.reshape(rows), pcvr=pcvr.reshape(rows), model_version=version)

    async def ready(self) -> bool:
        """Whether Triton reports the model ready; False (never an exception) when it cannot be asked."""
        client = self._client
        if client is None:
            return False
        try:
            return bool(
                await client.is_model_ready(
                    self.model_name, self.model_version, client_timeout=self._ready_timeout_s
                )
            )
        except InferenceServerException:
            return False

    def _convert(self, exc: InferenceServerException) -> ScoringTimeout | ScoringUnavailable:
        # Subclasses say what the fleet needs to know: ScoringUnreachable (retry elsewhere, eject now),
        # ScoringNoAnswer (counts towards ejecting a silent server); the rest is not the server's fault.
        message = exc.message() or ""
        status = exc.status() or ""
        if status == _DEADLINE_EXCEEDED:
            return ScoringNoAnswer(f"{self._target} did not answer before the deadline")
        if _TRITON_QUEUE_TIMEOUT in message:
            return ScoringTimeout(f"{self._target} dropped the request from its queue: {message}")
        if status == _UNAVAILABLE:
            return ScoringUnreachable(f"{self._target} unreachable: {status}: {message}")
        return ScoringUnavailable(f"{self._target} failed: {status or 'error'}: {message}")
