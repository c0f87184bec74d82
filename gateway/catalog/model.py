"""The campaign catalog's schema: what one line of a catalog file holds (a campaign with its creatives).

A catalog file is JSON Lines. Its first line is the header, `{"catalog_version": "<non-empty>", ...}`;
every other line is one `Campaign` with its `creatives`. Blank lines are allowed. Unknown fields are
errors (a typo in a targeting key must not silently widen a campaign's reach). The loader
(`gateway.catalog.loader`) validates every line and names the line and field of the first problem.

Targeting semantics (every rule that is absent or empty matches everything):
  countries / regions      device.geo.country (ISO-3166-1 alpha-3) / device.geo.region; a request
                           without them does not match a campaign that lists any.
  device_types, os         device.devicetype (AdCOM device types), device.os (case-insensitive).
  app_bundles, site_domains  allow-lists: the request's app.bundle / site.domain must be listed
                           (a "www." prefix on the domain is ignored); `*_blocked` are block-lists.
  publisher_categories     the site/app (or its publisher's) IAB categories: at least one listed, where a
                           listed tier-1 code ("IAB3") also matches its tier-2 children ("IAB3-1").
  hours_utc                the UTC hour of the auction.
  channels                 which of "site", "app", "dooh" the campaign buys.
  deal_ids                 PMP line items: the campaign bids only into these deals, at their floors,
                           and never in the open auction. Absent: open auction only.
A creative fits an imp when its format does: a banner size among the imp's banner w x h and formats, a
video/audio whose duration lies in [minduration, maxduration], whose mime is accepted and which can be
served in one of the requested protocols, a native creative when the imp asks for native. A creative's
`attr` must not meet the imp's `battr`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
Hour = Annotated[int, msgspec.Meta(ge=0, le=23)]
Url = Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$")]

CampaignStatus = Literal["active", "paused"]
Channel = Literal["site", "app", "dooh"]
CatalogBidType = Literal["cpm", "cpc", "cpa"]

# Creative Subtypes (AdCOM 1.0) a video/audio creative can be served as: VAST 2.0-4.x, inline and
# wrapper. The markup is written in the highest version both the imp and the creative allow.
VAST_PROTOCOLS: tuple[int, ...] = (2, 3, 5, 6, 7, 8, 11, 12)


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Catalog structs: frozen (the index shares them across requests), no unknown fields."""


class BannerSize(_Strict, frozen=True, kw_only=True):
    w: PositiveInt
    h: PositiveInt


class BannerCreative(_Strict, frozen=True, kw_only=True):
    sizes: Annotated[list[BannerSize], msgspec.Meta(min_length=1)]
    image_url: Url
    mimes: list[str] = msgspec.field(default_factory=lambda: ["image/png"])


class VideoCreative(_Strict, frozen=True, kw_only=True):
    media_url: Url
    mime: NonEmptyStr = "video/mp4"
    duration_s: PositiveInt
    w: PositiveInt = 640
    h: PositiveInt = 360
    protocols: list[int] = msgspec.field(default_factory=lambda: list(VAST_PROTOCOLS))


class AudioCreative(_Strict, frozen=True, kw_only=True):
    media_url: Url
    mime: NonEmptyStr = "audio/mp4"
    duration_s: PositiveInt
    protocols: list[int] = msgspec.field(default_factory=lambda: list(VAST_PROTOCOLS))


class NativeCreative(_Strict, frozen=True, kw_only=True):
    title: NonEmptyStr
    sponsored_by: NonEmptyStr
    description: str | None = None
    image_url: Url | None = None
    image_w: PositiveInt | None = None
    image_h: PositiveInt | None = None
    icon_url: Url | None = None
    cta: str | None = None


class Creative(_Strict, frozen=True, kw_only=True):
    """One ad. `id` is also the ad's feature key (the store's ad id) and the bid's crid and adid.
    Exactly one of banner / video / audio / native is set."""

    id: NonEmptyStr
    click_url: Url
    banner: BannerCreative | None = None
    video: VideoCreative | None = None
    audio: AudioCreative | None = None
    native: NativeCreative | None = None
    attr: list[int] = msgspec.field(default_factory=list)  # AdCOM Creative Attributes
    cat: list[str] | None = None  # None: the campaign's categories
    # Priors for retrieval's pre-ranking by expected eCPM (before the model scores the top K); absent: the
    # population means the feature store uses for unknown ads.
    prior_ctr: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    prior_cvr: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None

    def kind(self) -> Literal["banner", "video", "audio", "native"]:
        """The creative's format; the loader guarantees exactly one is set."""
        if self.banner is not None:
            return "banner"
        if self.video is not None:
            return "video"
        if self.audio is not None:
            return "audio"
        return "native"


class Targeting(_Strict, frozen=True, kw_only=True):
    countries: list[str] | None = None
    regions: list[str] | None = None
    device_types: list[int] | None = None
    os: list[str] | None = None
    app_bundles: list[str] | None = None
    app_bundles_blocked: list[str] | None = None
    site_domains: list[str] | None = None
    site_domains_blocked: list[str] | None = None
    publisher_categories: list[str] | None = None
    hours_utc: list[Hour] | None = None
    channels: list[Channel] | None = None
    deal_ids: list[str] | None = None


class Campaign(_Strict, frozen=True, kw_only=True):
    """A campaign (line item): who pays, how it bids, where it may run, and its creatives.

    `bid` is in USD: a CPM for cpm, per click for cpc, per conversion for cpa (eCPM from pCTR/pCVR as for
    `ext.candidates`). Budget and frequency cap are the campaign state Redis enforces (CampaignConfig);
    `start`/`end` are ISO 8601 instants (UTC when no offset is given), end exclusive."""

    id: NonEmptyStr
    advertiser: NonEmptyStr  # the advertiser's domain: the bid's adomain, matched against badv
    cat: list[str] = msgspec.field(default_factory=list)
    bid_type: CatalogBidType = "cpm"
    bid: Annotated[float, msgspec.Meta(gt=0)]
    status: CampaignStatus = "active"
    start: str | None = None
    end: str | None = None
    daily_budget_usd: Annotated[float, msgspec.Meta(ge=0)] | None = None
    freq_cap: Annotated[int, msgspec.Meta(ge=0)] = 0
    seat: str | None = None  # the buyer seat for deals' wseat; None: the gateway's seat
    app_bundle: str | None = None  # the app the campaign promotes (bundle or store id): matched against bapp
    targeting: Targeting = msgspec.field(default_factory=Targeting)
    creatives: Annotated[list[Creative], msgspec.Meta(min_length=1)]


@dataclass(frozen=True, slots=True)
class CreativeRef:
    """What retrieval hands the renderer for a candidate (`Retrieved.creatives[i]`): the creative and the
    campaign it belongs to."""

    campaign: Campaign
    creative: Creative


class CatalogHeader(_Strict, frozen=True, kw_only=True):
    catalog_version: NonEmptyStr
    generated_at: str | None = None
    description: str | None = None
