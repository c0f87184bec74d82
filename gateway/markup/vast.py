"""VAST InLine markup for video and audio creatives, in the highest version both sides allow.

Versions come from AdCOM 1.0 "Creative Subtypes - Audio/Video" (OpenRTB 2.6 `protocols`): 2/5 VAST 2.0
(inline/wrapper), 3/6 VAST 3.0, 7/8 VAST 4.0, 11/12 VAST 4.1, 13/14 VAST 4.2. We always answer InLine; an
imp that lists only the wrapper code of a version still gets that version, since a player that unwraps
VAST X plays its InLine too.

Elements (IAB VAST 4.1 section 3.4 "InLine" and 3.7 "Creative"; vastlint rules VAST-2.0-inline-adsystem,
-adtitle, VAST-4.1-adservingid-present): AdSystem, AdTitle, Impression and Creatives in every version;
from 4.0 each Creative carries a UniversalAdId (registry "unknown": the creative id is ours, not an
Ad-ID/Clearcast code); AdServingId is required from 4.1 and written for 4.0 as well (players ignore
elements they do not know). MediaFile width/height are required attributes in VAST 4; an audio file gets
0 x 0. Built with ElementTree, so text and attributes are escaped and the document is well-formed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from xml.etree import ElementTree as ET

__all__ = ["VastVersion", "vast_version", "vast_xml"]


@dataclass(frozen=True, slots=True)
class VastVersion:
    version: str  # the VAST root's version attribute
    protocol: int  # the InLine Creative Subtype code (Bid.protocol)
    rank: int

    @property
    def v4(self) -> bool:
        return self.rank >= 4


_V2: Final = VastVersion("2.0", 2, 2)
_V3: Final = VastVersion("3.0", 3, 3)
V40: Final = VastVersion("4.0", 7, 4)
_V41: Final = VastVersion("4.1", 11, 5)
_V42: Final = VastVersion("4.2", 13, 6)
_BY_PROTOCOL: Final[dict[int, VastVersion]] = {
    2: _V2, 5: _V2, 3: _V3, 6: _V3, 7: V40, 8: V40, 11: _V41, 12: _V41, 13: _V42, 14: _V42,
}  # fmt: skip


def vast_version(
    imp_protocols: Sequence[int] | None, creative_protocols: Sequence[int]
) -> VastVersion | None:
    """The highest VAST version both lists allow (an imp without `protocols` takes any), None if none."""
    ours = {_BY_PROTOCOL[p] for p in creative_protocols if p in _BY_PROTOCOL}
    if imp_protocols is not None:
        ours &= {_BY_PROTOCOL[p] for p in imp_protocols if p in _BY_PROTOCOL}
    return max(ours, key=lambda v: v.rank, default=None)


@dataclass(frozen=True, slots=True)
class LinearAd:
    ad_id: str  # our bid id: also the AdServingId, unique per response
    creative_id: str
    title: str
    duration_s: int
    media_url: str
    mime: str
    width: int  # 0 for audio
    height: int
    click_url: str | None  # audio has no click-through
    impression_url: str


def _duration(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = text
    return element


def vast_xml(ad: LinearAd, version: VastVersion, ad_system: str) -> str:
    root = ET.Element("VAST", {"version": version.version})
    if version.v4:
        root.set("xmlns", "http://www.iab.com/VAST")
    inline = ET.SubElement(ET.SubElement(root, "Ad", {"id": ad.ad_id}), "InLine")
    _text(inline, "AdSystem", ad_system)
    _text(inline, "Impression", ad.impression_url, id="bidgw")
    if version.v4:
        _text(inline, "AdServingId", ad.ad_id)
    _text(inline, "AdTitle", ad.title)
    creative = ET.SubElement(ET.SubElement(inline, "Creatives"), "Creative", {"id": ad.creative_id})
    if version.v4:
        # 4.0 named the value in `idValue`; 4.1 moved it into the text and deprecated the attribute.
        _text(creative, "UniversalAdId", ad.creative_id, idRegistry="unknown", idValue=ad.creative_id)
    linear = ET.SubElement(creative, "Linear")
    _text(linear, "Duration", _duration(ad.duration_s))
    media = {"delivery": "progressive", "type": ad.mime, "width": str(ad.width), "height": str(ad.height)}
    _text(ET.SubElement(linear, "MediaFiles"), "MediaFile", ad.media_url, **media)
    if ad.click_url is not None:
        _text(ET.SubElement(linear, "VideoClicks"), "ClickThrough", ad.click_url)
    return ET.tostring(root, encoding="unicode", xml_declaration=False)
