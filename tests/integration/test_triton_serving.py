"""The real local Triton serves the committed model exactly as onnxruntime computes it, and batches."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient

from gateway.core import feature_spec
from gateway.local_triton import DEFAULT_MODEL_REPOSITORY, LocalTriton
from tests.integration.triton_rows import metric_values, random_rows

pytestmark = pytest.mark.integration
VERSIONS = ["1", "2"]


def triton_inputs(
    cat: npt.NDArray[np.int64],
    dense: npt.NDArray[np.float32],
    module: type[grpcclient.InferInput] = grpcclient.InferInput,
) -> list[grpcclient.InferInput]:
    cat_input = module(feature_spec.INPUT_CAT, list(cat.shape), "INT64")
    cat_input.set_data_from_numpy(cat)
    dense_input = module(feature_spec.INPUT_DENSE, list(dense.shape), "FP32")
    dense_input.set_data_from_numpy(dense)
    return [cat_input, dense_input]


@pytest.mark.parametrize("version", VERSIONS)
def test_triton_scores_equal_onnxruntime_scores(triton: LocalTriton, version: str) -> None:
    cat, dense = random_rows(300, seed=int(version))
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    result = client.infer(feature_spec.MODEL_NAME, triton_inputs(cat, dense), model_version=version)
    session = ort.InferenceSession(
        str(DEFAULT_MODEL_REPOSITORY / feature_spec.MODEL_NAME / version / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    expected_pctr, expected_pcvr = session.run(
        [feature_spec.OUTPUT_PCTR, feature_spec.OUTPUT_PCVR],
        {feature_spec.INPUT_CAT: cat, feature_spec.INPUT_DENSE: dense},
    )
    pctr = result.as_numpy(feature_spec.OUTPUT_PCTR)
    pcvr = result.as_numpy(feature_spec.OUTPUT_PCVR)
    assert pctr.shape == pcvr.shape == (300, 1)
    assert pctr.dtype == pcvr.dtype == np.float32
    np.testing.assert_allclose(pctr, expected_pctr, rtol=0, atol=1e-5)
    np.testing.assert_allclose(pcvr, expected_pcvr, rtol=0, atol=1e-5)
    # Not a constant model: scores vary across rows and stay probabilities.
    assert 0 < pctr.min() < pctr.max() < 1
    assert 0 < pcvr.min() < pcvr.max() < 1


def test_both_versions_are_served_and_differ(triton: LocalTriton) -> None:
    cat, dense = random_rows(200, seed=7)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    scores = [
        client.infer(feature_spec.MODEL_NAME, triton_inputs(cat, dense), model_version=v).as_numpy("pctr")
        for v in VERSIONS
    ]
    assert not np.allclose(scores[0], scores[1], atol=1e-4)


async def test_dynamic_batcher_merges_concurrent_requests(triton: LocalTriton) -> None:
    labels = (("model", feature_spec.MODEL_NAME), ("version", "1"))
    before_requests = metric_values(triton.metrics_url, "nv_inference_request_success").get(labels, 0.0)
    before_execs = metric_values(triton.metrics_url, "nv_inference_exec_count").get(labels, 0.0)
    requests = 64
    client = aiogrpcclient.InferenceServerClient(triton.grpc_url)
    try:
        rows = [random_rows(50, seed=100 + i) for i in range(requests)]
        results = await asyncio.gather(
            *(
                client.infer(
                    feature_spec.MODEL_NAME,
                    triton_inputs(cat, dense, aiogrpcclient.InferInput),
                    model_version="1",
                )
                for cat, dense in rows
            )
        )
    finally:
        await client.close()
    assert all(r.as_numpy("pctr").shape == (50, 1) for r in results)
    requests_done = (
        metric_values(triton.metrics_url, "nv_inference_request_success")[labels] - before_requests
    )
    executions = metric_values(triton.metrics_url, "nv_inference_exec_count")[labels] - before_execs
    assert requests_done == requests
    # Fewer model executions than requests: the dynamic batcher merged concurrent requests.
    assert 0 < executions < requests
