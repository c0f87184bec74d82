"""EmbeddedFeatureStore on snapshots from training's own writer, checked against training's encoding."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from gateway.core import feature_spec as fs
from gateway.core.ports import AD_CAT_FIELDS, USER_CAT_FIELDS, AdKeys, FeatureStore, user_defaults
from gateway.errors import StoreError
from gateway.stores.embedded import ADS_FILE, USERS_FILE, EmbeddedFeatureStore
from training import snapshots, synthetic
from training import world as w

REPO_ROOT = Path(__file__).resolve().parents[3]
REAL_SNAPSHOTS = REPO_ROOT / "data" / "snapshots"

USER_CAT_COLS = [fs.CAT_INDEX[name] for name in USER_CAT_FIELDS]
AD_CAT_COLS = [fs.CAT_INDEX[name] for name in AD_CAT_FIELDS]
USER_DENSE_COLS = [fs.DENSE_INDEX["user_ctr_hist"], fs.DENSE_INDEX["user_activity"]]
AD_DENSE_COLS = [fs.DENSE_INDEX["ad_prior_ctr"], fs.DENSE_INDEX["ad_prior_cvr"]]


def small_world() -> w.World:
    return w.make_world(n_users=300, n_ads=120, n_campaigns=30, n_advertisers=20, n_publishers=20)


@pytest.fixture(scope="module")
def world() -> w.World:
    return small_world()


@pytest.fixture
def snapshot_dir(tmp_path: Path, world: w.World) -> Path:
    snapshots.write_snapshots(world, tmp_path)
    return tmp_path


@pytest.fixture
def store(snapshot_dir: Path) -> EmbeddedFeatureStore:
    return EmbeddedFeatureStore.load(snapshot_dir)


def training_encoding(
    world: w.World, users: npt.NDArray[np.int64], ads: npt.NDArray[np.int64], *, user_known: bool = True
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """training/synthetic.py's (cat_ids, dense) for the given user and ad index pairs (context arbitrary)."""
    n = users.size
    zeros = np.zeros(n, dtype=np.int64)
    rows = synthetic.Rows(
        user=users,
        user_known=np.full(n, user_known),
        ad=ads,
        publisher=zeros,
        placement=zeros,
        device=zeros,
        os=zeros,
        country=zeros,
        position_known=np.ones(n, dtype=np.bool_),
        hour=zeros,
    )
    return synthetic.encode(world, rows)


def ad_keys(ad_ids: list[str], *, campaign: str = "c-x", advertiser: str = "x.com", cat: str = "") -> AdKeys:
    n = len(ad_ids)
    return AdKeys(
        ad_ids=ad_ids, campaign_ids=[campaign] * n, advertisers=[advertiser] * n, categories=[cat] * n
    )


# ------------------------------------------------------------------------------------------- loading


def test_load_holds_every_user_and_ad(store: EmbeddedFeatureStore, world: w.World) -> None:
    assert store.user_count == len(world.users.ids)
    assert store.ad_count == len(world.ads.ids)
    assert store.ready()


def test_store_satisfies_the_feature_store_protocol(store: EmbeddedFeatureStore) -> None:
    protocol_member: FeatureStore = store  # mypy checks the structural match
    assert protocol_member.ready()


@pytest.mark.parametrize("missing", [USERS_FILE, ADS_FILE])
def test_missing_snapshot_file_names_the_file(snapshot_dir: Path, missing: str) -> None:
    (snapshot_dir / missing).unlink()
    with pytest.raises(StoreError, match=missing):
        EmbeddedFeatureStore.load(snapshot_dir)


def _write_gz(path: Path, text: str) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)


def _user_line(**overrides: object) -> str:
    record: dict[str, object] = {
        "id": "u1",
        "age": "18-24",
        "gender": "F",
        "interests": ["IAB1", "IAB2"],
        "ctr_hist": 0.02,
        "activity": 1.5,
        "devicetype": 4,
        "os": "ios",
        "country": "USA",
    }
    record.update(overrides)
    return json.dumps(record) + "\n"


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        pytest.param(lambda p: p.write_bytes(b"not gzip at all"), "gzip", id="not-gzip"),
        pytest.param(
            lambda p: p.write_bytes(gzip.compress(_user_line().encode())[:-12]), "gzip", id="truncated"
        ),
        pytest.param(lambda p: _write_gz(p, _user_line() + "{not json\n"), "corrupt", id="bad-json"),
        pytest.param(lambda p: _write_gz(p, _user_line(ctr_hist="high")), "ctr_hist", id="wrong-type"),
        pytest.param(
            lambda p: _write_gz(p, _user_line().replace('"age"', '"agee"')), "age", id="missing-field"
        ),
        pytest.param(lambda p: _write_gz(p, _user_line() + _user_line()), "duplicate", id="duplicate-id"),
    ],
)
def test_corrupt_users_snapshot_raises_store_error_naming_the_file(
    snapshot_dir: Path, corrupt: Callable[[Path], object], reason: str
) -> None:
    corrupt(snapshot_dir / USERS_FILE)
    with pytest.raises(StoreError, match=USERS_FILE) as info:
        EmbeddedFeatureStore.load(snapshot_dir)
    assert reason in str(info.value)


def test_corrupt_ads_snapshot_names_the_ads_file(snapshot_dir: Path) -> None:
    _write_gz(snapshot_dir / ADS_FILE, '{"id": "ad1"}\n')
    with pytest.raises(StoreError, match=ADS_FILE):
        EmbeddedFeatureStore.load(snapshot_dir)


def test_empty_snapshots_load_and_serve_defaults(tmp_path: Path) -> None:
    _write_gz(tmp_path / USERS_FILE, "")
    _write_gz(tmp_path / ADS_FILE, "")
    store = EmbeddedFeatureStore.load(tmp_path)
    assert (store.user_count, store.ad_count) == (0, 0)
    feats = store.lookup_ads(ad_keys(["a", "b"]))
    assert feats.cat.shape == (2, len(AD_CAT_FIELDS))
    assert feats.cat[:, AD_CAT_FIELDS.index("ad_id")].tolist() == [fs.hash_field("ad_id", k) for k in "ab"]
    assert not feats.known.any()
    np.testing.assert_array_equal(
        feats.dense, np.array([[fs.DEFAULT_AD_CTR, fs.DEFAULT_AD_CVR]] * 2, dtype=np.float32)
    )
    assert not store.lookup_user("u1").known


# ------------------------------------------------------------------------------------------- users


def test_known_user_rows_equal_training_encoding(store: EmbeddedFeatureStore, world: w.World) -> None:
    users = np.arange(len(world.users.ids), dtype=np.int64)
    cat, dense = training_encoding(world, users, np.zeros_like(users))
    for i, user_id in enumerate(world.users.ids):
        feats = store.lookup_user(user_id)
        assert feats.known
        np.testing.assert_array_equal(feats.cat, cat[i, USER_CAT_COLS])
        np.testing.assert_array_equal(feats.dense, dense[i, USER_DENSE_COLS])


def test_unknown_user_equals_training_store_miss(tmp_path: Path, world: w.World) -> None:
    """Training's user-store miss keeps the hashed id and defaults the rest; the store must agree."""
    half = len(world.users.ids) // 2
    known_records = list(snapshots.user_records(world.users))[:half]
    snapshots.write_jsonl_gz(tmp_path / USERS_FILE, known_records)
    snapshots.write_jsonl_gz(tmp_path / ADS_FILE, snapshots.ad_records(world.ads))
    store = EmbeddedFeatureStore.load(tmp_path)
    users = np.arange(half, len(world.users.ids), dtype=np.int64)
    cat, dense = training_encoding(world, users, np.zeros_like(users), user_known=False)
    for row, user in enumerate(users.tolist()):
        feats = store.lookup_user(world.users.ids[user])
        assert not feats.known
        np.testing.assert_array_equal(feats.cat, cat[row, USER_CAT_COLS])
        np.testing.assert_array_equal(feats.dense, dense[row, USER_DENSE_COLS])


@pytest.mark.parametrize("key", ["stranger-1", "", None])
def test_unknown_and_anonymous_users_are_the_default_row(
    store: EmbeddedFeatureStore, key: str | None
) -> None:
    feats = store.lookup_user(key)
    defaults = user_defaults()
    assert not feats.known
    assert feats.cat[USER_CAT_FIELDS.index("user_id")] == fs.hash_field("user_id", fs.MISSING)
    np.testing.assert_array_equal(feats.cat, defaults.cat)
    np.testing.assert_array_equal(feats.dense, defaults.dense)


def test_served_rows_cannot_corrupt_the_store(store: EmbeddedFeatureStore, world: w.World) -> None:
    for key in (world.users.ids[0], "stranger", None):
        feats = store.lookup_user(key)
        with pytest.raises(ValueError, match="read-only"):
            feats.cat[0] = 0
        with pytest.raises(ValueError, match="read-only"):
            feats.dense[0] = 0.0


def test_interests_are_reduced_to_tier1(tmp_path: Path) -> None:
    _write_gz(
        tmp_path / USERS_FILE, _user_line(interests=["iab7-3", "IAB9-1"]) + _user_line(id="u2", interests=[])
    )
    _write_gz(tmp_path / ADS_FILE, "")
    store = EmbeddedFeatureStore.load(tmp_path)
    cat = store.lookup_user("u1").cat
    assert cat[USER_CAT_FIELDS.index("user_interest1")] == fs.hash_field("user_interest1", "IAB7")
    assert cat[USER_CAT_FIELDS.index("user_interest2")] == fs.hash_field("user_interest2", "IAB9")
    no_interests = store.lookup_user("u2").cat
    assert no_interests[USER_CAT_FIELDS.index("user_interest1")] == fs.hash_field(
        "user_interest1", fs.MISSING
    )
    assert no_interests[USER_CAT_FIELDS.index("user_interest2")] == fs.hash_field(
        "user_interest2", fs.MISSING
    )


# --------------------------------------------------------------------------------------------- ads


def test_known_ad_rows_equal_training_encoding(store: EmbeddedFeatureStore, world: w.World) -> None:
    ads = np.arange(len(world.ads.ids), dtype=np.int64)
    cat, dense = training_encoding(world, np.zeros_like(ads), ads)
    # The request's keys disagree with the store on purpose: a known ad is served from the snapshot.
    feats = store.lookup_ads(
        ad_keys(list(world.ads.ids), campaign="wrong", advertiser="wrong.com", cat="IAB1")
    )
    assert feats.known.all()
    np.testing.assert_array_equal(feats.cat, cat[:, AD_CAT_COLS])
    np.testing.assert_array_equal(feats.dense, dense[:, AD_DENSE_COLS])
    assert feats.cat.dtype == np.int64
    assert feats.dense.dtype == np.float32


def test_unknown_ads_are_hashed_from_the_request(store: EmbeddedFeatureStore, world: w.World) -> None:
    known_id = world.ads.ids[7]
    keys = AdKeys(
        ad_ids=["new-ad", known_id, "other-new"],
        campaign_ids=["camp-9", "ignored", "camp-10"],
        advertisers=["Brand.example", "ignored.com", "b.example"],
        categories=["IAB3-1", "IAB1", ""],
    )
    feats = store.lookup_ads(keys)
    np.testing.assert_array_equal(feats.known, [False, True, False])
    expected_new = {
        "ad_id": fs.hash_field("ad_id", "new-ad"),
        "campaign_id": fs.hash_field("campaign_id", "camp-9"),
        "advertiser": fs.hash_field("advertiser", "Brand.example"),  # raw, as training hashes its vocabulary
        "ad_category": fs.hash_field("ad_category", "IAB3"),
    }
    assert feats.cat[0].tolist() == [expected_new[name] for name in AD_CAT_FIELDS]
    assert feats.cat[2, AD_CAT_FIELDS.index("ad_category")] == fs.hash_field("ad_category", fs.MISSING)
    np.testing.assert_array_equal(feats.cat[1], store.lookup_ads(ad_keys([known_id])).cat[0])
    np.testing.assert_array_equal(
        feats.dense[[0, 2]], np.array([[fs.DEFAULT_AD_CTR, fs.DEFAULT_AD_CVR]] * 2, dtype=np.float32)
    )
    assert feats.dense[1, 0] == np.float32(world.ads.prior_ctr[7])


def test_no_candidates_gives_empty_arrays(store: EmbeddedFeatureStore) -> None:
    feats = store.lookup_ads(ad_keys([]))
    assert feats.cat.shape == (0, len(AD_CAT_FIELDS))
    assert feats.dense.shape == (0, 2)
    assert feats.known.shape == (0,)


def test_stats_count_hits_and_misses(store: EmbeddedFeatureStore, world: w.World) -> None:
    store.lookup_user(world.users.ids[0])
    store.lookup_user(world.users.ids[1])
    store.lookup_user("nobody")
    store.lookup_user(None)
    store.lookup_ads(ad_keys([world.ads.ids[0], "nope", world.ads.ids[2], "nope2", "nope3"]))
    stats = store.stats
    assert (stats.user_hits, stats.user_misses, stats.user_anonymous) == (2, 1, 1)
    assert (stats.ad_hits, stats.ad_misses) == (2, 3)


async def test_async_methods_serve_the_same_rows(store: EmbeddedFeatureStore, world: w.World) -> None:
    user = await store.user_features(world.users.ids[3])
    np.testing.assert_array_equal(user.cat, store.lookup_user(world.users.ids[3]).cat)
    keys = ad_keys([world.ads.ids[4], "unknown"])
    ads = await store.ad_features(keys)
    np.testing.assert_array_equal(ads.cat, store.lookup_ads(keys).cat)


def test_every_bucket_is_in_range(store: EmbeddedFeatureStore, world: w.World) -> None:
    user_buckets = fs.BUCKETS[USER_CAT_COLS]
    for key in [*world.users.ids, "x", None]:
        cat = store.lookup_user(key).cat
        assert ((cat >= 0) & (cat < user_buckets)).all()
    ads = store.lookup_ads(ad_keys([*world.ads.ids, "u1", "u2"], cat="IAB26-2"))
    assert ((ads.cat >= 0) & (ads.cat < fs.BUCKETS[AD_CAT_COLS])).all()


_PRINT_ROWS = """
import json, sys
from pathlib import Path
from gateway.stores.embedded import EmbeddedFeatureStore
from gateway.core.ports import AdKeys
store = EmbeddedFeatureStore.load(Path(sys.argv[1]))
users = [store.lookup_user(k).cat.tolist() for k in ("u00001", "u00002", "someone-new")]
ads = store.lookup_ads(AdKeys(["ad00003", "brand-new"], ["c", "c"], ["a.com", "a.com"], ["IAB2", "IAB2"]))
print(json.dumps([users, ads.cat.tolist()]))
"""


def test_buckets_are_stable_across_processes(snapshot_dir: Path) -> None:
    outputs = []
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _PRINT_ROWS, str(snapshot_dir)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1] == outputs[2]
    store = EmbeddedFeatureStore.load(snapshot_dir)
    assert outputs[0][0][1] == store.lookup_user("u00002").cat.tolist()


# ------------------------------------------------------------------------------ committed snapshots


def test_committed_snapshots_match_the_training_world() -> None:
    """The committed data/snapshots are the world the model was trained on, encoded the same way."""
    store = EmbeddedFeatureStore.load(REAL_SNAPSHOTS)
    world = w.make_world()
    assert store.user_count == len(world.users.ids) > 0
    assert store.ad_count == len(world.ads.ids) > 0
    rng = np.random.default_rng(0)
    users = rng.choice(len(world.users.ids), size=200, replace=False).astype(np.int64)
    ads = rng.choice(len(world.ads.ids), size=200, replace=False).astype(np.int64)
    cat, dense = training_encoding(world, users, ads)
    served = store.lookup_ads(ad_keys([world.ads.ids[a] for a in ads.tolist()]))
    np.testing.assert_array_equal(served.cat, cat[:, AD_CAT_COLS])
    np.testing.assert_array_equal(served.dense, dense[:, AD_DENSE_COLS])
    for row, user in enumerate(users.tolist()):
        feats = store.lookup_user(world.users.ids[user])
        np.testing.assert_array_equal(feats.cat, cat[row, USER_CAT_COLS])
        np.testing.assert_array_equal(feats.dense, dense[row, USER_DENSE_COLS])


# ------------------------------------------------------------------------- all-known fast path


@pytest.mark.parametrize("count", [1, 2, 50])
def test_all_known_ads_match_the_general_path(
    store: EmbeddedFeatureStore, world: w.World, count: int
) -> None:
    """Every ad known takes the one-call path: the same rows as when an unknown ad forces the general one."""
    ids = [world.ads.ids[(7 * k) % len(world.ads.ids)] for k in range(count)]
    fast = store.lookup_ads(ad_keys(ids))
    general = store.lookup_ads(ad_keys([*ids, "unknown"]))
    np.testing.assert_array_equal(fast.cat, general.cat[:count])
    np.testing.assert_array_equal(fast.dense, general.dense[:count])
    np.testing.assert_array_equal(fast.known, general.known[:count])
    assert fast.cat.shape == (count, len(AD_CAT_FIELDS))
    assert fast.dense.shape == (count, 2)
    assert (fast.known.shape, fast.known.dtype) == ((count,), np.dtype(np.bool_))
    assert fast.known.all()
    assert (store.stats.ad_hits, store.stats.ad_misses) == (2 * count, 1)


def test_served_ad_rows_are_the_callers_own(store: EmbeddedFeatureStore, world: w.World) -> None:
    """A caller writing into what it was served cannot change what the next request reads."""
    keys = ad_keys(list(world.ads.ids[:3]))
    first = store.lookup_ads(keys)
    expected_cat, expected_dense = first.cat.copy(), first.dense.copy()
    first.cat[:] = -1
    first.dense[:] = -1.0
    first.known[:] = False
    again = store.lookup_ads(keys)
    np.testing.assert_array_equal(again.cat, expected_cat)
    np.testing.assert_array_equal(again.dense, expected_dense)
    assert again.known.all()
