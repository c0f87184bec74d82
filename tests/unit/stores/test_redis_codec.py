"""How rows and campaign state are laid out in Redis (no server needed)."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from redis.crc import key_slot

from gateway.config import REPO_ROOT
from gateway.core import feature_spec as fs
from gateway.stores import campaigns, keys
from gateway.stores.campaigns import CampaignConfig, CampaignLedger, CampaignSpec
from gateway.stores.embedded import EmbeddedFeatureStore
from gateway.stores.redis_store import AD_ROW, USER_ROW, decode_rows, encode_rows, feature_namespace

SNAPSHOTS = REPO_ROOT / "data" / "snapshots"


@pytest.fixture(scope="module")
def embedded() -> EmbeddedFeatureStore:
    return EmbeddedFeatureStore.load(SNAPSHOTS)


def test_row_layout_is_fixed_width_little_endian() -> None:
    assert USER_ROW.itemsize == 5 * 8 + 2 * 4
    assert AD_ROW.itemsize == 4 * 8 + 2 * 4
    [blob] = encode_rows(
        AD_ROW, np.array([[1, 2, 3, 4]], dtype=np.int64), np.array([[0.5, 0.25]], np.float32)
    )
    assert blob[:8] == (1).to_bytes(8, "little")
    assert np.frombuffer(blob[32:], dtype="<f4").tolist() == [0.5, 0.25]


def test_snapshot_rows_round_trip_byte_for_byte(embedded: EmbeddedFeatureStore) -> None:
    for ids, cat, dense, row in ((*embedded.user_rows(), USER_ROW), (*embedded.ad_rows(), AD_ROW)):
        blobs = encode_rows(row, cat, dense)
        assert len(blobs) == len(ids)
        back_cat, back_dense = decode_rows(row, blobs)
        np.testing.assert_array_equal(back_cat, cat)
        np.testing.assert_array_equal(back_dense, dense)


def test_exported_rows_are_what_the_embedded_store_serves(embedded: EmbeddedFeatureStore) -> None:
    ids, cat, dense = embedded.user_rows()
    served = embedded.lookup_user(ids[7])
    np.testing.assert_array_equal(served.cat, cat[7])
    np.testing.assert_array_equal(served.dense, dense[7])
    ad_ids, ad_cat, _ = embedded.ad_rows()
    assert len(ad_ids) == embedded.ad_count == len(ad_cat)


def test_a_value_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="40-byte"):
        decode_rows(AD_ROW, [b"\0" * 39])


def test_namespace_names_the_feature_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    before = feature_namespace()
    assert before.startswith("bidgw:f:")
    assert feature_namespace() == before  # stable across calls (and processes: xxh3, not hash())
    changed = (*fs.CATEGORICAL_FIELDS[:-1], fs.CategoricalField("hour", 48))
    monkeypatch.setattr(fs, "CATEGORICAL_FIELDS", changed)
    assert feature_namespace() != before


def test_campaign_config_json_and_spec_conversion() -> None:
    config = CampaignSpec(campaign_id="c1", daily_budget_usd=12.345678, freq_cap=3).config()
    assert config == CampaignConfig(daily_budget_micros=12_345_678, freq_cap=3)
    raw = campaigns.encode_config(config)
    assert msgspec.json.decode(raw) == {"daily_budget_micros": 12_345_678, "freq_cap": 3}
    assert campaigns.decode_config(raw) == config
    assert campaigns.decode_config(b"{}") == CampaignConfig()
    with pytest.raises(msgspec.DecodeError):
        campaigns.decode_config(b'{"daily_budget_micros": -1}')


def test_campaign_state_decodes_from_the_read_scripts_packed_pairs() -> None:
    packed = np.array([[107, 2], [0, 0]], dtype="<i8").tobytes()
    committed, impressions = CampaignLedger.read_state(packed, 2)
    assert committed.tolist() == [107, 0]
    assert impressions.tolist() == [2, 0]
    with pytest.raises(ValueError, match="expected 3"):
        CampaignLedger.read_state(packed, 3)


def test_key_names_share_the_campaigns_hash_tag() -> None:
    tag = keys.campaign_tag("c1")
    assert len(tag) == 8
    assert keys.config_key("c1") == f"bidgw:v2:camp:{{{tag}}}:c1:cfg"
    assert keys.spend_key("c1", "20250301") == f"bidgw:v2:camp:{{{tag}}}:c1:spend:20250301"
    assert keys.hold_key("c1", 42) == f"bidgw:v2:camp:{{{tag}}}:c1:resv:42"
    assert keys.impressions_key("c1", "20250301", "u9") == f"bidgw:v2:camp:{{{tag}}}:c1:imps:20250301:u9"
    # Redis Cluster hashes only the tag: every key of the campaign, and its bid records, share one slot.
    bid_id = keys.new_bid_id("c1")
    slot = key_slot(keys.config_key("c1").encode())
    for key in (
        keys.spend_key("c1", "20250301"),
        keys.hold_key("c1", 42),
        keys.impressions_key("c1", "20250301", "any:user{with}braces"),
        keys.bid_key(tag, bid_id),
    ):
        assert key_slot(key.encode()) == slot
    # A campaign id with braces or colons still gets a brace-free tag.
    assert key_slot(keys.spend_key("}x{", "20250301").encode()) == key_slot(keys.config_key("}x{").encode())


def test_a_bid_id_names_its_campaigns_tag() -> None:
    bid_id = keys.new_bid_id("c1")
    assert len(bid_id) == 41
    assert keys.bid_tag(bid_id) == keys.campaign_tag("c1")
    assert keys.new_bid_id("c1") != bid_id
    # Ids this layout did not make (the old 32-hex ids, anything an exchange invents) carry no tag.
    for other in ("0" * 32, "nope", "zzzzzzzz-" + "0" * 32, "01234567_" + "0" * 32, ""):
        assert keys.bid_tag(other) is None
