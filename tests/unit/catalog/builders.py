"""Small catalogs and requests for the catalog tests, as plain dicts turned into JSONL or structs."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from gateway.catalog.index import CatalogIndex, build_index
from gateway.catalog.loader import parse_catalog
from gateway.catalog.reloader import CatalogHolder
from gateway.catalog.retrieval import CatalogRetriever, NativeFits
from gateway.core.ports import Retrieved
from gateway.openrtb import BidRequest

NOON_UTC = 1_718_712_000.0  # 2024-06-18T12:00:00Z


def banner(cid: str, w: int = 300, h: int = 250, **extra: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "click_url": f"https://click.example.com/{cid}",
        "banner": {"sizes": [{"w": w, "h": h}], "image_url": f"https://cdn.example.com/{cid}.png"},
        **extra,
    }


def video(cid: str, duration: int = 15, **extra: Any) -> dict[str, Any]:
    media = {"media_url": f"https://cdn.example.com/{cid}.mp4", "duration_s": duration}
    media.update(extra.pop("media", {}))
    return {"id": cid, "click_url": f"https://click.example.com/{cid}", "video": media, **extra}


def audio(cid: str, duration: int = 30) -> dict[str, Any]:
    return {
        "id": cid,
        "click_url": f"https://click.example.com/{cid}",
        "audio": {"media_url": f"https://cdn.example.com/{cid}.m4a", "duration_s": duration},
    }


def native(cid: str) -> dict[str, Any]:
    return {
        "id": cid,
        "click_url": f"https://click.example.com/{cid}",
        "native": {"title": "A title", "sponsored_by": "Brand"},
    }


def campaign(cid: str, *creatives: dict[str, Any], bid: float = 1.0, **fields: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "advertiser": fields.pop("advertiser", f"{cid}.example.com"),
        "bid": bid,
        "creatives": list(creatives) or [banner(f"{cid}-ad")],
        **fields,
    }


def jsonl(*campaigns: dict[str, Any], version: str = "v1") -> bytes:
    lines = [{"catalog_version": version}, *campaigns]
    return "\n".join(json.dumps(line) for line in lines).encode() + b"\n"


def index_of(*campaigns: dict[str, Any], version: str = "v1") -> CatalogIndex:
    return build_index(parse_catalog(jsonl(*campaigns, version=version)))


def retriever(
    *campaigns: dict[str, Any],
    seat: str | None = None,
    top_k: int = 200,
    native_fits: NativeFits | None = None,
) -> CatalogRetriever:
    return CatalogRetriever(
        CatalogHolder(index_of(*campaigns)), seat=seat, top_k=top_k, native_fits=native_fits
    )


def request(*imps: dict[str, Any], **fields: Any) -> BidRequest:
    body = {"id": "req", "imp": list(imps) or [{"id": "1", "banner": {"w": 300, "h": 250}}], **fields}
    return msgspec.convert(body, BidRequest)


def banner_imp(imp_id: str = "1", w: int = 300, h: int = 250, **extra: Any) -> dict[str, Any]:
    return {"id": imp_id, "banner": {"w": w, "h": h, **extra.pop("banner", {})}, **extra}


def ids(retrieved: Retrieved) -> list[str]:
    return [candidate.id for candidate in retrieved.candidates]


def run(source: CatalogRetriever, request_: BidRequest, now: float = NOON_UTC) -> list[str]:
    return ids(source.retrieve(request_, now))
