"""`CatalogRetriever`: the catalog's `CandidateSource`, from a plain OpenRTB request to its top-K candidates.

Per request: one bitset of the creatives whose campaign may bid on it at all (flight dates, hour, geo,
device, channel, site/app lists, publisher categories, minus badv/bcat/bapp). Per imp: the creatives whose
format fits it (minus its battr), and of those the open-auction ones (unless the auction is private) and
the ones whose campaign names one of its deals that the campaign's seat may buy. The lowest set bits are the
best by prior eCPM (index positions are in that order), so the top K per imp are read straight off the
bitset, and the request's top K are the best K of their union (a creative in the request's top K is in the
top K of every imp it fits, so nothing is lost by cutting per imp first).

A candidate fitting several imps lists them in `imp_ids` (None when the request has one imp). A deal
creative carries the first of the imp's deals (in the request's order) that its campaign names; at another
imp it is offered only through that same deal, since a candidate bids into one deal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Final, Protocol, TypeVar, overload

import msgspec
import numpy as np

from gateway.catalog.bitset import Bits, count, first_positions
from gateway.catalog.index import NATIVE, CatalogIndex, FormatIndex, normalise_domain
from gateway.catalog.model import NativeCreative
from gateway.core.ports import Retrieved
from gateway.openrtb import Audio, BidRequest, Candidate, Imp, Video

__all__ = ["DEFAULT_TOP_K", "CatalogRetriever", "IndexHolder", "NativeFits", "PositionView"]

DEFAULT_TOP_K: Final = 200
SECONDS_PER_HOUR: Final = 3600

NativeFits = Callable[[Imp, NativeCreative], bool]
_T = TypeVar("_T")


class IndexHolder(Protocol):
    """Where the current index lives (`gateway.catalog.reloader.CatalogHolder`); None before a first load."""

    @property
    def index(self) -> CatalogIndex | None: ...


class CatalogRetriever:
    """Retrieval over whatever index `holder` holds at the start of each request (one attribute read, so a
    reload swapping it mid-request cannot mix two catalogs)."""

    def __init__(
        self,
        holder: IndexHolder,
        *,
        seat: str | None = None,
        top_k: int = DEFAULT_TOP_K,
        native_fits: NativeFits | None = None,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be positive, got {top_k}")
        self._holder = holder
        self._seat = seat  # the gateway's own buyer seat: campaigns without a seat buy deals as it
        self._top_k = top_k
        self._native_fits = native_fits

    def retrieve(self, request: BidRequest, now: float) -> Retrieved:
        index = self._holder.index
        if index is None or index.size == 0:
            return Retrieved(candidates=[], creatives=[], per_imp=[0] * len(request.imp), catalog_version="")
        eligible = _request_mask(index, request, now)
        per_imp: list[int] = []
        offers: list[tuple[list[int], list[str | None]]] = []
        for imp in request.imp:
            survivors, deals = self._imp_survivors(index, imp, eligible)
            per_imp.append(count(survivors))
            positions = self._top(index, imp, survivors)
            offers.append((positions, _deal_of(positions, deals)))
        if len(request.imp) == 1:
            positions, deal_ids = offers[0]
            candidates = _pick(index.candidates, positions)
            if any(deal_ids):
                pairs = zip(candidates, deal_ids, strict=True)
                candidates = [_with(candidate, None, deal_id) for candidate, deal_id in pairs]
        else:
            positions, candidates = self._merge(index, request.imp, offers)
        return Retrieved(
            candidates=candidates,
            creatives=PositionView(index.refs, positions),
            per_imp=per_imp,
            catalog_version=index.version,
            seats=PositionView(index.seats, positions),
        )

    def _imp_survivors(
        self, index: CatalogIndex, imp: Imp, eligible: Bits
    ) -> tuple[Bits, list[tuple[str, Bits]]]:
        """The creatives that may bid on `imp`, and per deal of the imp the ones bidding into it."""
        fit = _format_fit(index, imp)
        np.bitwise_and(fit, eligible, out=fit)
        pmp = imp.pmp
        private = pmp is not None and pmp.private_auction == 1
        survivors = index.empty() if private else np.bitwise_and(fit, index.open_auction)
        deals: list[tuple[str, Bits]] = []
        for deal in (pmp.deals or []) if pmp is not None else []:
            if deal.id not in index.deals:
                continue
            bidders = index.deals.union([deal.id])
            np.bitwise_and(bidders, fit, out=bidders)
            if deal.wseat:  # absent or empty: any seat (OpenRTB: omission means no restriction)
                seats = index.seats_index.union(deal.wseat)
                if self._seat is not None and self._seat in deal.wseat:
                    np.bitwise_or(seats, index.gateway_seat, out=seats)
                np.bitwise_and(bidders, seats, out=bidders)
            deals.append((deal.id, bidders))
            np.bitwise_or(survivors, bidders, out=survivors)
        return survivors, deals

    def _top(self, index: CatalogIndex, imp: Imp, survivors: Bits) -> list[int]:
        """The best top_k positions of `survivors`, after the native hook where one applies."""
        if self._native_fits is None or imp.native is None:
            positions: list[int] = first_positions(survivors, self._top_k).tolist()
            return positions
        kept: list[int] = []
        skip = 0
        while len(kept) < self._top_k:
            batch = first_positions(survivors, self._top_k - len(kept), skip).tolist()
            if not batch:
                break
            skip += len(batch)
            for p in batch:
                native = index.refs[p].creative.native
                if index.kinds[p] != NATIVE or native is None or self._native_fits(imp, native):
                    kept.append(p)
        return kept

    def _merge(
        self, index: CatalogIndex, imps: Sequence[Imp], offers: list[tuple[list[int], list[str | None]]]
    ) -> tuple[list[int], list[Candidate]]:
        imp_ids: dict[int, list[str]] = {}
        deal_of: dict[int, str | None] = {}
        for imp, (positions, deal_ids) in zip(imps, offers, strict=True):
            for p, deal_id in zip(positions, deal_ids, strict=True):
                listed = imp_ids.get(p)
                if listed is None:
                    deal_of[p] = deal_id
                    imp_ids[p] = [imp.id]
                elif deal_of[p] == deal_id:
                    listed.append(imp.id)
        best = sorted(imp_ids)[: self._top_k]
        replace = msgspec.structs.replace
        candidates = _pick(index.candidates, best)
        return best, [
            replace(candidate, imp_ids=imp_ids[p], deal_id=deal_of[p])
            for p, candidate in zip(best, candidates, strict=True)
        ]


class PositionView(Sequence[_T]):
    """values[positions[i]] at i, read on demand: the data plane looks up the creative and seat of the
    few winners only, so copying K of each per request would be wasted."""

    __slots__ = ("_positions", "_values")

    def __init__(self, values: Sequence[_T], positions: list[int]) -> None:
        self._values = values
        self._positions = positions

    def __len__(self) -> int:
        return len(self._positions)

    @overload
    def __getitem__(self, i: int) -> _T: ...

    @overload
    def __getitem__(self, i: slice) -> list[_T]: ...

    def __getitem__(self, i: int | slice) -> _T | list[_T]:
        if isinstance(i, slice):
            return [self._values[p] for p in self._positions[i]]
        return self._values[self._positions[i]]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container semantics, like list

    def __repr__(self) -> str:
        return f"PositionView({list(self)!r})"


def _pick(values: Sequence[_T], positions: list[int]) -> list[_T]:
    """values[p] for each position; itemgetter does the loop in C (~3x a comprehension at K = 200)."""
    if len(positions) > 1:
        return list(itemgetter(*positions)(values))
    return [values[p] for p in positions]


def _with(candidate: Candidate, imp_ids: list[str] | None, deal_id: str | None) -> Candidate:
    if imp_ids is None and deal_id is None:
        return candidate  # the prebuilt one: the common open-auction single-imp request copies nothing
    return msgspec.structs.replace(candidate, imp_ids=imp_ids, deal_id=deal_id)


def _deal_of(positions: list[int], deals: list[tuple[str, Bits]]) -> list[str | None]:
    """Per position, the first deal whose bidders include it (None: an open-auction creative)."""
    result: list[str | None] = [None] * len(positions)
    if not deals or not positions:
        return result
    at = np.array(positions, dtype=np.int64)
    words, shifts = at >> 6, (at & 63).astype(np.uint64)
    for deal_id, bidders in reversed(deals):  # reversed: the first listed deal is written last and wins
        for k in np.flatnonzero((bidders[words] >> shifts) & np.uint64(1)).tolist():
            result[k] = deal_id
    return result


def _request_mask(index: CatalogIndex, request: BidRequest, now: float) -> Bits:
    """The creatives whose campaign may bid on this request at `now`, before any imp is looked at."""
    result = index.flights.live(now).copy()
    device = request.device
    geo = device.geo if device is not None else None
    country = geo.country if geo is not None else None
    region = geo.region if geo is not None else None
    channel, domain, bundle, categories = _inventory(request)
    index.hours.restrict([int(now // SECONDS_PER_HOUR) % 24], result)
    index.channels.restrict([channel] if channel else [], result)
    index.countries.restrict([country.strip().upper()] if country else [], result)
    index.regions.restrict([region.strip().upper()] if region else [], result)
    index.device_types.restrict(
        [device.devicetype] if device and device.devicetype is not None else [], result
    )
    index.os.restrict([device.os.strip().lower()] if device and device.os else [], result)
    index.site_domains.restrict([domain] if domain else [], result)
    index.app_bundles.restrict([bundle] if bundle else [], result)
    index.publisher_categories.restrict(_with_parents(categories), result)
    if domain:
        index.site_domains_blocked.clear_in([domain], result)
    if bundle:
        index.app_bundles_blocked.clear_in([bundle], result)
    if request.badv:
        index.advertisers.clear_in([adv.strip().lower() for adv in request.badv], result)
    if request.bcat:
        index.categories.clear_in(request.bcat, result)
        index.category_parents.clear_in(request.bcat, result)
    if request.bapp:
        index.promoted_apps.clear_in([app.strip().lower() for app in request.bapp], result)
    return result


def _inventory(request: BidRequest) -> tuple[str | None, str | None, str | None, list[str]]:
    """The request's channel, site domain, app bundle and publisher categories (the site/app's own and its
    publisher's)."""
    if request.site is not None:
        site = request.site
        publisher_cat = site.publisher.cat if site.publisher is not None else None
        domain = normalise_domain(site.domain) if site.domain else None
        return "site", domain, None, [*(site.cat or ()), *(publisher_cat or ())]
    if request.app is not None:
        app = request.app
        publisher_cat = app.publisher.cat if app.publisher is not None else None
        bundle = app.bundle.strip().lower() if app.bundle else None
        return "app", None, bundle, [*(app.cat or ()), *(publisher_cat or ())]
    if request.dooh is not None:
        publisher = request.dooh.publisher
        return "dooh", None, None, list(publisher.cat or ()) if publisher is not None else []
    return None, None, None, []


def _with_parents(categories: list[str]) -> set[str]:
    """A listed tier-1 code matches its children: the request's "IAB3-1" also looks up "IAB3"."""
    return {*categories, *(code.partition("-")[0] for code in categories)}


def _format_fit(index: CatalogIndex, imp: Imp) -> Bits:
    """The creatives whose format fits the imp, minus those carrying an attribute the imp blocks."""
    fit = index.empty()
    banner = imp.banner
    if banner is not None:
        sizes = [(banner.w, banner.h)] if banner.w and banner.h else []
        sizes += [(f.w, f.h) for f in banner.format or () if f.w and f.h]
        part = index.banner_sizes.union(sizes) if sizes else index.banner_every.copy()
        if banner.mimes:
            np.bitwise_and(part, index.banner_mimes.union([m.lower() for m in banner.mimes]), out=part)
        index.attrs.clear_in(banner.battr or (), part)
        np.bitwise_or(fit, part, out=fit)
    for media, spec in ((index.video, imp.video), (index.audio, imp.audio)):
        if spec is not None:
            np.bitwise_or(fit, _media_fit(index, media, spec), out=fit)
    if imp.native is not None:
        part = index.native_every.copy()
        index.attrs.clear_in(imp.native.battr or (), part)
        np.bitwise_or(fit, part, out=fit)
    return fit


def _media_fit(index: CatalogIndex, media: FormatIndex, spec: Video | Audio) -> Bits:
    part = media.durations.union(media.durations_within(spec.minduration, spec.maxduration or None))
    np.bitwise_and(part, media.every, out=part)
    if spec.mimes:
        np.bitwise_and(part, media.mimes.union([m.lower() for m in spec.mimes]), out=part)
    if spec.protocols:
        np.bitwise_and(part, media.protocols.union(spec.protocols), out=part)
    index.attrs.clear_in(spec.battr or (), part)
    return part
