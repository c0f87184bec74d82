"""A KServe transformer doing bid-gateway's work: the standard way to put Python around Triton.

    .venv-kserve/bin/python -m loadtests.kserve_transformer --http_port 8080 --model_name ranker \
        --predictor_host 127.0.0.1:8101 --predictor_protocol grpc-v2 --enable_grpc false

KServe's contract, unchanged: its ModelServer (FastAPI + uvicorn, 1 worker, its default event loop)
decodes the JSON body of `POST /v1/models/<name>:predict` into a dict; `Model.preprocess` turns it into
an `InferRequest`; KServe's own `predict` sends that to the predictor (the same Triton, gRPC v2);
`Model.postprocess` turns the `InferResponse` into the answer. The bid logic is not copied: the very
`gateway.core.pipeline.BidPipeline` the gateway runs does the work (feature assembly from the embedded
store via `gateway.core.features`, then the auction), split at its scoring step. `preprocess` starts
`decide()` with a scorer that hands the assembled rows over and waits; `postprocess` hands the scores
back and awaits the decision. No micro-batching: one Triton request per bid, as KServe does it.

What this transformer does not do that the gateway does: the cross-field request checks of
`gateway.api.decode` (the benchmark's requests are valid), metrics per stage, the circuit breaker and
the fallback scorer (a failed predictor call is a 500, KServe's behaviour). Each of those favours KServe.

kserve pins protobuf 6 (bid-gateway's venv holds protobuf 4 for tritonclient), so this runs from its own
venv: `kserve==0.21.0` plus `pip install --no-deps -e .` and the gateway's runtime dependencies. The
module imports kserve only inside `main()` (kserve parses sys.argv when imported) so the project's venv
can type-check and import it.
"""
# kserve is not installed in the project's venv (see above): its names are Any to mypy there.
# mypy: disable-error-code="import-not-found", allow-subclassing-any

from __future__ import annotations

import argparse
import asyncio
import contextvars
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from gateway.config import Settings
from gateway.core import feature_spec
from gateway.core.currency import CurrencyTable
from gateway.core.pipeline import BidPipeline, Decision, PipelineConfig
from gateway.core.ports import Scores
from gateway.openrtb import BidRequest, encode_response
from gateway.stores.embedded import EmbeddedFeatureStore

__all__ = ["main"]


@dataclass(slots=True)
class _Handoff:
    """One bid's rendezvous between preprocess (rows out), KServe's predict, and postprocess (scores in)."""

    rows: asyncio.Future[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]
    scores: asyncio.Future[Scores]
    decision: asyncio.Task[Decision] | None = None
    model_version: str = "1"
    extra: dict[str, Any] = field(default_factory=dict)


# Set by preprocess; postprocess runs later in the same task (KServe awaits both in Model.__call__), and
# the decide() task copies it when created, so each bid finds its own handoff without a shared table.
_CURRENT: contextvars.ContextVar[_Handoff] = contextvars.ContextVar("bid_handoff")


class _HandoffScorer:
    """`ports.Scorer` that lets KServe's predictor call do the scoring."""

    async def score(
        self,
        cat_ids: npt.NDArray[np.int64],
        dense: npt.NDArray[np.float32],
        deadline: float,  # noqa: ARG002 - KServe's predictor call carries its own timeout
    ) -> Scores:
        handoff = _CURRENT.get()
        handoff.rows.set_result((cat_ids, dense))
        return await handoff.scores

    async def ready(self) -> bool:
        return True


def _pipeline(snapshot_dir: Path) -> BidPipeline:
    settings = Settings()  # the gateway's defaults: same deadlines, seat and currency table
    config = PipelineConfig(
        seat=settings.seat,
        default_tmax_s=settings.default_tmax_ms / 1000.0,
        network_margin_s=settings.network_margin_ms / 1000.0,
        server_cap_s=settings.server_cap_ms / 1000.0,
        auction_reserve_s=settings.auction_reserve_ms / 1000.0,
    )
    store = EmbeddedFeatureStore.load(snapshot_dir)
    return BidPipeline(store, _HandoffScorer(), CurrencyTable(settings.currency_rates), config)


def _transformer_class(kserve: Any) -> type[Any]:
    """The Model subclass, built once kserve is imported (kserve reads sys.argv at import)."""
    infer_input = kserve.InferInput
    infer_request = kserve.InferRequest

    class BidTransformer(kserve.Model):
        def __init__(self, name: str, snapshot_dir: Path, model_version: str) -> None:
            super().__init__(name)
            self._snapshot_dir = snapshot_dir
            self._model_version = model_version
            self._pipeline: BidPipeline | None = None

        def load(self) -> bool:
            self._pipeline = _pipeline(self._snapshot_dir)
            self.ready = True
            return True

        async def preprocess(
            self,
            payload: dict[str, Any],
            headers: dict[str, str] | None = None,  # noqa: ARG002 - KServe's signature
        ) -> Any:
            received_at = time.monotonic()
            assert self._pipeline is not None
            request = msgspec.convert(payload, BidRequest)
            loop = asyncio.get_running_loop()
            handoff = _Handoff(rows=loop.create_future(), scores=loop.create_future())
            _CURRENT.set(handoff)
            handoff.decision = asyncio.create_task(self._pipeline.decide(request, received_at))
            await asyncio.wait((handoff.rows, handoff.decision), return_when=asyncio.FIRST_COMPLETED)
            if not handoff.rows.done():  # decided without scoring (e.g. no budget left): skip Triton
                return handoff
            cat_ids, dense = handoff.rows.result()
            cat = infer_input(feature_spec.INPUT_CAT, list(cat_ids.shape), "INT64")
            cat.set_data_from_numpy(cat_ids)
            rows = infer_input(feature_spec.INPUT_DENSE, list(dense.shape), "FP32")
            rows.set_data_from_numpy(dense)
            return infer_request(
                model_name=self.name,
                infer_inputs=[cat, rows],
                request_id=request.id,
                model_version=self._model_version,
            )

        async def predict(
            self,
            payload: Any,
            headers: dict[str, str] | None = None,
            response_headers: dict[str, str] | None = None,
        ) -> Any:
            if isinstance(payload, _Handoff):
                return payload
            try:
                return await super().predict(payload, headers, response_headers)
            except BaseException:
                handoff = _CURRENT.get()
                if handoff.decision is not None:
                    handoff.decision.cancel()
                raise

        async def postprocess(
            self,
            result: Any,
            headers: dict[str, str] | None = None,  # noqa: ARG002 - KServe's signature
            response_headers: dict[str, str] | None = None,  # noqa: ARG002 - KServe's signature
        ) -> bytes:
            handoff = _CURRENT.get()
            assert handoff.decision is not None
            if not handoff.scores.done() and not isinstance(result, _Handoff):
                pctr = result.get_output_by_name(feature_spec.OUTPUT_PCTR).as_numpy().reshape(-1)
                pcvr = result.get_output_by_name(feature_spec.OUTPUT_PCVR).as_numpy().reshape(-1)
                handoff.scores.set_result(Scores(pctr=pctr, pcvr=pcvr, model_version=self._model_version))
            decision = await handoff.decision
            # Bytes pass through KServe's v1 endpoint as the body (a dict would be orjson-encoded).
            return encode_response(decision.response)

    return BidTransformer


def main() -> None:
    import kserve  # noqa: PLC0415 - parses sys.argv at import; only the transformer process needs it

    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--snapshot_dir", type=Path, default=Settings().snapshot_dir)
    parser.add_argument("--model_version", default="1", help="Triton model version to score with")
    args, _ = parser.parse_known_args()
    model = _transformer_class(kserve)(args.model_name, args.snapshot_dir, args.model_version)
    model.load()
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
