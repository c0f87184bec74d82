"""The default campaign catalog, derived from the synthetic world's ad snapshot: `python -m training.catalog`.

Every snapshot ad becomes a creative with the same id and priors, grouped by its campaign, so the feature
store knows every creative the gateway retrieves. Campaigns get a bid type and bid, formats across the
common sizes (banner, VAST video, native, audio), and some targeting, budgets and caps, all drawn from a
seeded generator: the same snapshot always gives the same file (`tests/unit/training` checks the committed
one). A handful of campaigns play fixed roles so that every IAB OpenRTB 2.6 example request, as published,
gets a bid: DOOH screens (open and deals 123/333/444, a 20 s video deal V123 in private auction) and the
PMP example's deals for seats Agency1 and Agency2. Their bids clear the examples' floors with room to
spare (a cpm bid is its eCPM; GBP floors are converted at the gateway's default 0.79 GBP per USD).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from gateway.catalog.model import (
    AudioCreative,
    BannerCreative,
    BannerSize,
    Campaign,
    CatalogBidType,
    CatalogHeader,
    Creative,
    NativeCreative,
    Targeting,
    VideoCreative,
)

__all__ = ["CATALOG_FILE", "catalog_lines", "default_catalog_path", "main", "write_catalog"]

CATALOG_FILE: Final = "catalog.jsonl"
SEED: Final = 20_240_601
CDN: Final = "https://cdn.example.com"
CLICK: Final = "https://click.example.com"

# What a generic creative is, by its position among the campaign's ads (cycled).
BANNER_SIZES: Final[tuple[tuple[tuple[int, int], ...], ...]] = (
    ((300, 250),),
    ((728, 90), (970, 250)),
    ((320, 50),),
    ((300, 600), (160, 600)),
    ((300, 250), (728, 90)),
    ((320, 480),),
)
FORMATS: Final = ("banner", "banner", "video", "banner", "native", "banner", "video", "audio")

# USD per impression (cpm), click (cpc) or conversion (cpa).
BID_RANGES: Final = {"cpm": (0.8, 4.0), "cpc": (0.3, 1.5), "cpa": (4.0, 20.0)}
COUNTRIES: Final = (("USA",), ("GBR", "IRL"), ("USA", "CAN"), ("DEU", "FRA", "ESP"))
OS_CHOICES: Final = (("ios",), ("android",), ("ios", "android"))


@dataclass(frozen=True, slots=True)
class Role:
    """A campaign with a fixed job: the IAB examples it must bid on."""

    bid: float
    formats: str  # "dooh_banner", "dooh_video" or "banner_300x250"
    channels: tuple[str, ...] | None = None
    deal_ids: tuple[str, ...] | None = None
    seat: str | None = None


# The first campaigns of the snapshot (by id) take these roles.
ROLES: Final[tuple[Role, ...]] = (
    Role(bid=9.0, formats="dooh_banner", channels=("dooh",)),  # open DOOH screens, floor 5.0 GBP
    Role(bid=6.5, formats="dooh_banner", channels=("dooh",), deal_ids=("123", "333", "444")),
    Role(bid=9.0, formats="dooh_video", channels=("dooh",), deal_ids=("V123",)),  # >= 4.5 GBP
    Role(bid=4.0, formats="banner_300x250", deal_ids=("AB-Agency1-0001",), seat="Agency1"),  # floor 2.5
    Role(bid=3.5, formats="banner_300x250", deal_ids=("XY-Agency2-0001",), seat="Agency2"),  # floor 2
)


def default_catalog_path(snapshot_dir: Path) -> Path:
    """data/snapshots -> data/catalog/catalog.jsonl."""
    return snapshot_dir.parent / "catalog" / CATALOG_FILE


def read_ads(snapshot_dir: Path) -> list[dict[str, Any]]:
    with gzip.open(snapshot_dir / "ads.jsonl.gz", "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def catalog_lines(ads: Sequence[dict[str, Any]]) -> Iterator[bytes]:
    """The catalog's lines (header first), deterministic for a given snapshot."""
    by_campaign: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ad in sorted(ads, key=lambda row: str(row["id"])):
        by_campaign[str(ad["campaign_id"])].append(ad)
    yield msgspec.json.encode(
        CatalogHeader(
            catalog_version=f"synthetic-{len(by_campaign)}c-{len(ads)}a-v1",
            description="the synthetic world's campaigns (python -m training.catalog)",
        )
    )
    rng = random.Random(SEED)
    for number, campaign_id in enumerate(sorted(by_campaign)):
        role = ROLES[number] if number < len(ROLES) else None
        yield msgspec.json.encode(_campaign(campaign_id, by_campaign[campaign_id], role, rng))


def _campaign(campaign_id: str, ads: list[dict[str, Any]], role: Role | None, rng: random.Random) -> Campaign:
    advertiser = str(ads[0]["advertiser"])
    categories = sorted({str(ad["cat"]) for ad in ads})
    creatives = [_creative(campaign_id, ad, k, role, rng) for k, ad in enumerate(ads)]
    if role is not None:
        return Campaign(
            id=campaign_id,
            advertiser=advertiser,
            cat=categories,
            bid_type="cpm",
            bid=role.bid,
            seat=role.seat,
            targeting=Targeting(
                channels=list(role.channels) if role.channels else None,  # type: ignore[arg-type]
                deal_ids=list(role.deal_ids) if role.deal_ids else None,
            ),
            creatives=creatives,
        )
    bid_type: CatalogBidType = rng.choices(("cpm", "cpc", "cpa"), weights=(6, 3, 1))[0]
    bid = {"cpm": rng.uniform(0.8, 4.0), "cpc": rng.uniform(0.3, 1.5), "cpa": rng.uniform(4.0, 20.0)}[
        bid_type
    ]
    return Campaign(
        id=campaign_id,
        advertiser=advertiser,
        cat=categories,
        bid_type=bid_type,
        bid=round(bid, 2),
        daily_budget_usd=rng.choice((None, None, 500.0, 2_000.0, 10_000.0)),
        freq_cap=rng.choice((0, 0, 3, 10)),
        start=rng.choice((None, None, "2024-01-01T00:00:00Z")),
        targeting=_targeting(rng),
        creatives=creatives,
    )


def _targeting(rng: random.Random) -> Targeting:
    """Most campaigns run everywhere (the examples carry little targeting data); some restrict."""
    pick = rng.random()
    if pick < 0.15:
        return Targeting(countries=list(rng.choice(COUNTRIES)))
    if pick < 0.25:
        return Targeting(os=list(rng.choice(OS_CHOICES)), channels=["app"])
    if pick < 0.30:
        return Targeting(device_types=[4, 5], channels=["site", "app"])
    if pick < 0.35:
        return Targeting(site_domains_blocked=["foobar.com"])
    return Targeting()


def _creative(
    campaign_id: str, ad: dict[str, Any], k: int, role: Role | None, rng: random.Random
) -> Creative:
    ad_id = str(ad["id"])
    common: dict[str, Any] = {
        "id": ad_id,
        "click_url": f"{CLICK}/{campaign_id}/{ad_id}",
        "cat": [str(ad["cat"])],
        "prior_ctr": float(ad["prior_ctr"]),
        "prior_cvr": float(ad["prior_cvr"]),
    }
    if role is not None:
        return Creative(**common, **_role_format(role, ad_id))
    kind = FORMATS[k % len(FORMATS)]
    if kind == "banner":
        sizes = BANNER_SIZES[(k // len(FORMATS) + rng.randrange(len(BANNER_SIZES))) % len(BANNER_SIZES)]
        return Creative(**common, banner=_banner(ad_id, sizes))
    if kind == "video":
        duration = rng.choice((15, 30))
        return Creative(
            **common, video=VideoCreative(media_url=f"{CDN}/video/{ad_id}.mp4", duration_s=duration)
        )
    if kind == "audio":
        return Creative(**common, audio=AudioCreative(media_url=f"{CDN}/audio/{ad_id}.m4a", duration_s=30))
    return Creative(**common, native=_native(ad_id, str(ad["advertiser"])))


def _role_format(role: Role, ad_id: str) -> dict[str, Any]:
    if role.formats == "dooh_banner":
        return {"banner": _banner(ad_id, ((1080, 1920), (720, 1366)))}
    if role.formats == "dooh_video":
        video = VideoCreative(media_url=f"{CDN}/video/{ad_id}.mp4", duration_s=20, w=1920, h=1080)
        return {"video": video}
    return {"banner": _banner(ad_id, ((300, 250),))}


def _banner(ad_id: str, sizes: Sequence[tuple[int, int]]) -> BannerCreative:
    return BannerCreative(sizes=[BannerSize(w=w, h=h) for w, h in sizes], image_url=f"{CDN}/img/{ad_id}.png")


def _native(ad_id: str, advertiser: str) -> NativeCreative:
    return NativeCreative(
        title=f"Offers from {advertiser}",
        sponsored_by=advertiser,
        description="A synthetic native ad for the gateway's default catalog.",
        image_url=f"{CDN}/img/{ad_id}-1200x627.png",
        image_w=1200,
        image_h=627,
        icon_url=f"{CDN}/img/{ad_id}-icon.png",
        cta="Learn more",
    )


def render(snapshot_dir: Path) -> bytes:
    """The catalog file's bytes for a snapshot directory."""
    return b"".join(line + b"\n" for line in catalog_lines(read_ads(snapshot_dir)))


def write_catalog(snapshot_dir: Path, path: Path | None = None) -> Path:
    target = path or default_catalog_path(snapshot_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(render(snapshot_dir))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.catalog", description=__doc__)
    parser.add_argument("--snapshots", type=Path, default=Path("data/snapshots"))
    parser.add_argument("--out", type=Path, help="default: <snapshots>/../catalog/catalog.jsonl")
    args = parser.parse_args(argv)
    write_catalog(args.snapshots, args.out)


if __name__ == "__main__":
    main()
