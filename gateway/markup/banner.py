"""Banner markup: the creative's image at the chosen size, linked to its click-through URL."""

from __future__ import annotations

from html import escape

from gateway.catalog.model import BannerCreative, BannerSize
from gateway.openrtb import Banner

__all__ = ["banner_html", "banner_size"]


def accepted_sizes(banner: Banner) -> list[tuple[int, int]]:
    """The w x h the imp takes: banner.format entries, then banner.w/h (OpenRTB 2.6 3.2.6: `format` is
    the list of permitted sizes; w/h, when given without it, is the exact size)."""
    sizes = [(f.w, f.h) for f in banner.format or () if f.w and f.h]
    if banner.w and banner.h:
        sizes.append((banner.w, banner.h))
    return sizes


def banner_size(banner: Banner | None, creative: BannerCreative) -> BannerSize:
    """The first creative size the imp accepts; an imp that names no size takes the creative's first."""
    sizes = set(accepted_sizes(banner)) if banner is not None else set()
    if sizes:
        for size in creative.sizes:
            if (size.w, size.h) in sizes:
                return size
    return creative.sizes[0]


def banner_html(creative: BannerCreative, size: BannerSize, click_url: str, alt: str) -> str:
    """An <a><img></a> fragment; every attribute escaped (a catalog URL may hold `"` or `&`)."""
    return (
        f'<a href="{escape(click_url, quote=True)}" target="_blank" rel="noopener">'
        f'<img src="{escape(creative.image_url, quote=True)}" width="{size.w}" height="{size.h}" '
        f'alt="{escape(alt, quote=True)}" style="border:0;display:block"></a>'
    )
