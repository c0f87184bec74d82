from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gateway.core import feature_spec as fs
from training import snapshots, synthetic, train
from training import world as w


@pytest.mark.slow
def test_tiny_training_run_writes_loadable_models(tmp_path: Path) -> None:
    out, snaps = tmp_path / "ranker", tmp_path / "snapshots"
    train.main(["--out", str(out), "--snapshots", str(snaps), "--tiny"])

    rows = synthetic.generate_logs(w.make_world(), 1_000, synthetic.HOLDOUT_SEED)
    for spec in train.VERSIONS:
        session = ort.InferenceSession(
            str(out / str(spec.version) / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        pctr, pcvr = session.run(None, {fs.INPUT_CAT: rows.cat_ids, fs.INPUT_DENSE: rows.dense})
        for probabilities in (pctr, pcvr):
            assert probabilities.shape == (1_000, 1)
            assert np.isfinite(probabilities).all()
            assert ((probabilities > 0) & (probabilities < 1)).all()

    result = json.loads((out / train.EVAL_FILE).read_text())
    assert set(result["versions"]) == {str(s.version) for s in train.VERSIONS}
    assert 0.0 < result["reference"]["bayes"]["pctr"]["auc"] < 1.0
    card = (out / train.CARD_FILE).read_text()
    assert "| version 1 |" in card
    assert "| version 2 |" in card
    for name in (snapshots.USERS_FILE, snapshots.ADS_FILE, snapshots.PUBLISHERS_FILE):
        assert (snaps / name).stat().st_size > 0
