"""Native 1.2 markup: the response assets the imp's native request asks for, filled from a NativeCreative.

`imp.native.request` is a JSON string (OpenRTB 2.6 3.2.9), either `{"native": {...}}` (Native 1.0/1.1
style) or the bare request object (Native 1.2 section 4.1); the response mirrors the request's shape.
Assets (Native 1.2 sections 4.2-4.5 and 5.2-5.5) are filled by id and type:
  title                -> creative.title (cut to `len`)
  img type 3 (main)    -> image_url, if image_w x image_h meets wmin x hmin (when both are known)
  img type 1/2 (icon, logo) -> icon_url
  data type 1 (sponsored) / 2 (desc) / 12 (ctatext) -> sponsored_by / description / cta (cut to `len`)
Anything else (video assets, other data types) cannot be filled; `native_fits` says whether every
*required* asset can be, so retrieval skips natives that cannot render. A malformed request string is
"cannot fit" and renders no assets; nothing here raises on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import msgspec

from gateway.catalog.model import NativeCreative
from gateway.openrtb import Imp

__all__ = ["NativeRequest", "native_adm", "native_fits", "parse_native_request"]

NATIVE_VERSION: Final = "1.2"
IMG_ICON, IMG_LOGO, IMG_MAIN = 1, 2, 3  # Native 1.2 table 7.4 Image Asset Types
DATA_SPONSORED, DATA_DESC, DATA_CTATEXT = 1, 2, 12  # table 7.3 Data Asset Types
EVENT_IMPRESSION, METHOD_IMG = 1, 1  # tables 7.6 Event Types, 7.7 Event Tracking Methods
_MAX_CACHED_CHARS: Final = 16_384  # IAB example requests are under 2 KB


class _Lenient(msgspec.Struct, frozen=True, kw_only=True):
    """Request structs: unknown fields ignored (exchanges add their own)."""


class TitleRequest(_Lenient, frozen=True, kw_only=True):
    len: int | None = None


class ImageRequest(_Lenient, frozen=True, kw_only=True):
    type: int | None = None
    wmin: int | None = None
    hmin: int | None = None


class DataRequest(_Lenient, frozen=True, kw_only=True):
    type: int
    len: int | None = None


class AssetRequest(_Lenient, frozen=True, kw_only=True):
    id: int
    required: int = 0
    title: TitleRequest | None = None
    img: ImageRequest | None = None
    data: DataRequest | None = None


class EventTrackerRequest(_Lenient, frozen=True, kw_only=True):
    event: int
    methods: list[int] = msgspec.field(default_factory=list)


class NativeRequestBody(_Lenient, frozen=True, kw_only=True):
    assets: list[AssetRequest] = msgspec.field(default_factory=list)
    eventtrackers: list[EventTrackerRequest] | None = None


@dataclass(frozen=True, slots=True)
class NativeRequest:
    body: NativeRequestBody
    wrapped: bool  # the request came as {"native": {...}}: answer in the same shape


def parse_native_request(raw: str | None) -> NativeRequest | None:
    """The parsed request, or None when it is absent or not a native request (never raises). Cached:
    retrieval asks once per native creative of an imp, with the same string; only strings of a normal
    size, so a client sending huge ones cannot make the cache hold gigabytes."""
    if not raw:
        return None
    if len(raw) > _MAX_CACHED_CHARS:
        return _parse(raw)
    return _parse_cached(raw)


@lru_cache(maxsize=1024)
def _parse_cached(raw: str) -> NativeRequest | None:
    return _parse(raw)


def _parse(raw: str) -> NativeRequest | None:
    try:
        document = msgspec.json.decode(raw)
        wrapped = isinstance(document, dict) and isinstance(document.get("native"), dict)
        body = msgspec.convert(document["native"] if wrapped else document, NativeRequestBody, strict=False)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return NativeRequest(body, wrapped)


def _cut(text: str, limit: int | None) -> str:
    return text if limit is None or limit <= 0 else text[:limit]


def _fill(asset: AssetRequest, creative: NativeCreative) -> dict[str, Any] | None:
    """The response asset for `asset`, or None when the creative has nothing for it."""
    if asset.title is not None:
        return {"id": asset.id, "title": {"text": _cut(creative.title, asset.title.len)}}
    if asset.img is not None:
        img = asset.img
        if img.type in (IMG_ICON, IMG_LOGO):
            return None if creative.icon_url is None else {"id": asset.id, "img": {"url": creative.icon_url}}
        if creative.image_url is None:
            return None
        w, h = creative.image_w, creative.image_h
        if w is not None and h is not None and (w < (img.wmin or 0) or h < (img.hmin or 0)):
            return None
        sized = {"w": w, "h": h} if w is not None and h is not None else {}
        return {"id": asset.id, "img": {"url": creative.image_url, **sized}}
    if asset.data is not None:
        value = {
            DATA_SPONSORED: creative.sponsored_by,
            DATA_DESC: creative.description,
            DATA_CTATEXT: creative.cta,
        }
        text = value.get(asset.data.type)
        return None if not text else {"id": asset.id, "data": {"value": _cut(text, asset.data.len)}}
    return None  # video or an unknown asset kind


def native_fits(imp: Imp, creative: NativeCreative) -> bool:
    """Whether the imp asks for native and every asset it marks required can be filled."""
    request = parse_native_request(imp.native.request if imp.native is not None else None)
    if request is None:
        return False
    return all(_fill(asset, creative) is not None for asset in request.body.assets if asset.required == 1)


def native_adm(imp: Imp, creative: NativeCreative, click_url: str, impression_url: str) -> str:
    """The Native 1.2 response as a JSON string (Bid.adm): every asset that can be filled, the link,
    and an impression event tracker when the request accepts image-pixel impression trackers."""
    request = parse_native_request(imp.native.request if imp.native is not None else None)
    assets: list[dict[str, Any]] = []
    response: dict[str, Any] = {"ver": NATIVE_VERSION, "assets": assets, "link": {"url": click_url}}
    if request is None:
        return msgspec.json.encode(response).decode()
    for asset in request.body.assets:
        filled = _fill(asset, creative)
        if filled is not None:
            assets.append(filled)
    if any(t.event == EVENT_IMPRESSION and METHOD_IMG in t.methods for t in request.body.eventtrackers or ()):
        response["eventtrackers"] = [{"event": EVENT_IMPRESSION, "method": METHOD_IMG, "url": impression_url}]
    return msgspec.json.encode({"native": response} if request.wrapped else response).decode()
