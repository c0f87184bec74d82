"""ONNX export of a trained Ranker, in the shape Triton 24.10's onnxruntime (1.19) loads.

Opset 17 and IR version 8 (onnxruntime 1.19 reads IR <= 10, but the serving stack is pinned at
"IR <= 9", and opset 17 needs only IR 8), one self-contained file (no external data), dynamic batch on
dim 0 because Triton batches requests along it. The legacy TorchScript exporter (`dynamo=False`) gives a
small, plain graph (Gather, MatMul, Gemm) whose IR version we can pin; the export is then verified against
torch on sample rows before anything is written where Triton would load it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch

from gateway.core import feature_spec as fs
from training.model import Ranker

OPSET: Final = 17
IR_VERSION: Final = 8
TOLERANCE: Final = 1e-5


class ExportMismatchError(RuntimeError):
    """The exported graph's outputs differ from torch's on the same rows."""


def _torch_export(
    model: Ranker, sample_cat: npt.NDArray[np.int64], sample_dense: npt.NDArray[np.float32], path: Path
) -> None:
    torch.onnx.export(
        model,
        (torch.from_numpy(sample_cat), torch.from_numpy(sample_dense)),
        path,
        input_names=[fs.INPUT_CAT, fs.INPUT_DENSE],
        output_names=[fs.OUTPUT_PCTR, fs.OUTPUT_PCVR],
        dynamic_axes={
            name: {0: "batch"} for name in (fs.INPUT_CAT, fs.INPUT_DENSE, fs.OUTPUT_PCTR, fs.OUTPUT_PCVR)
        },
        opset_version=OPSET,
        dynamo=False,
        do_constant_folding=True,
    )


def to_onnx_bytes(
    model: Ranker, sample_cat: npt.NDArray[np.int64], sample_dense: npt.NDArray[np.float32]
) -> bytes:
    model.eval()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.onnx"
        _torch_export(model, sample_cat, sample_dense, path)
        proto = onnx.load(str(path))
    proto.ir_version = IR_VERSION
    proto.producer_name = "bid-gateway training"
    onnx.checker.check_model(proto, full_check=True)
    return bytes(proto.SerializeToString())


def run_onnx(
    model_bytes: bytes, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(pctr, pcvr), each [N, 1], from onnxruntime on CPU."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    pctr, pcvr = session.run([fs.OUTPUT_PCTR, fs.OUTPUT_PCVR], {fs.INPUT_CAT: cat_ids, fs.INPUT_DENSE: dense})
    return np.asarray(pctr, dtype=np.float32), np.asarray(pcvr, dtype=np.float32)


def export(
    model: Ranker, path: Path, sample_cat: npt.NDArray[np.int64], sample_dense: npt.NDArray[np.float32]
) -> float:
    """Writes `path` once onnxruntime matches torch on the sample rows; returns the max abs difference."""
    model_bytes = to_onnx_bytes(model, sample_cat[:2], sample_dense[:2])
    got_ctr, got_cvr = run_onnx(model_bytes, sample_cat, sample_dense)
    with torch.no_grad():
        want_ctr, want_cvr = model(torch.from_numpy(sample_cat), torch.from_numpy(sample_dense))
    diff = max(
        float(np.abs(got_ctr - want_ctr.numpy()).max()), float(np.abs(got_cvr - want_cvr.numpy()).max())
    )
    if not diff <= TOLERANCE:
        raise ExportMismatchError(f"onnxruntime differs from torch by {diff:.3g} (> {TOLERANCE})")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model_bytes)
    return diff
