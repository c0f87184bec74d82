"""The catalog's inverted index: per targeting dimension, value -> the creatives that accept it.

Built once per catalog version (seconds at 1M creatives, so off the event loop) and never changed after:
requests read it from any thread. Creatives get positions in prior-eCPM order, best first, so the first K
set bits of any intersection are its top K by prior eCPM, and `bitset.first_positions` reads only those.

An allow-list dimension (countries, os, site_domains, ...) holds an `unrestricted` bitset (creatives of
campaigns that do not restrict it) and one posting per listed value; a request value v is accepted by
`unrestricted | posting[v]`. Block-lists and the request's own blocks (badv, bcat, bapp, battr) are
postings cleared from the result. Formats are postings too: banner size, mime, protocol, and video/audio
duration by its whole-second value, so the only check left per creative is the optional native hook.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from gateway.catalog.bitset import Bits, Posting, empty
from gateway.catalog.loader import Catalog, FlightWindow, flight_window
from gateway.catalog.model import Campaign, Creative, CreativeRef, Targeting
from gateway.core import feature_spec
from gateway.openrtb import Candidate

__all__ = ["AllowIndex", "CatalogIndex", "build_index", "normalise_domain", "prior_ecpm"]

K = TypeVar("K", bound=Hashable)

_WWW: Final = "www."


def normalise_domain(domain: str) -> str:
    """Domains compare lower-case and without a leading "www."."""
    lowered = domain.strip().lower()
    return lowered[len(_WWW) :] if lowered.startswith(_WWW) else lowered


def prior_ecpm(campaign: Campaign, creative: Creative) -> float:
    """The pre-ranking score: the bid as a USD CPM at the creative's prior CTR/CVR."""
    ctr = feature_spec.DEFAULT_AD_CTR if creative.prior_ctr is None else creative.prior_ctr
    cvr = feature_spec.DEFAULT_AD_CVR if creative.prior_cvr is None else creative.prior_cvr
    if campaign.bid_type == "cpc":
        return campaign.bid * ctr * 1000.0
    if campaign.bid_type == "cpa":
        return campaign.bid * ctr * cvr * 1000.0
    return campaign.bid


@dataclass(frozen=True, slots=True)
class AllowIndex(Generic[K]):
    """One allow-list dimension. `accepted(values)` is None when no campaign restricts it (everything is
    accepted: no bitset work at all)."""

    unrestricted: Bits
    postings: Mapping[K, Posting]

    def restrict(self, values: Iterable[K], target: Bits) -> None:
        """target &= the creatives accepting one of `values`: unrestricted | posting[v] for each v.

        Written to touch the full bitset once or twice: a value nobody lists is one AND with
        `unrestricted`; one sparse posting is that AND plus a gather and scatter of its few words
        (target & posting, saved first); denser cases OR into a copy of `unrestricted`."""
        if not self.postings:
            return  # nobody restricts this dimension
        found = [posting for value in values if (posting := self.postings.get(value)) is not None]
        if len(found) == 1 and found[0].words is None:
            sparse = found[0]
            kept = target[sparse.word_index] & sparse.word_bits
            np.bitwise_and(target, self.unrestricted, out=target)
            target[sparse.word_index] |= kept
            return
        if not found:
            np.bitwise_and(target, self.unrestricted, out=target)
            return
        accepted = self.unrestricted.copy()
        for posting in found:
            posting.or_into(accepted)
        np.bitwise_and(target, accepted, out=target)


@dataclass(frozen=True, slots=True)
class Postings(Generic[K]):
    """value -> posting, for block-lists and formats: `union(values)` ORs them into a new bitset."""

    size: int
    postings: Mapping[K, Posting]

    def union(self, values: Iterable[K]) -> Bits:
        result = empty(self.size)
        self.or_into(values, result)
        return result

    def or_into(self, values: Iterable[K], target: Bits) -> None:
        for value in values:
            posting = self.postings.get(value)
            if posting is not None:
                posting.or_into(target)

    def clear_in(self, values: Iterable[K], target: Bits) -> None:
        for value in values:
            posting = self.postings.get(value)
            if posting is not None:
                posting.clear_in(target)

    def __contains__(self, value: object) -> bool:
        return value in self.postings


@dataclass(frozen=True, slots=True)
class FormatIndex:
    """Video or audio: every creative of the kind, and its mime, protocol and duration postings."""

    every: Bits
    mimes: Postings[str]
    protocols: Postings[int]
    durations: Postings[int]
    duration_values: tuple[int, ...]  # the distinct durations, ascending

    def durations_within(self, low: int | None, high: int | None) -> list[int]:
        start = 0 if low is None else bisect.bisect_left(self.duration_values, low)
        stop = len(self.duration_values) if high is None else bisect.bisect_right(self.duration_values, high)
        return list(self.duration_values[start:stop])


@dataclass(frozen=True, slots=True)
class Flights:
    """Which creatives may bid at an instant: `always` (active, no dates) plus each dated campaign's
    creatives inside their window. The set only changes at a window boundary, so the last answer is
    memoised for the interval between two boundaries (one tuple swapped whole: safe across threads)."""

    always: Bits
    dated: tuple[tuple[FlightWindow, Posting], ...]
    boundaries: tuple[float, ...]
    _memo: list[tuple[int, Bits]] = field(default_factory=list)

    def live(self, now: float) -> Bits:
        if not self.dated:
            return self.always
        interval = bisect.bisect_right(self.boundaries, now)
        memo = self._memo[0] if self._memo else None
        if memo is not None and memo[0] == interval:
            return memo[1]
        result = self.always.copy()
        for window, posting in self.dated:
            if window.covers(now):
                posting.or_into(result)
        # A one-slot memo: replacing the slot is one list store, and a racing reader sees either answer,
        # both right for their own interval.
        if self._memo:
            self._memo[0] = (interval, result)
        else:
            self._memo.append((interval, result))
        return result


@dataclass(frozen=True, slots=True)
class CatalogIndex:
    """Everything retrieval reads, in position order (prior eCPM, best first)."""

    version: str
    size: int
    refs: tuple[CreativeRef, ...]
    candidates: tuple[Candidate, ...]  # each creative's candidate with imp_ids and deal_id unset
    seats: tuple[str | None, ...]
    kinds: npt.NDArray[np.int8]  # 0 banner, 1 video, 2 audio, 3 native
    flights: Flights
    # Allow-list targeting
    countries: AllowIndex[str]
    regions: AllowIndex[str]
    device_types: AllowIndex[int]
    os: AllowIndex[str]
    app_bundles: AllowIndex[str]
    site_domains: AllowIndex[str]
    publisher_categories: AllowIndex[str]
    hours: AllowIndex[int]
    channels: AllowIndex[str]
    # Block-lists: the campaign's, then what a request may block
    app_bundles_blocked: Postings[str]
    site_domains_blocked: Postings[str]
    advertisers: Postings[str]  # lower-case domain
    categories: Postings[str]  # exact IAB code
    category_parents: Postings[str]  # tier-1 parent of a code ("IAB25" for "IAB25-3")
    promoted_apps: Postings[str]  # campaign.app_bundle, for bapp
    attrs: Postings[int]
    # Deals: campaigns without deal_ids bid in the open auction, the others only into their deals
    open_auction: Bits
    deals: Postings[str]
    seats_index: Postings[str]
    gateway_seat: Bits  # creatives of campaigns with no seat of their own
    # Formats
    banner_every: Bits
    banner_sizes: Postings[tuple[int, int]]
    banner_mimes: Postings[str]
    video: FormatIndex
    audio: FormatIndex
    native_every: Bits

    def empty(self) -> Bits:
        return empty(self.size)


KIND_CODES: Final = {"banner": 0, "video": 1, "audio": 2, "native": 3}
NATIVE: Final = 3


class _Collector:
    """Gathers value -> positions while walking the catalog once."""

    def __init__(self) -> None:
        self.allow: dict[str, tuple[list[int], defaultdict[Hashable, list[int]]]] = {}
        self.values: dict[str, defaultdict[Hashable, list[int]]] = {}

    def allow_list(self, dimension: str, values: Sequence[Hashable] | None, positions: range) -> None:
        unrestricted, postings = self.allow.setdefault(dimension, ([], defaultdict(list)))
        if not values:
            unrestricted.extend(positions)
            return
        for value in set(values):
            postings[value].extend(positions)

    def add(self, dimension: str, values: Iterable[Hashable], position: int | range) -> None:
        postings = self.values.setdefault(dimension, defaultdict(list))
        for value in set(values):
            if isinstance(position, range):
                postings[value].extend(position)
            else:
                postings[value].append(position)


def build_index(catalog: Catalog) -> CatalogIndex:
    """Index a validated catalog. Paused campaigns are left out altogether."""
    pairs = [
        (campaign, creative)
        for campaign in catalog.campaigns
        if campaign.status == "active"
        for creative in campaign.creatives
    ]
    # Stable sort: equal eCPMs keep file order, so the index is deterministic for a given file.
    pairs.sort(key=lambda pair: -prior_ecpm(*pair))
    size = len(pairs)
    collector = _Collector()
    windows: dict[FlightWindow, list[int]] = defaultdict(list)
    always: list[int] = []
    position = 0
    while position < size:
        campaign = pairs[position][0]
        stop = position
        while stop < size and pairs[stop][0] is campaign:
            stop += 1
        # Campaign-level facts for its run of positions (a campaign's creatives are not always
        # contiguous after sorting: runs are per stretch of equal campaign, which is still correct).
        _collect_campaign(collector, campaign, range(position, stop), windows, always)
        for p in range(position, stop):
            _collect_creative(collector, campaign, pairs[p][1], p)
        position = stop
    return _assemble(catalog.version, pairs, collector, windows, always)


def _collect_campaign(
    collector: _Collector,
    campaign: Campaign,
    positions: range,
    windows: dict[FlightWindow, list[int]],
    always: list[int],
) -> None:
    targeting: Targeting = campaign.targeting
    allow = collector.allow_list
    allow("countries", _upper(targeting.countries), positions)
    allow("regions", _upper(targeting.regions), positions)
    allow("device_types", targeting.device_types, positions)
    allow("os", _lower(targeting.os), positions)
    allow("app_bundles", _lower(targeting.app_bundles), positions)
    allow("site_domains", _domains(targeting.site_domains), positions)
    allow("publisher_categories", targeting.publisher_categories, positions)
    allow("hours", targeting.hours_utc, positions)
    allow("channels", targeting.channels, positions)
    collector.add("app_bundles_blocked", _lower(targeting.app_bundles_blocked) or (), positions)
    collector.add("site_domains_blocked", _domains(targeting.site_domains_blocked) or (), positions)
    collector.add("advertisers", [campaign.advertiser.lower()], positions)
    if campaign.app_bundle:
        collector.add("promoted_apps", [campaign.app_bundle.lower()], positions)
    if targeting.deal_ids:
        collector.add("deals", targeting.deal_ids, positions)
    else:
        collector.add("open", [True], positions)
    if campaign.seat is None:
        collector.add("gateway_seat", [True], positions)
    else:
        collector.add("seats", [campaign.seat], positions)
    window = flight_window(campaign)
    if window == FlightWindow():
        always.extend(positions)
    else:
        windows[window].extend(positions)


def _collect_creative(collector: _Collector, campaign: Campaign, creative: Creative, position: int) -> None:
    add = collector.add
    codes = creative.cat if creative.cat is not None else campaign.cat
    add("categories", codes, position)
    add("category_parents", [code.partition("-")[0] for code in codes], position)
    add("attrs", creative.attr, position)
    kind = creative.kind()
    add("kind", [kind], position)
    if creative.banner is not None:
        add("banner_sizes", [(size.w, size.h) for size in creative.banner.sizes], position)
        add("banner_mimes", [mime.lower() for mime in creative.banner.mimes], position)
    for name, media in (("video", creative.video), ("audio", creative.audio)):
        if media is not None:
            add(f"{name}_mimes", [media.mime.lower()], position)
            add(f"{name}_protocols", media.protocols, position)
            add(f"{name}_durations", [media.duration_s], position)


def _assemble(
    version: str,
    pairs: list[tuple[Campaign, Creative]],
    collector: _Collector,
    windows: dict[FlightWindow, list[int]],
    always: list[int],
) -> CatalogIndex:
    size = len(pairs)

    def posting(positions: Iterable[int]) -> Posting:
        return Posting.build(positions, size)

    def dense(positions: Iterable[int]) -> Bits:
        built = Posting.build(positions, size)
        result = empty(size)
        built.or_into(result)
        return result

    # The collector's keys are whatever each dimension holds (str, int, a size): typed at the fields.
    def allow_index(dimension: str) -> AllowIndex[Any]:
        unrestricted, postings = collector.allow.get(dimension, ([], defaultdict(list)))
        if not postings:  # nobody restricts this dimension: skip it per request
            return AllowIndex(unrestricted=empty(0), postings={})
        return AllowIndex(
            unrestricted=dense(unrestricted),
            postings={value: posting(p) for value, p in postings.items()},
        )

    def values(dimension: str) -> Mapping[Hashable, list[int]]:
        return collector.values.get(dimension) or {}

    def postings(dimension: str) -> Postings[Any]:
        return Postings(size=size, postings={value: posting(p) for value, p in values(dimension).items()})

    def one(dimension: str, value: Hashable) -> Bits:
        return dense(values(dimension).get(value, []))

    def media(name: str) -> FormatIndex:
        durations: Postings[int] = postings(f"{name}_durations")
        return FormatIndex(
            every=one("kind", name),
            mimes=postings(f"{name}_mimes"),
            protocols=postings(f"{name}_protocols"),
            durations=durations,
            duration_values=tuple(sorted(durations.postings)),
        )

    dated = tuple((window, posting(p)) for window, p in windows.items())
    boundaries = sorted({edge for window in windows for edge in (window.start, window.end)})
    refs = tuple(CreativeRef(campaign=campaign, creative=creative) for campaign, creative in pairs)
    return CatalogIndex(
        version=version,
        size=size,
        refs=refs,
        candidates=tuple(_candidate(campaign, creative) for campaign, creative in pairs),
        seats=tuple(campaign.seat for campaign, _ in pairs),
        kinds=np.fromiter((KIND_CODES[c.kind()] for _, c in pairs), dtype=np.int8, count=size),
        flights=Flights(always=dense(always), dated=dated, boundaries=tuple(boundaries)),
        countries=allow_index("countries"),
        regions=allow_index("regions"),
        device_types=allow_index("device_types"),
        os=allow_index("os"),
        app_bundles=allow_index("app_bundles"),
        site_domains=allow_index("site_domains"),
        publisher_categories=allow_index("publisher_categories"),
        hours=allow_index("hours"),
        channels=allow_index("channels"),
        app_bundles_blocked=postings("app_bundles_blocked"),
        site_domains_blocked=postings("site_domains_blocked"),
        advertisers=postings("advertisers"),
        categories=postings("categories"),
        category_parents=postings("category_parents"),
        promoted_apps=postings("promoted_apps"),
        attrs=postings("attrs"),
        open_auction=one("open", True),
        deals=postings("deals"),
        seats_index=postings("seats"),
        gateway_seat=one("gateway_seat", True),
        banner_every=one("kind", "banner"),
        banner_sizes=postings("banner_sizes"),
        banner_mimes=postings("banner_mimes"),
        video=media("video"),
        audio=media("audio"),
        native_every=one("kind", "native"),
    )


def _candidate(campaign: Campaign, creative: Creative) -> Candidate:
    return Candidate(
        id=creative.id,
        campaign_id=campaign.id,
        advertiser=campaign.advertiser,
        bid_type=campaign.bid_type,
        bid=campaign.bid,
        cat=list(creative.cat if creative.cat is not None else campaign.cat),
        crid=creative.id,
    )


def _upper(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else [value.strip().upper() for value in values]


def _lower(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else [value.strip().lower() for value in values]


def _domains(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else [normalise_domain(value) for value in values]
