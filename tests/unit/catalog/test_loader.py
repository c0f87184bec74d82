"""The catalog loader: valid files load; each invalid one is refused naming its line and field."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.catalog.loader import load_catalog, parse_catalog
from gateway.errors import CatalogError, GatewayError
from tests.unit.catalog.builders import banner, campaign, jsonl, native, video


def error_of(data: bytes) -> CatalogError:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(data)
    return caught.value


def test_a_valid_catalog_loads_with_its_header_and_campaigns() -> None:
    data = jsonl(campaign("c1"), campaign("c2", banner("x"), video("y")), version="2024-06-18")
    catalog = parse_catalog(b"\n" + data + b"\n\n")  # blank lines are allowed
    assert catalog.version == "2024-06-18"
    assert [c.id for c in catalog.campaigns] == ["c1", "c2"]
    assert catalog.creative_count() == 3
    assert len(catalog.digest) == 64


def test_a_schema_error_names_the_line_and_the_field_path() -> None:
    bad = campaign("c2", banner("x"))
    bad["creatives"][0]["banner"]["sizes"].append({"w": 300, "h": 0})
    error = error_of(jsonl(campaign("c1"), bad))
    assert error.line == 3
    assert error.field == "creatives[0].banner.sizes[1].h"
    assert str(error) == "line 3: creatives[0].banner.sizes[1].h must be >= 1"
    assert isinstance(error, GatewayError)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"bid": 0}, "bid", "must be > 0"),
        ({"bid_type": "cpx"}, "bid_type", "invalid value"),
        ({"targeting": {"hours_utc": [24]}}, "targeting.hours_utc[0]", "must be <= 23"),
        ({"targeting": {"countrys": ["USA"]}}, None, "countrys"),  # a typo never widens reach silently
        ({"advertiser": ""}, "advertiser", "non-empty"),
        ({"creatives": []}, "creatives", "non-empty"),
    ],
)
def test_field_errors(change: dict[str, object], field: str | None, words: str) -> None:
    error = error_of(jsonl(campaign("c1") | change))
    assert error.line == 2
    assert error.field == field or field is None
    assert words in str(error)


def test_a_missing_required_field_is_named() -> None:
    line = campaign("c1")
    del line["advertiser"]
    error = error_of(jsonl(line))
    assert (error.line, error.field) == (2, "advertiser")
    assert "advertiser is required" in str(error)


def test_a_creative_needs_exactly_one_format() -> None:
    both = banner("x") | {"native": native("y")["native"]}
    error = error_of(jsonl(campaign("c1"), campaign("c2", banner("ok"), both)))
    assert (error.line, error.field) == (3, "creatives[1]")
    assert "exactly one of banner, video, audio, native (found: banner, native)" in str(error)
    none = {"id": "z", "click_url": "https://a.test/z"}
    assert "found: none" in str(error_of(jsonl(campaign("c1", none))))


def test_campaign_and_creative_ids_are_unique_across_the_file() -> None:
    error = error_of(jsonl(campaign("c1"), campaign("c2"), campaign("c1", banner("other"))))
    assert (error.line, error.field) == (4, "id")
    assert "campaign id 'c1' was already used on line 2" in str(error)
    error = error_of(jsonl(campaign("c1", banner("same")), campaign("c2", banner("a"), banner("same"))))
    assert (error.line, error.field) == (3, "creatives[1].id")


def test_flight_dates_parse_and_start_precedes_end() -> None:
    assert parse_catalog(jsonl(campaign("c1", start="2024-01-01", end="2024-02-01T00:00:00Z")))
    error = error_of(jsonl(campaign("c1", start="2024-13-01")))
    assert (error.line, error.field) == (2, "start")
    assert "not an ISO 8601" in str(error)
    error = error_of(jsonl(campaign("c1", start="2024-02-01", end="2024-02-01")))
    assert (error.line, error.field) == (2, "end")


def test_header_rules() -> None:
    missing = error_of(json.dumps(campaign("c1")).encode())
    assert missing.line == 1
    assert "missing header" in str(missing)
    duplicate = error_of(jsonl(campaign("c1")) + b'{"catalog_version": "v2"}\n')
    assert duplicate.line == 3
    assert "second header" in str(duplicate)
    assert "empty" in str(error_of(b"\n\n"))
    assert error_of(b'{"catalog_version": ""}').line == 1


def test_invalid_json_names_its_line() -> None:
    error = error_of(jsonl(campaign("c1")) + b'{"id": "c2",\n')
    assert error.line == 3
    assert "not valid JSON" in str(error)


def test_an_unreadable_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not readable"):
        load_catalog(tmp_path / "absent.jsonl")


def test_a_hundred_thousand_creatives_load_in_seconds() -> None:
    campaigns = [campaign(f"c{n}", *(banner(f"c{n}-{k}") for k in range(10))) for n in range(10_000)]
    data = jsonl(*campaigns)
    started = time.process_time()
    catalog = parse_catalog(data)
    assert catalog.creative_count() == 100_000
    assert time.process_time() - started < 5.0
