"""Request context and row assembly: strings formed as training formed them, columns where the spec says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.core import feature_spec as fs
from gateway.core.features import (
    CONTEXT_CAT_FIELDS,
    CONTEXT_DENSE_FIELDS,
    RequestContext,
    _context_bucket,
    assemble,
    context_from_request,
    user_key,
)
from gateway.core.ports import (
    AD_CAT_FIELDS,
    AD_DENSE_FIELDS,
    USER_CAT_FIELDS,
    USER_DENSE_FIELDS,
    AdFeatures,
    AdKeys,
    UserFeatures,
)
from gateway.local_triton import DEFAULT_MODEL_REPOSITORY
from gateway.openrtb import BidRequest
from gateway.stores.embedded import EmbeddedFeatureStore
from training import snapshots, synthetic
from training import world as w

REPO_ROOT = Path(__file__).resolve().parents[3]
CTX = {name: j for j, name in enumerate(CONTEXT_CAT_FIELDS)}


def request(**fields: Any) -> BidRequest:
    """A BidRequest from JSON-shaped fields, decoded as the gateway decodes one."""
    body = {"id": "r1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}], **fields}
    return msgspec.convert(body, BidRequest)


def ctx_bucket(context: RequestContext, field: str, imp: int = 0) -> int:
    return int(context.cat[imp, CTX[field]])


def expect(field: str, value: str) -> int:
    return fs.hash_field(field, value)


def random_user(rng: np.random.Generator) -> UserFeatures:
    buckets = fs.BUCKETS[[fs.CAT_INDEX[n] for n in USER_CAT_FIELDS]]
    return UserFeatures(
        cat=rng.integers(0, buckets).astype(np.int64),
        dense=rng.random(len(USER_DENSE_FIELDS)).astype(np.float32),
        known=True,
    )


def random_ads(rng: np.random.Generator, n: int) -> AdFeatures:
    buckets = fs.BUCKETS[[fs.CAT_INDEX[n] for n in AD_CAT_FIELDS]]
    return AdFeatures(
        cat=rng.integers(0, buckets, size=(n, len(AD_CAT_FIELDS))).astype(np.int64),
        dense=rng.random((n, len(AD_DENSE_FIELDS))).astype(np.float32),
        known=np.ones(n, dtype=np.bool_),
    )


# ---------------------------------------------------------------------------------------- user key


@pytest.mark.parametrize(
    ("user", "key"),
    [
        ({"id": "u1", "buyeruid": "b1"}, "u1"),
        ({"buyeruid": "b1"}, "b1"),
        ({"id": "", "buyeruid": "b1"}, "b1"),
        ({}, None),
        ({"id": "", "buyeruid": ""}, None),
        (None, None),
    ],
)
def test_user_key_prefers_id_then_buyeruid(user: dict[str, str] | None, key: str | None) -> None:
    req = request() if user is None else request(user=user)
    assert user_key(req) == key


# ----------------------------------------------------------------------------------------- context


def test_app_context_forms_strings_as_training() -> None:
    ctx = context_from_request(
        request(
            app={"bundle": "com.example.game1", "domain": "game.example", "cat": ["IAB9-30", "IAB1"]},
            device={"devicetype": 4, "os": "iOS", "geo": {"country": "usa"}},
            imp=[{"id": "1", "tagid": "pub0001-slot2", "banner": {"w": 320, "h": 50, "pos": 3}}],
        ),
        hour=21,
    )
    assert ctx.cat.shape == (1, len(CONTEXT_CAT_FIELDS))
    assert ctx.cat.dtype == np.int64
    assert ctx_bucket(ctx, "publisher") == expect("publisher", "com.example.game1")
    assert ctx_bucket(ctx, "pub_category") == expect("pub_category", "IAB9")
    assert ctx_bucket(ctx, "device_type") == expect("device_type", "4")
    assert ctx_bucket(ctx, "os") == expect("os", "ios")
    assert ctx_bucket(ctx, "country") == expect("country", "USA")
    assert ctx_bucket(ctx, "tagid") == expect("tagid", "pub0001-slot2")
    assert ctx_bucket(ctx, "ad_size") == expect("ad_size", "320x50")
    assert ctx_bucket(ctx, "position") == expect("position", "3")
    assert ctx_bucket(ctx, "hour") == 21
    np.testing.assert_array_equal(ctx.dense, np.array(fs.hour_cycle(21), dtype=np.float32))
    assert ctx.dense.dtype == np.float32


def test_app_without_bundle_falls_back_to_its_domain() -> None:
    ctx = context_from_request(request(app={"domain": "game.example"}), hour=0)
    assert ctx_bucket(ctx, "publisher") == expect("publisher", "game.example")


def test_site_context_uses_domain_and_publisher_category_fallback() -> None:
    ctx = context_from_request(
        request(site={"domain": "news3.example", "page": "https://x", "publisher": {"cat": ["IAB12-1"]}}),
        hour=0,
    )
    assert ctx_bucket(ctx, "publisher") == expect("publisher", "news3.example")
    assert ctx_bucket(ctx, "pub_category") == expect("pub_category", "IAB12")


def test_site_category_wins_over_its_publishers() -> None:
    ctx = context_from_request(
        request(site={"domain": "d", "cat": ["IAB2"], "publisher": {"cat": ["IAB12"]}}), 0
    )
    assert ctx_bucket(ctx, "pub_category") == expect("pub_category", "IAB2")


@pytest.mark.parametrize(
    ("dooh", "publisher", "category"),
    [
        (
            {"id": "screen-7", "domain": "screens.example", "publisher": {"cat": ["IAB19-2"]}},
            "screens.example",
            "IAB19",
        ),
        ({"id": "screen-7"}, "screen-7", fs.MISSING),
        ({}, fs.MISSING, fs.MISSING),
    ],
)
def test_dooh_context(dooh: dict[str, Any], publisher: str, category: str) -> None:
    ctx = context_from_request(request(dooh=dooh), hour=0)
    assert ctx_bucket(ctx, "publisher") == expect("publisher", publisher)
    assert ctx_bucket(ctx, "pub_category") == expect("pub_category", category)


def test_request_without_publisher_or_device_hashes_missing() -> None:
    ctx = context_from_request(request(imp=[{"id": "1", "native": {"request": "{}"}}]), hour=5)
    for field in (
        "publisher",
        "pub_category",
        "device_type",
        "os",
        "country",
        "tagid",
        "ad_size",
        "position",
    ):
        assert ctx_bucket(ctx, field) == expect(field, fs.MISSING), field


def test_device_without_geo_or_os_hashes_missing_for_those_only() -> None:
    ctx = context_from_request(request(device={"devicetype": 2}), hour=0)
    assert ctx_bucket(ctx, "device_type") == expect("device_type", "2")
    assert ctx_bucket(ctx, "os") == expect("os", fs.MISSING)
    assert ctx_bucket(ctx, "country") == expect("country", fs.MISSING)


@pytest.mark.parametrize(
    ("imp", "size"),
    [
        ({"banner": {"w": 728, "h": 90, "format": [{"w": 300, "h": 250}]}}, "728x90"),
        ({"banner": {"format": [{"w": 300}, {"w": 300, "h": 600}, {"w": 320, "h": 50}]}}, "300x600"),
        ({"banner": {"w": 300, "format": [{"w": 160, "h": 600}]}}, "160x600"),
        ({"banner": {"format": []}, "video": {"w": 640, "h": 480}}, "640x480"),
        ({"video": {"w": 320, "h": 480}}, "320x480"),
        ({"video": {"w": 320}}, fs.MISSING),
        ({"native": {"request": "{}"}}, fs.MISSING),
    ],
)
def test_ad_size_from_banner_then_format_then_video(imp: dict[str, Any], size: str) -> None:
    ctx = context_from_request(request(imp=[{"id": "1", **imp}]), hour=0)
    assert ctx_bucket(ctx, "ad_size") == expect("ad_size", size)


@pytest.mark.parametrize(
    ("imp", "position"),
    [
        ({"banner": {"pos": 0}, "video": {"pos": 7}}, "0"),  # 0 is a value training learned, not "missing"
        ({"banner": {"pos": 7}}, "7"),
        ({"banner": {}, "video": {"pos": 1}}, "1"),
        ({"banner": {}}, fs.MISSING),
    ],
)
def test_position_is_the_plain_pos_number(imp: dict[str, Any], position: str) -> None:
    ctx = context_from_request(request(imp=[{"id": "1", **imp}]), hour=0)
    assert ctx_bucket(ctx, "position") == expect("position", position)


def test_each_imp_has_its_own_row() -> None:
    ctx = context_from_request(
        request(
            app={"bundle": "b"},
            imp=[
                {"id": "a", "tagid": "t-a", "banner": {"w": 300, "h": 250, "pos": 1}},
                {"id": "b", "tagid": "t-b", "video": {"w": 640, "h": 480, "pos": 7}},
            ],
        ),
        hour=3,
    )
    assert ctx.cat.shape == (2, len(CONTEXT_CAT_FIELDS))
    shared = [CTX[f] for f in ("publisher", "pub_category", "device_type", "os", "country", "hour")]
    np.testing.assert_array_equal(ctx.cat[0, shared], ctx.cat[1, shared])
    assert [ctx_bucket(ctx, "tagid", i) for i in (0, 1)] == [expect("tagid", "t-a"), expect("tagid", "t-b")]
    assert ctx_bucket(ctx, "ad_size", 1) == expect("ad_size", "640x480")
    assert ctx_bucket(ctx, "position", 1) == expect("position", "7")


@pytest.mark.parametrize("hour", [-1, 24])
def test_hour_out_of_range_is_rejected(hour: int) -> None:
    with pytest.raises(ValueError, match="hour"):
        context_from_request(request(), hour=hour)


def test_context_bucket_cache_equals_hashing_and_is_bounded() -> None:
    for value in [f"slot{k}" for k in range(50)]:
        assert _context_bucket("tagid", value) == fs.hash_field("tagid", value)
        assert _context_bucket("publisher", value) == fs.hash_field("publisher", value)
    assert _context_bucket.cache_info().maxsize is not None


def test_repeated_requests_get_the_same_buckets_as_fresh_hashing() -> None:
    """The memoised buckets are the hashes of the strings; a second request reads them back unchanged."""
    req = request(
        site={"domain": "news.example", "publisher": {"cat": ["IAB12-3"]}},
        device={"devicetype": 2, "os": "Android", "geo": {"country": "deu"}},
        imp=[
            {"id": "1", "tagid": "top", "banner": {"format": [{"w": 728, "h": 90}], "pos": 1}},
            {"id": "2", "video": {"w": 640, "h": 360}},
        ],
    )
    first, second = context_from_request(req, hour=9), context_from_request(req, hour=9)
    np.testing.assert_array_equal(first.cat, second.cat)
    assert first.cat is not second.cat
    expected = {
        "publisher": "news.example",
        "pub_category": "IAB12",
        "device_type": "2",
        "os": "android",
        "country": "DEU",
    }
    for imp in (0, 1):
        for field, value in expected.items():
            assert ctx_bucket(second, field, imp) == expect(field, value)
    assert [ctx_bucket(second, "tagid", i) for i in (0, 1)] == [expect("tagid", "top"), expect("tagid", "")]
    assert [ctx_bucket(second, "ad_size", i) for i in (0, 1)] == [
        expect("ad_size", "728x90"),
        expect("ad_size", "640x360"),
    ]


@pytest.mark.parametrize("hour", range(24))
def test_shared_hour_dense_is_read_only_and_exact(hour: int) -> None:
    ctx = context_from_request(request(), hour=hour)
    np.testing.assert_array_equal(ctx.dense, np.array(fs.hour_cycle(hour), dtype=np.float32))
    assert (ctx.dense.dtype, ctx.dense.shape) == (np.dtype(np.float32), (len(CONTEXT_DENSE_FIELDS),))
    with pytest.raises(ValueError, match="read-only"):
        ctx.dense[0] = 2.0
    assert ctx.cat.flags.writeable  # the request's own rows


# ---------------------------------------------------------------------------------------- assemble


def test_fields_partition_the_model_input() -> None:
    cat_fields = [*USER_CAT_FIELDS, *AD_CAT_FIELDS, *CONTEXT_CAT_FIELDS]
    assert sorted(cat_fields) == sorted(f.name for f in fs.CATEGORICAL_FIELDS)
    assert len(cat_fields) == len(set(cat_fields))
    dense_fields = [*USER_DENSE_FIELDS, *AD_DENSE_FIELDS, *CONTEXT_DENSE_FIELDS]
    assert sorted(dense_fields) == sorted(fs.DENSE_FIELDS)
    assert len(dense_fields) == len(set(dense_fields))


def _ranker_inputs() -> dict[str, tuple[int, list[int]]]:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((DEFAULT_MODEL_REPOSITORY / fs.MODEL_NAME / "config.pbtxt").read_text(), config)
    return {inp.name: (inp.data_type, list(inp.dims)) for inp in config.input}


def test_shapes_and_dtypes_match_the_model_config() -> None:
    rng = np.random.default_rng(0)
    ctx = context_from_request(request(), hour=12)
    cat, dense = assemble(ctx, random_user(rng), random_ads(rng, 50), np.zeros(50, dtype=np.intp))
    inputs = _ranker_inputs()
    assert inputs[fs.INPUT_CAT] == (model_config_pb2.TYPE_INT64, [cat.shape[1]])
    assert inputs[fs.INPUT_DENSE] == (model_config_pb2.TYPE_FP32, [dense.shape[1]])
    assert (cat.shape, cat.dtype) == ((50, len(fs.CATEGORICAL_FIELDS)), np.dtype(np.int64))
    assert (dense.shape, dense.dtype) == ((50, len(fs.DENSE_FIELDS)), np.dtype(np.float32))
    assert cat.flags.c_contiguous
    assert dense.flags.c_contiguous


def test_columns_land_where_the_spec_says() -> None:
    rng = np.random.default_rng(1)
    ctx = context_from_request(
        request(imp=[{"id": "a", "tagid": "ta"}, {"id": "b", "tagid": "tb"}, {"id": "c", "tagid": "tc"}]),
        hour=9,
    )
    user, ads = random_user(rng), random_ads(rng, 6)
    imp_of = np.array([2, 0, 1, 2, 2, 0], dtype=np.intp)
    cat, dense = assemble(ctx, user, ads, imp_of)
    for j, name in enumerate(USER_CAT_FIELDS):
        assert (cat[:, fs.CAT_INDEX[name]] == user.cat[j]).all(), name
    for j, name in enumerate(AD_CAT_FIELDS):
        np.testing.assert_array_equal(cat[:, fs.CAT_INDEX[name]], ads.cat[:, j], err_msg=name)
    for j, name in enumerate(CONTEXT_CAT_FIELDS):
        np.testing.assert_array_equal(cat[:, fs.CAT_INDEX[name]], ctx.cat[imp_of, j], err_msg=name)
    tagids = ["ta", "tb", "tc"]
    assert cat[:, fs.CAT_INDEX["tagid"]].tolist() == [expect("tagid", tagids[i]) for i in imp_of.tolist()]
    for j, name in enumerate(USER_DENSE_FIELDS):
        assert (dense[:, fs.DENSE_INDEX[name]] == user.dense[j]).all(), name
    for j, name in enumerate(AD_DENSE_FIELDS):
        np.testing.assert_array_equal(dense[:, fs.DENSE_INDEX[name]], ads.dense[:, j], err_msg=name)
    sin, cos = fs.hour_cycle(9)
    assert (dense[:, fs.DENSE_INDEX["hour_sin"]] == np.float32(sin)).all()
    assert (dense[:, fs.DENSE_INDEX["hour_cos"]] == np.float32(cos)).all()


def test_no_candidates_assembles_empty_arrays() -> None:
    rng = np.random.default_rng(2)
    cat, dense = assemble(
        context_from_request(request(), 0), random_user(rng), random_ads(rng, 0), np.zeros(0, np.intp)
    )
    assert cat.shape == (0, len(fs.CATEGORICAL_FIELDS))
    assert dense.shape == (0, len(fs.DENSE_FIELDS))


def test_imp_of_candidate_must_match_the_candidates() -> None:
    rng = np.random.default_rng(3)
    ctx = context_from_request(request(), hour=0)
    with pytest.raises(ValueError, match="imp_of_candidate"):
        assemble(ctx, random_user(rng), random_ads(rng, 4), np.zeros(3, dtype=np.intp))


def test_every_bucket_is_in_range() -> None:
    rng = np.random.default_rng(4)
    words = [f"w{i}-{rng.integers(1 << 30)}" for i in range(40)]
    imps = [
        {"id": str(i), "tagid": words[i], "banner": {"w": int(rng.integers(1, 2000)), "h": 50, "pos": i % 8}}
        for i in range(8)
    ]
    ctx = context_from_request(
        request(
            app={"bundle": words[10], "cat": [words[11]]},
            device={"devicetype": 7, "os": words[12], "geo": {"country": words[13]}},
            imp=imps,
        ),
        hour=23,
    )
    cat, _ = assemble(ctx, random_user(rng), random_ads(rng, 40), rng.integers(0, 8, size=40).astype(np.intp))
    assert ((cat >= 0) & (cat < fs.BUCKETS)).all()


# ----------------------------------------------------------------------- against training's encoding


def request_for_row(world: w.World, rows: synthetic.Rows, i: int) -> BidRequest:
    """The bid request the gateway would receive for training row i (its user, placement, device, hour)."""
    users, pubs = world.users, world.publishers
    pub, placement = int(rows.publisher[i]), int(rows.placement[i])
    width, height = w.SIZES[pubs.size[placement]]
    banner: dict[str, Any] = {"format": [{"w": width, "h": height}]}  # size via the format fallback
    if rows.position_known[i]:
        banner["pos"] = int(pubs.pos[placement])
    device: dict[str, Any] = {"devicetype": int(w.DEVICE_TYPES[rows.device[i]])}
    if rows.os[i] >= 0:
        device["os"] = {"ios": "iOS", "macos": "macOS"}.get(w.OSES[rows.os[i]], w.OSES[rows.os[i]].title())
    if rows.country[i] >= 0:
        device["geo"] = {"country": w.COUNTRIES[rows.country[i]]}
    publisher = {"cat": [f"{w.IAB_CATEGORIES[pubs.category[pub]]}-1"]}
    inventory = (
        {"app": {"bundle": pubs.name[pub], **publisher}}
        if pubs.is_app[pub]
        else {"site": {"domain": pubs.name[pub], **publisher}}
    )
    return request(
        imp=[{"id": "1", "tagid": pubs.tagid[placement], "banner": banner}],
        device=device,
        # A user-store miss in training is a user the store does not hold.
        user={"buyeruid": users.ids[rows.user[i]] if rows.user_known[i] else f"stranger-{i}"},
        **inventory,
    )


def make_small_world() -> w.World:
    world = w.make_world(n_users=300, n_ads=200, n_campaigns=100, n_advertisers=60, n_publishers=20)
    # synthetic.sample_rows indexes past the ad table when a category has no ads (a training bug in tiny
    # worlds); these sizes cover every category.
    assert len(set(world.ads.category.tolist())) == len(w.IAB_CATEGORIES)
    return world


@pytest.fixture(scope="module")
def small_world() -> w.World:
    return make_small_world()


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory: pytest.TempPathFactory, small_world: w.World) -> Path:
    directory = tmp_path_factory.mktemp("snapshots")
    snapshots.write_snapshots(small_world, directory)
    return directory


def gateway_rows(
    store: EmbeddedFeatureStore, world: w.World, rows: synthetic.Rows
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    cats, denses = [], []
    for i in range(rows.user.size):
        req = request_for_row(world, rows, i)
        ad_id = world.ads.ids[rows.ad[i]]
        ads = store.lookup_ads(AdKeys([ad_id], ["ignored"], ["ignored"], [""]))
        cat, dense = assemble(
            context_from_request(req, int(rows.hour[i])),
            store.lookup_user(user_key(req)),
            ads,
            np.zeros(1, dtype=np.intp),
        )
        cats.append(cat)
        denses.append(dense)
    return np.concatenate(cats), np.concatenate(denses)


def test_gateway_rows_equal_training_rows(snapshot_dir: Path, small_world: w.World) -> None:
    """Training rows, replayed as OpenRTB requests through the store and assemble, give the same arrays."""
    rows = synthetic.sample_rows(np.random.default_rng(7), small_world, 400)
    assert (~rows.user_known).any()
    assert (rows.os < 0).any()
    assert (rows.country < 0).any()
    assert (~rows.position_known).any()
    assert small_world.publishers.is_app.any()
    assert (~small_world.publishers.is_app).any()
    expected_cat, expected_dense = synthetic.encode(small_world, rows)
    cat, dense = gateway_rows(EmbeddedFeatureStore.load(snapshot_dir), small_world, rows)
    for j, field in enumerate(fs.CATEGORICAL_FIELDS):
        np.testing.assert_array_equal(cat[:, j], expected_cat[:, j], err_msg=field.name)
    np.testing.assert_array_equal(dense, expected_dense)


_PRINT_ROWS = """
import json, sys
from pathlib import Path
import numpy as np
from training import world as w, synthetic
from tests.unit.core.test_features import gateway_rows, make_small_world
from gateway.stores.embedded import EmbeddedFeatureStore
world = make_small_world()
rows = synthetic.sample_rows(np.random.default_rng(11), world, 30)
cat, dense = gateway_rows(EmbeddedFeatureStore.load(Path(sys.argv[1])), world, rows)
print(json.dumps([cat.tolist(), dense.tolist()]))
"""


def test_assembled_rows_are_stable_across_processes(snapshot_dir: Path, small_world: w.World) -> None:
    outputs = []
    for seed in ("0", "1", "777"):
        done = subprocess.run(
            [sys.executable, "-c", _PRINT_ROWS, str(snapshot_dir)],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        outputs.append(json.loads(done.stdout))
    rows = synthetic.sample_rows(np.random.default_rng(11), small_world, 30)
    cat, dense = gateway_rows(EmbeddedFeatureStore.load(snapshot_dir), small_world, rows)
    here = [cat.tolist(), dense.tolist()]
    assert outputs[0] == outputs[1] == outputs[2] == here
