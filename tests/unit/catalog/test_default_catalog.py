"""The committed default catalog retrieves candidates for every IAB OpenRTB 2.6 example request, as
published, that can win there: right format, deal and seat, nothing the request blocks, bids over floors.
The examples live outside the repository (../shared/openrtb-examples); the test skips without them."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from gateway.catalog.index import build_index
from gateway.catalog.loader import load_catalog
from gateway.catalog.model import CreativeRef
from gateway.catalog.reloader import CatalogHolder
from gateway.catalog.retrieval import CatalogRetriever
from gateway.core.currency import DEFAULT_RATES_PER_USD
from gateway.openrtb import BidRequest
from tests.unit.catalog.builders import NOON_UTC

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO.parent / "shared" / "openrtb-examples" / "requests"
CATALOG = REPO / "data" / "catalog" / "catalog.jsonl"


def examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.json")) if EXAMPLES.is_dir() else []


@pytest.fixture(scope="module")
def retriever() -> CatalogRetriever:
    return CatalogRetriever(CatalogHolder(build_index(load_catalog(CATALOG))), seat=None)


@pytest.mark.skipif(not examples(), reason="../shared/openrtb-examples is not present")
@pytest.mark.parametrize("path", examples(), ids=lambda p: p.stem)
def test_every_example_gets_candidates_that_can_win(path: Path, retriever: CatalogRetriever) -> None:
    request = msgspec.json.decode(path.read_bytes(), type=BidRequest)
    got = retriever.retrieve(request, NOON_UTC)
    assert got.candidates, f"{path.name}: no candidate"
    assert all(n > 0 for n in got.per_imp)
    imp = request.imp[0]
    deals = {d.id: d for d in (imp.pmp.deals or []) if imp.pmp} if imp.pmp else {}
    private = imp.pmp is not None and imp.pmp.private_auction == 1
    blocked_cats = set(request.bcat or ())
    for k, candidate in enumerate(got.candidates):
        ref = got.creatives[k]
        assert isinstance(ref, CreativeRef)
        assert candidate.advertiser not in (request.badv or [])
        assert not {c for c in candidate.cat if c in blocked_cats or c.partition("-")[0] in blocked_cats}
        battr = set(
            (imp.banner.battr if imp.banner else None) or (imp.video.battr if imp.video else None) or []
        )
        assert not battr & set(ref.creative.attr)
        if private:
            assert candidate.deal_id in deals
        if candidate.deal_id is not None:
            deal = deals[candidate.deal_id]
            assert deal.wseat is None or got.seats[k] in deal.wseat
            floor_usd = deal.bidfloor / DEFAULT_RATES_PER_USD[deal.bidfloorcur]
            assert candidate.bid_type == "cpm"
            assert candidate.bid >= floor_usd
        if request.dooh is not None:
            assert ref.campaign.targeting.channels == ["dooh"]


@pytest.mark.skipif(not examples(), reason="../shared/openrtb-examples is not present")
def test_the_pmp_example_bids_through_both_agency_seats(retriever: CatalogRetriever) -> None:
    request = msgspec.json.decode(
        (EXAMPLES / "ortb26_spec_6.2.5_pmp_direct_deal.json").read_bytes(), type=BidRequest
    )
    got = retriever.retrieve(request, NOON_UTC)
    assert {(c.deal_id, got.seats[k]) for k, c in enumerate(got.candidates)} == {
        ("AB-Agency1-0001", "Agency1"),
        ("XY-Agency2-0001", "Agency2"),
    }
