"""The committed default catalog is exactly what `python -m training.catalog` writes from the committed
snapshots, and it loads."""

from __future__ import annotations

from pathlib import Path

from gateway.catalog.loader import load_catalog, parse_catalog
from training import catalog

REPO = Path(__file__).resolve().parents[3]
SNAPSHOTS = REPO / "data" / "snapshots"


def test_the_committed_catalog_is_the_generators_output() -> None:
    committed = catalog.default_catalog_path(SNAPSHOTS)
    assert committed.read_bytes() == catalog.render(SNAPSHOTS), (
        "data/catalog/catalog.jsonl is stale: run `python -m training.catalog`"
    )


def test_every_snapshot_ad_is_a_creative_with_its_priors() -> None:
    loaded = load_catalog(catalog.default_catalog_path(SNAPSHOTS))
    creatives = {c.id: (campaign.id, c) for campaign in loaded.campaigns for c in campaign.creatives}
    ads = catalog.read_ads(SNAPSHOTS)
    assert len(creatives) == len(ads)
    for ad in ads:
        campaign_id, creative = creatives[ad["id"]]
        assert campaign_id == ad["campaign_id"]
        assert creative.prior_ctr == ad["prior_ctr"]
        assert creative.cat == [ad["cat"]]


def test_the_output_is_deterministic(tmp_path: Path) -> None:
    first = catalog.write_catalog(SNAPSHOTS, tmp_path / "a.jsonl").read_bytes()
    second = catalog.write_catalog(SNAPSHOTS, tmp_path / "b.jsonl").read_bytes()
    assert first == second
    assert parse_catalog(first).version.startswith("synthetic-")
