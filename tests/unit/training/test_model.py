from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gateway.core import feature_spec as fs
from training import export, synthetic
from training import model as model_module
from training import world as w
from training.model import Ranker, RankerConfig, rate_mask, transform_dense


@pytest.fixture(scope="module")
def sample() -> synthetic.Logs:
    return synthetic.generate_logs(w.make_world(), 2_000, seed=5)


def test_dense_transform_takes_logits_of_rates_only() -> None:
    dense = torch.tensor([[0.5, 3.0, 0.2, 1.0, 0.0, -1.0]])
    out = transform_dense(dense, rate_mask())
    rate = fs.DENSE_INDEX
    assert out[0, rate["user_ctr_hist"]].item() == pytest.approx(0.0, abs=1e-6)
    assert out[0, rate["ad_prior_ctr"]].item() == pytest.approx(np.log(0.2 / 0.8), rel=1e-5)
    # A rate of exactly 1 is clipped, so the logit stays finite.
    assert np.isfinite(out[0, rate["ad_prior_cvr"]].item())
    assert out[0, rate["user_activity"]].item() == pytest.approx(3.0)
    assert out[0, rate["hour_cos"]].item() == pytest.approx(-1.0)


def test_forward_gives_two_probability_columns(sample: synthetic.Logs) -> None:
    torch.manual_seed(0)
    model = Ranker(RankerConfig(embedding_dim=8, top_hidden=(32, 16)))
    model.fit_dense_scaling(sample.dense)
    model.eval()
    with torch.no_grad():
        pctr, pcvr = model(torch.from_numpy(sample.cat_ids), torch.from_numpy(sample.dense))
    assert pctr.shape == pcvr.shape == (len(sample), 1)
    assert bool(((pctr > 0) & (pctr < 1)).all())
    assert bool(((pcvr > 0) & (pcvr < 1)).all())


def test_export_matches_torch_and_pins_the_format(sample: synthetic.Logs, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Ranker(RankerConfig(embedding_dim=8, top_hidden=(32, 16)))
    model.fit_dense_scaling(sample.dense)
    path = tmp_path / "model.onnx"
    diff = export.export(model, path, sample.cat_ids[:500], sample.dense[:500])
    assert diff <= export.TOLERANCE
    # A batch size the export never saw: the batch axis is dynamic.
    pctr, pcvr = export.run_onnx(path.read_bytes(), sample.cat_ids[:37], sample.dense[:37])
    assert pctr.shape == pcvr.shape == (37, 1)


def test_category_crosses_fire_on_the_same_category_only() -> None:
    table = model_module.category_match_table("user_interest2", "ad_category")
    n_ad = fs.CATEGORICAL_FIELDS[fs.CAT_INDEX["ad_category"]].buckets
    for category in model_module.IAB_TIER1:
        index = fs.hash_field("user_interest2", category) * n_ad + fs.hash_field("ad_category", category)
        assert table[index].item() == 1.0
    assert int(table.sum().item()) <= len(model_module.IAB_TIER1)
    # The unknown interest never matches a known ad category (unless a collision says so, which it does not).
    missing = fs.hash_field("user_interest2", fs.MISSING) * n_ad + fs.hash_field("ad_category", "IAB1")
    assert table[missing].item() == 0.0
    # The model's vocabulary is the generator's.
    assert model_module.IAB_TIER1 == w.IAB_CATEGORIES
