"""`CatalogBidRenderer`: completes a winning catalog bid (the pipeline's BidRenderer) with its markup,
size, attributes, markup type and the three signed notice URLs.

Markup type (OpenRTB 2.6 3.2.4 `mtype`): 1 banner, 2 video, 3 audio, 4 native. `protocol` is set for video
and audio: the VAST version the markup is written in. The adm's impression trackers (VAST <Impression>,
a native impression event tracker) point at the win URL (nurl), not the bill URL: markup runs in browsers
and players, and a client that fired a billing URL first, with a price of its choosing, would turn the
exchange's own burl into a duplicate. With bill_on=burl the nurl only acknowledges.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec

from gateway.catalog.model import Creative, CreativeRef
from gateway.core.currency import CurrencyTable
from gateway.markup.banner import banner_html, banner_size
from gateway.markup.native import native_adm
from gateway.markup.vast import V40, LinearAd, VastVersion, vast_version, vast_xml
from gateway.notices.signing import BidFacts, NoticeSigner, NoticeUrls
from gateway.openrtb import Bid, BidRequest, Imp

__all__ = ["CatalogBidRenderer", "Markup", "render_markup"]

MTYPE_BANNER, MTYPE_VIDEO, MTYPE_AUDIO, MTYPE_NATIVE = 1, 2, 3, 4
AD_SYSTEM: Final = "bid-gateway"


@dataclass(frozen=True, slots=True)
class Markup:
    adm: str
    mtype: int
    w: int | None = None
    h: int | None = None
    protocol: int | None = None


def _version(imp_protocols: list[int] | None, creative_protocols: list[int]) -> VastVersion:
    # Retrieval only offers creatives whose protocols meet the imp's; should one slip through, the
    # creative's own highest version (or VAST 4.0) still makes valid markup rather than a failed bid.
    return vast_version(imp_protocols, creative_protocols) or vast_version(None, creative_protocols) or V40


def render_markup(imp: Imp, ref: CreativeRef, bid_id: str, urls: NoticeUrls) -> Markup:
    creative: Creative = ref.creative
    title = f"{ref.campaign.advertiser} {creative.id}"
    if creative.banner is not None:
        size = banner_size(imp.banner, creative.banner)
        adm = banner_html(creative.banner, size, creative.click_url, ref.campaign.advertiser)
        return Markup(adm, MTYPE_BANNER, size.w, size.h)
    if creative.video is not None:
        video = creative.video
        version = _version(imp.video.protocols if imp.video else None, video.protocols)
        ad = LinearAd(
            ad_id=bid_id,
            creative_id=creative.id,
            title=title,
            duration_s=video.duration_s,
            media_url=video.media_url,
            mime=video.mime,
            width=video.w,
            height=video.h,
            click_url=creative.click_url,
            impression_url=urls.nurl,
        )
        return Markup(vast_xml(ad, version, AD_SYSTEM), MTYPE_VIDEO, video.w, video.h, version.protocol)
    if creative.audio is not None:
        audio = creative.audio
        version = _version(imp.audio.protocols if imp.audio else None, audio.protocols)
        ad = LinearAd(
            ad_id=bid_id,
            creative_id=creative.id,
            title=title,
            duration_s=audio.duration_s,
            media_url=audio.media_url,
            mime=audio.mime,
            width=0,
            height=0,
            click_url=None,
            impression_url=urls.nurl,
        )
        return Markup(vast_xml(ad, version, AD_SYSTEM), MTYPE_AUDIO, protocol=version.protocol)
    assert creative.native is not None  # the loader guarantees exactly one format
    return Markup(native_adm(imp, creative.native, creative.click_url, urls.nurl), MTYPE_NATIVE)


class CatalogBidRenderer:
    """`render` is the pipeline's BidRenderer hook. `notice_ttl_s`: how long the notice URLs verify;
    `clock`: wall time (epoch seconds), injectable for tests."""

    def __init__(
        self,
        signer: NoticeSigner,
        currencies: CurrencyTable,
        *,
        notice_ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self._currencies = currencies
        self._ttl_s = notice_ttl_s
        self._clock = clock

    def render(self, request: BidRequest, bid: Bid, creative: object, response_bidid: str) -> Bid:
        if not isinstance(creative, CreativeRef):
            raise TypeError(f"CatalogBidRenderer renders CreativeRef, got {type(creative).__name__}")
        imp = next((i for i in request.imp if i.id == bid.impid), None)
        if imp is None:
            raise ValueError(f"bid {bid.id!r} names imp {bid.impid!r}, which the request does not have")
        facts = BidFacts(
            bid_id=bid.id,
            campaign_id=creative.campaign.id,
            price=bid.price,
            # The bid's price is in the response currency, chosen by the same rule as the pipeline's.
            currency=self._currencies.response_currency(request.cur),
            auction_id=request.id,
            imp_id=imp.id,
            response_bidid=response_bidid,
            expires_at=int(self._clock()) + self._ttl_s,
        )
        urls = self._signer.urls(facts)
        markup = render_markup(imp, creative, bid.id, urls)
        return msgspec.structs.replace(
            bid,
            adm=markup.adm,
            nurl=urls.nurl,
            burl=urls.burl,
            lurl=urls.lurl,
            attr=list(creative.creative.attr),
            w=markup.w,
            h=markup.h,
            mtype=markup.mtype,
            protocol=markup.protocol,
        )
