"""The committed model versions, as Triton will load them: format, interface, and held-out quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from gateway.core import feature_spec as fs
from training import metrics, modelcard, synthetic
from training import world as w

MODEL_DIR = Path(__file__).resolve().parents[3] / "triton_models" / fs.MODEL_NAME
VERSIONS = ("1", "2")
SAMPLE_ROWS = 200_000


@pytest.fixture(scope="module")
def holdout() -> synthetic.Logs:
    # The held-out seed: rows the committed models never trained on.
    return synthetic.generate_logs(w.make_world(), SAMPLE_ROWS, synthetic.HOLDOUT_SEED)


def _score(version: str, logs: synthetic.Logs) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    session = ort.InferenceSession(
        str(MODEL_DIR / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    pctr, pcvr = session.run(
        [fs.OUTPUT_PCTR, fs.OUTPUT_PCVR], {fs.INPUT_CAT: logs.cat_ids, fs.INPUT_DENSE: logs.dense}
    )
    return np.asarray(pctr), np.asarray(pcvr)


@pytest.mark.parametrize("version", VERSIONS)
def test_onnx_file_is_what_triton_24_10_loads(version: str) -> None:
    path = MODEL_DIR / version / "model.onnx"
    assert path.stat().st_size < 10 * 1024 * 1024
    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(proto)
    # onnxruntime 1.19 in the Triton 24.10 container: IR <= 9 (we pin 8), default-domain opset 17.
    assert proto.ir_version <= 9
    assert {o.domain: o.version for o in proto.opset_import}.get("", 0) == 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer), (
        "weights must live inside the single model file"
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_onnx_interface_matches_the_contract(version: str) -> None:
    session = ort.InferenceSession(
        str(MODEL_DIR / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    outputs = {o.name: (o.type, o.shape) for o in session.get_outputs()}
    assert list(inputs) == [fs.INPUT_CAT, fs.INPUT_DENSE]
    assert inputs[fs.INPUT_CAT][0] == "tensor(int64)"
    assert inputs[fs.INPUT_CAT][1][1] == len(fs.CATEGORICAL_FIELDS)
    assert inputs[fs.INPUT_DENSE][0] == "tensor(float)"
    assert inputs[fs.INPUT_DENSE][1][1] == len(fs.DENSE_FIELDS)
    assert list(outputs) == [fs.OUTPUT_PCTR, fs.OUTPUT_PCVR]
    for dtype, shape in outputs.values():
        assert dtype == "tensor(float)"
        assert shape[1] == 1
    # Dynamic batch: a symbolic first dimension on every tensor.
    for _, shape in (*inputs.values(), *outputs.values()):
        assert isinstance(shape[0], str)


@pytest.mark.parametrize("version", VERSIONS)
def test_committed_model_ranks_close_to_the_truth(version: str, holdout: synthetic.Logs) -> None:
    pctr, pcvr = _score(version, holdout)
    assert pctr.shape == pcvr.shape == (SAMPLE_ROWS, 1)
    assert np.all((pctr > 0) & (pctr < 1))
    assert np.all((pcvr > 0) & (pcvr < 1))
    bayes = metrics.auc(holdout.click, holdout.true_pctr)
    baseline = metrics.auc(holdout.click, holdout.dense[:, fs.DENSE_INDEX["ad_prior_ctr"]])
    model = metrics.auc(holdout.click, pctr[:, 0])
    assert model >= bayes - 0.03, f"pCTR AUC {model:.4f} vs Bayes {bayes:.4f}"
    assert model > baseline + 0.02, f"pCTR AUC {model:.4f} vs ad-prior baseline {baseline:.4f}"
    # Calibrated on average: mean pCTR within 10% of the observed CTR.
    assert pctr.mean() == pytest.approx(holdout.click.mean(), rel=0.1)
    clicked = holdout.click == 1
    cvr_auc = metrics.auc(holdout.conversion[clicked], pcvr[clicked, 0])
    assert cvr_auc > 0.58, f"pCVR AUC {cvr_auc:.4f} on clicked rows"


def test_model_card_is_rendered_from_eval_json() -> None:
    """The committed card is exactly what modelcard renders from the committed numbers (no hand edits)."""
    result = json.loads((MODEL_DIR / "eval.json").read_text())
    assert set(result["versions"]) == set(VERSIONS)
    assert (MODEL_DIR / "README.md").read_text() == modelcard.render(result)
