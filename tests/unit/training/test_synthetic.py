from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.core import feature_spec as fs
from training import metrics, snapshots, synthetic
from training import world as w

REPO = Path(__file__).resolve().parents[3]
ROWS = 50_000


@pytest.fixture(scope="module")
def world() -> w.World:
    return w.make_world()


@pytest.fixture(scope="module")
def logs(world: w.World) -> synthetic.Logs:
    return synthetic.generate_logs(world, ROWS, synthetic.HOLDOUT_SEED)


def _arrays(logs: synthetic.Logs) -> dict[str, npt.NDArray[Any]]:
    return {
        "cat_ids": logs.cat_ids,
        "dense": logs.dense,
        "click": logs.click,
        "conversion": logs.conversion,
        "true_pctr": logs.true_pctr,
        "true_pcvr": logs.true_pcvr,
    }


def test_same_seed_same_arrays(logs: synthetic.Logs) -> None:
    again = synthetic.generate_logs(w.make_world(), ROWS, synthetic.HOLDOUT_SEED)
    for name, array in _arrays(logs).items():
        np.testing.assert_array_equal(array, _arrays(again)[name], err_msg=name)


def test_other_seed_other_rows(world: w.World, logs: synthetic.Logs) -> None:
    other = synthetic.generate_logs(world, ROWS, synthetic.TRAIN_SEED)
    assert not np.array_equal(other.cat_ids, logs.cat_ids)
    assert not np.array_equal(other.click, logs.click)


def test_shapes_dtypes_and_ranges(logs: synthetic.Logs) -> None:
    assert logs.cat_ids.shape == (ROWS, len(fs.CATEGORICAL_FIELDS))
    assert logs.cat_ids.dtype == np.int64
    assert logs.dense.shape == (ROWS, len(fs.DENSE_FIELDS))
    assert logs.dense.dtype == np.float32
    assert (logs.cat_ids >= 0).all()
    assert (logs.cat_ids < fs.BUCKETS).all()
    assert np.isfinite(logs.dense).all()
    # A conversion is always after a click.
    assert (logs.conversion <= logs.click).all()


def test_truth_has_the_documented_rates(logs: synthetic.Logs) -> None:
    assert 0.02 <= logs.click.mean() <= 0.04
    assert 0.02 <= logs.true_pctr.mean() <= 0.04
    clicked = logs.click == 1
    assert 0.04 <= logs.conversion[clicked].mean() <= 0.15
    # The truth ranks better than the ad prior alone, or there would be nothing for a model to learn.
    bayes = metrics.auc(logs.click, logs.true_pctr)
    prior = metrics.auc(logs.click, logs.dense[:, fs.DENSE_INDEX["ad_prior_ctr"]])
    assert bayes > prior + 0.05


def test_snapshot_bytes_are_reproducible(world: w.World, tmp_path: Path) -> None:
    first = snapshots.write_snapshots(world, tmp_path / "a")
    second = snapshots.write_snapshots(w.make_world(), tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_committed_snapshots_match_the_generator(world: w.World, tmp_path: Path) -> None:
    """The stores must serve exactly the entities the committed model was trained on."""
    for path in snapshots.write_snapshots(world, tmp_path):
        committed = REPO / "data" / "snapshots" / path.name
        assert committed.read_bytes() == path.read_bytes(), f"{committed.name} is stale: run make train"


def _gateway_row(
    user: dict[str, Any] | None,
    user_id: str,
    ad: dict[str, Any],
    pub: dict[str, Any],
    placement: dict[str, Any],
    request: dict[str, Any],
) -> tuple[list[int], list[float]]:
    """One row built the way the gateway builds it: store records and request values through feature_spec."""
    interests = user["interests"] if user else [fs.MISSING, fs.MISSING]
    values = {
        "user_id": user_id if user else fs.MISSING,
        "user_age": user["age"] if user else fs.MISSING,
        "user_gender": user["gender"] if user else fs.MISSING,
        "user_interest1": fs.iab_tier1(interests[0]),
        "user_interest2": fs.iab_tier1(interests[1]),
        "ad_id": ad["id"],
        "campaign_id": ad["campaign_id"],
        "advertiser": ad["advertiser"],
        "ad_category": fs.iab_tier1(ad["cat"]),
        "publisher": pub["bundle"] if pub["kind"] == "app" else pub["domain"],
        "pub_category": fs.iab_tier1(pub["cat"]),
        "device_type": str(request["devicetype"]),
        "os": request["os"].lower() if request["os"] else fs.MISSING,
        "country": request["country"].upper() if request["country"] else fs.MISSING,
        "tagid": placement["tagid"],
        "ad_size": fs.ad_size(placement["w"], placement["h"]),
        "position": str(placement["pos"]) if request["pos_known"] else fs.MISSING,
    }
    cat = [
        fs.hour_bucket(request["hour"]) if f.name == "hour" else fs.hash_field(f.name, values[f.name])
        for f in fs.CATEGORICAL_FIELDS
    ]
    dense = [
        user["ctr_hist"] if user else fs.DEFAULT_USER_CTR,
        user["activity"] if user else fs.DEFAULT_USER_ACTIVITY,
        ad["prior_ctr"],
        ad["prior_cvr"],
        *fs.hour_cycle(request["hour"]),
    ]
    return cat, dense


def test_snapshot_records_rebuild_the_training_rows(
    world: w.World, logs: synthetic.Logs, tmp_path: Path
) -> None:
    """Store records + request values -> feature_spec reproduce the generator's encoded rows exactly."""
    snapshots.write_snapshots(world, tmp_path)
    users = {u["id"]: u for u in snapshots.read_jsonl_gz(tmp_path / snapshots.USERS_FILE)}
    ads = {a["id"]: a for a in snapshots.read_jsonl_gz(tmp_path / snapshots.ADS_FILE)}
    pubs = snapshots.read_jsonl_gz(tmp_path / snapshots.PUBLISHERS_FILE)
    pub_by_id = {p["id"]: p for p in pubs}
    rows = logs.rows
    # Every kind of row: known and unknown users, missing os / country / position.
    sample = np.unique(
        np.concatenate(
            [
                np.arange(300),
                np.flatnonzero(~rows.user_known)[:50],
                np.flatnonzero(rows.os < 0)[:50],
                np.flatnonzero(rows.country < 0)[:50],
                np.flatnonzero(~rows.position_known)[:50],
            ]
        )
    )
    assert (~rows.user_known[sample]).sum() > 0
    for i in sample.tolist():
        user_id = world.users.ids[rows.user[i]]
        pub = pub_by_id[world.publishers.ids[rows.publisher[i]]]
        tagid = world.publishers.tagid[rows.placement[i]]
        (placement,) = [p for p in pub["placements"] if p["tagid"] == tagid]
        request = {
            "devicetype": int(w.DEVICE_TYPES[rows.device[i]]),
            "os": w.OSES[rows.os[i]] if rows.os[i] >= 0 else None,
            "country": w.COUNTRIES[rows.country[i]] if rows.country[i] >= 0 else None,
            "pos_known": bool(rows.position_known[i]),
            "hour": int(rows.hour[i]),
        }
        cat, dense = _gateway_row(
            users[user_id] if rows.user_known[i] else None,
            user_id,
            ads[world.ads.ids[rows.ad[i]]],
            pub,
            placement,
            request,
        )
        assert cat == logs.cat_ids[i].tolist(), f"row {i}"
        np.testing.assert_array_equal(np.asarray(dense, dtype=np.float32), logs.dense[i], err_msg=f"row {i}")


def test_snapshot_records_have_the_documented_fields(world: w.World, tmp_path: Path) -> None:
    snapshots.write_snapshots(world, tmp_path)
    users = snapshots.read_jsonl_gz(tmp_path / snapshots.USERS_FILE)
    ads = snapshots.read_jsonl_gz(tmp_path / snapshots.ADS_FILE)
    pubs = snapshots.read_jsonl_gz(tmp_path / snapshots.PUBLISHERS_FILE)
    assert len(users) == len(world.users.ids)
    assert set(users[0]) == {
        "id",
        "age",
        "gender",
        "interests",
        "ctr_hist",
        "activity",
        "devicetype",
        "os",
        "country",
    }
    assert set(ads[0]) == {"id", "campaign_id", "advertiser", "cat", "prior_ctr", "prior_cvr"}
    kinds = {p["kind"] for p in pubs}
    assert kinds == {"app", "site"}
    for pub in pubs:
        assert set(pub) == {"id", "kind", "bundle" if pub["kind"] == "app" else "domain", "cat", "placements"}
        assert 2 <= len(pub["placements"]) <= 4
        assert all(set(p) == {"tagid", "w", "h", "pos"} for p in pub["placements"])
