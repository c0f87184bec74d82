"""The model's input arrays for one bid request: user + ad + imp context per candidate, vectorised.

Context strings are formed exactly as `training/synthetic.py` formed them, so a request lands in the
buckets the model learned:
  publisher     app.bundle (apps) / site.domain (sites), as training's publisher name; fallbacks for
                requests training never saw: app.domain, then dooh.domain, then dooh.id
  pub_category  IAB tier-1 of the first category of the app/site, else of its publisher ("" when none)
  device_type   str(device.devicetype), e.g. "4" (training's vocabulary is "1", "2", "4", "5")
  os            device.os lowercased ("iOS" -> "ios", training's vocabulary)
  country       device.geo.country uppercased (ISO-3166-1 alpha-3, as training)
  tagid         imp.tagid
  ad_size       "WxH" of banner w/h, else the first banner.format with both, else video w/h
  position      str(banner.pos), else str(video.pos): "0".."7"; pos 0 (OpenRTB "unknown") stays "0"
                because training learned "0" as a position of its own
  hour          the hour bucket, plus hour_sin/hour_cos as dense features
A missing value is feature_spec.MISSING, which training also learned.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.core import feature_spec as fs
from gateway.core.ports import (
    AD_CAT_FIELDS,
    AD_DENSE_FIELDS,
    USER_CAT_FIELDS,
    USER_DENSE_FIELDS,
    AdFeatures,
    UserFeatures,
)
from gateway.openrtb import App, BidRequest, Dooh, Imp, Site

__all__ = [
    "CONTEXT_CAT_FIELDS",
    "CONTEXT_DENSE_FIELDS",
    "RequestContext",
    "assemble",
    "context_from_request",
    "user_key",
]

# The columns of RequestContext.cat, in the model's order (so they land in cat_ids as one slice).
CONTEXT_CAT_FIELDS: Final = (
    "publisher",
    "pub_category",
    "device_type",
    "os",
    "country",
    "tagid",
    "ad_size",
    "position",
    "hour",
)
CONTEXT_DENSE_FIELDS: Final = ("hour_sin", "hour_cos")

_Columns = slice | npt.NDArray[np.intp]


def _columns(names: tuple[str, ...], index: dict[str, int]) -> _Columns:
    """Where `names` land in the model's array; a slice when contiguous (cheaper to assign than a list)."""
    cols = [index[name] for name in names]
    if cols == list(range(cols[0], cols[0] + len(cols))):
        return slice(cols[0], cols[0] + len(cols))
    return np.array(cols, dtype=np.intp)


_USER_CAT_COLS: Final = _columns(USER_CAT_FIELDS, fs.CAT_INDEX)
_AD_CAT_COLS: Final = _columns(AD_CAT_FIELDS, fs.CAT_INDEX)
_CONTEXT_CAT_COLS: Final = _columns(CONTEXT_CAT_FIELDS, fs.CAT_INDEX)
_USER_DENSE_COLS: Final = _columns(USER_DENSE_FIELDS, fs.DENSE_INDEX)
_AD_DENSE_COLS: Final = _columns(AD_DENSE_FIELDS, fs.DENSE_INDEX)
_CONTEXT_DENSE_COLS: Final = _columns(CONTEXT_DENSE_FIELDS, fs.DENSE_INDEX)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The request's context buckets, one row per imp (in request.imp order)."""

    cat: npt.NDArray[np.int64]  # [I, len(CONTEXT_CAT_FIELDS)], columns in CONTEXT_CAT_FIELDS order
    dense: npt.NDArray[np.float32]  # [len(CONTEXT_DENSE_FIELDS)]: the same hour for every imp


def user_key(request: BidRequest) -> str | None:
    """The store key: user.id, else user.buyeruid, else None (anonymous). Empty strings count as absent."""
    user = request.user
    if user is None:
        return None
    return user.id or user.buyeruid or None


def _first_category(*lists: list[str] | None) -> str:
    for categories in lists:
        if categories:
            return fs.iab_tier1(categories[0])
    return fs.MISSING


def _publisher(app: App | None, site: Site | None, dooh: Dooh | None) -> tuple[str, str]:
    """(publisher, pub_category); decode rejects a request with more than one of app/site/dooh."""
    if app is not None:
        category = _first_category(app.cat, app.publisher.cat if app.publisher else None)
        return app.bundle or app.domain or fs.MISSING, category
    if site is not None:
        category = _first_category(site.cat, site.publisher.cat if site.publisher else None)
        return site.domain or fs.MISSING, category
    if dooh is not None:
        # OpenRTB 2.6 Dooh has no cat of its own; its publisher's is the nearest.
        return dooh.domain or dooh.id or fs.MISSING, _first_category(
            dooh.publisher.cat if dooh.publisher else None
        )
    return fs.MISSING, fs.MISSING


def _size(imp: Imp) -> str:
    banner, video = imp.banner, imp.video
    if banner is not None:
        if banner.w and banner.h:
            return fs.ad_size(banner.w, banner.h)
        for fmt in banner.format or ():
            if fmt.w and fmt.h:
                return fs.ad_size(fmt.w, fmt.h)
    if video is not None:
        return fs.ad_size(video.w, video.h)
    return fs.MISSING


def _position(imp: Imp) -> str:
    # `is not None`, not truthiness: pos 0 is a value training learned ("0"), not a missing one.
    if imp.banner is not None and imp.banner.pos is not None:
        return str(imp.banner.pos)
    if imp.video is not None and imp.video.pos is not None:
        return str(imp.video.pos)
    return fs.MISSING


@functools.lru_cache(maxsize=16_384)
def _context_bucket(field: str, value: str) -> int:
    """`fs.hash_field`, remembered: context vocabularies are small (publishers, tag ids, sizes, a few OSes
    and countries), and a cache hit (~100 ns) is a third of hashing (encode + xxh3 + modulo, ~270 ns), with
    8 to 14 lookups a request. Bounded, so a flood of unique values (tag ids from a misbehaving exchange)
    cannot grow memory; buckets are plain ints, so nothing a caller holds can alter the cache."""
    return fs.hash_field(field, value)


def _hour_dense(hour: int) -> npt.NDArray[np.float32]:
    dense = np.array(fs.hour_cycle(hour), dtype=np.float32)
    dense.flags.writeable = False  # shared by every request of that hour
    return dense


# The dense context of each whole hour, built once: np.array of the (sin, cos) pair cost ~0.9 us a request.
_HOUR_DENSE: Final = {hour: _hour_dense(hour) for hour in range(24)}


def context_from_request(request: BidRequest, hour: int) -> RequestContext:
    """Context buckets per imp; `hour` is the UTC hour of day in [0, 24) (ValueError otherwise).

    `dense` is read-only (shared between requests of the same hour); `cat` is the request's own."""
    hour_bucket = fs.hour_bucket(hour)
    publisher, pub_category = _publisher(request.app, request.site, request.dooh)
    device = request.device
    devicetype = os = country = fs.MISSING
    if device is not None:
        devicetype = fs.MISSING if device.devicetype is None else str(device.devicetype)
        os = (device.os or fs.MISSING).lower()
        country = ((device.geo.country if device.geo else None) or fs.MISSING).upper()
    # Rows in CONTEXT_CAT_FIELDS order, written out (a dict per imp, merged and read back by name, cost
    # ~0.6 us more per request); the tests read columns by name, so a reordering cannot go unnoticed.
    shared = (
        _context_bucket("publisher", publisher),
        _context_bucket("pub_category", pub_category),
        _context_bucket("device_type", devicetype),
        _context_bucket("os", os),
        _context_bucket("country", country),
    )
    rows = [  # per imp, not per candidate: a request has a handful
        (
            *shared,
            _context_bucket("tagid", imp.tagid or fs.MISSING),
            _context_bucket("ad_size", _size(imp)),
            _context_bucket("position", _position(imp)),
            hour_bucket,
        )
        for imp in request.imp
    ]
    cat = np.array(rows, dtype=np.int64).reshape(len(rows), len(CONTEXT_CAT_FIELDS))
    dense = _HOUR_DENSE.get(hour)
    if dense is None:  # a fractional hour from a test's clock: not worth remembering
        dense = _hour_dense(hour)
    return RequestContext(cat=cat, dense=dense)


def assemble(
    context: RequestContext,
    user: UserFeatures,
    ads: AdFeatures,
    imp_of_candidate: npt.NDArray[np.intp],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(cat_ids [C, 18] int64, dense [C, 6] float32): row c is the user, ad c, and imp imp_of_candidate[c]."""
    n = ads.cat.shape[0]
    if imp_of_candidate.shape != (n,):
        raise ValueError(f"imp_of_candidate has shape {imp_of_candidate.shape}; expected ({n},)")
    cat = np.empty((n, len(fs.CATEGORICAL_FIELDS)), dtype=np.int64)
    cat[:, _USER_CAT_COLS] = user.cat
    cat[:, _AD_CAT_COLS] = ads.cat
    # One imp: its row broadcasts over every candidate, ~1 us cheaper than gathering n copies of it.
    cat[:, _CONTEXT_CAT_COLS] = context.cat if len(context.cat) == 1 else context.cat[imp_of_candidate]
    dense = np.empty((n, len(fs.DENSE_FIELDS)), dtype=np.float32)
    dense[:, _USER_DENSE_COLS] = user.dense
    dense[:, _AD_DENSE_COLS] = ads.dense
    dense[:, _CONTEXT_DENSE_COLS] = context.dense
    return cat, dense
