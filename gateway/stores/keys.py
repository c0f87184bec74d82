"""Where campaign state lives in Redis: key names, hash tags, and bid ids that say where their record is.

Everything one script touches must hash to one Redis Cluster slot, so every key of a campaign carries the
same hash tag, and so does every bid record of that campaign:

  bidgw:v2:camp:{<tag>}:<cid>:cfg                 CampaignConfig JSON
  bidgw:v2:camp:{<tag>}:<cid>:spend:<day>         micro-USD won that UTC day (YYYYMMDD)
  bidgw:v2:camp:{<tag>}:<cid>:resv:<bucket>       micro-USD held by open bids of that time bucket
  bidgw:v2:camp:{<tag>}:<cid>:imps:<day>:<user>   the user's impressions of the campaign that day
  bidgw:v2:bid:{<tag>}:<bid id>                   the bid record (hash), for its win notice
  bidgw:v2:bidtag:<old bid id>                    <tag>, for bids made before the migration (migrate-redis)

<tag> is 8 hex digits of xxh3(cid), not the campaign id itself: a win notice carries only the bid id, so
the bid id starts with its campaign's tag (`<tag>-<32 random hex>`, 41 characters) and the gateway finds the
record, and the slot of the script that bills it, from the notice alone. A campaign id can be any string
(braces, colons, any length); the tag is short, fixed-width and brace-free, which the id could not be.
Campaigns whose tags collide simply share a slot; their keys still differ by <cid>.

The `v2` segment keeps this layout apart from the one before it (`bidgw:camp:<cid>:...`, `bidgw:bid:<id>`),
which `python -m gateway migrate-redis` moves here (see gateway.stores.migrate).
"""

from __future__ import annotations

import os
import string
from functools import lru_cache
from typing import Final

import xxhash

__all__ = [
    "BID_PREFIX",
    "CAMPAIGN_PREFIX",
    "LEGACY_BID_PREFIX",
    "LEGACY_CAMPAIGN_PREFIX",
    "bid_key",
    "bid_tag",
    "campaign_prefix",
    "campaign_tag",
    "config_key",
    "hold_key",
    "impressions_key",
    "legacy_bid_tag_key",
    "new_bid_id",
    "signed_notices_only",
    "spend_key",
]

CAMPAIGN_PREFIX: Final = "bidgw:v2:camp"
BID_PREFIX: Final = "bidgw:v2:bid"
LEGACY_BID_TAG_PREFIX: Final = "bidgw:v2:bidtag"
# The layout before hash tags, read only by the migration.
LEGACY_CAMPAIGN_PREFIX: Final = "bidgw:camp"
LEGACY_BID_PREFIX: Final = "bidgw:bid"

TAG_LENGTH: Final = 8
_BID_ID_LENGTH: Final = TAG_LENGTH + 1 + 32
SIGNED_ONLY_MARK: Final = "s"  # not a hex digit: marks a bid id billed only through signed notice URLs
_HEX: Final = frozenset(string.hexdigits.lower())


def campaign_tag(campaign_id: str) -> str:
    """The hash tag shared by a campaign's keys and its bid records (stable across processes: xxh3)."""
    return f"{xxhash.xxh3_64_intdigest(campaign_id.encode()) & 0xFFFFFFFF:08x}"


@lru_cache(maxsize=65_536)
def campaign_prefix(campaign_id: str) -> str:
    """`bidgw:v2:camp:{<tag>}:<cid>:`; cached because every bid builds 3-4 keys per candidate campaign."""
    return f"{CAMPAIGN_PREFIX}:{{{campaign_tag(campaign_id)}}}:{campaign_id}:"


def config_key(campaign_id: str) -> str:
    return campaign_prefix(campaign_id) + "cfg"


def spend_key(campaign_id: str, day: str) -> str:
    return f"{campaign_prefix(campaign_id)}spend:{day}"


def hold_key(campaign_id: str, bucket: int) -> str:
    return f"{campaign_prefix(campaign_id)}resv:{bucket}"


def impressions_key(campaign_id: str, day: str, user_key: str) -> str:
    return f"{campaign_prefix(campaign_id)}imps:{day}:{user_key}"


def new_bid_id(campaign_id: str, *, signed_notices_only: bool = False) -> str:
    """`<tag>-<128 random bits as hex>`: unique, and routable to its campaign's slot from the id alone.

    `signed_notices_only` (a catalog bid: its billing travels in signed notice URLs) replaces the first hex
    digit with `SIGNED_ONLY_MARK`, which no hex id has: the unsigned POST /v1/events/win refuses such an
    id, so knowing a bid id (it is in the markup a browser sees) is not enough to bill it."""
    random_hex = os.urandom(16).hex()
    if signed_notices_only:
        random_hex = SIGNED_ONLY_MARK + random_hex[1:]
    return f"{campaign_tag(campaign_id)}-{random_hex}"


def signed_notices_only(bid_id: str) -> bool:
    """Whether the bid may be billed only through its signed notice URLs (see new_bid_id)."""
    return len(bid_id) == _BID_ID_LENGTH and bid_id[TAG_LENGTH + 1] == SIGNED_ONLY_MARK


def bid_tag(bid_id: str) -> str | None:
    """The campaign tag a bid id starts with, or None for an id this layout did not make."""
    if len(bid_id) != _BID_ID_LENGTH or bid_id[TAG_LENGTH] != "-":
        return None
    tag = bid_id[:TAG_LENGTH]
    return tag if _HEX.issuperset(tag) else None


def bid_key(tag: str, bid_id: str) -> str:
    return f"{BID_PREFIX}:{{{tag}}}:{bid_id}"


def legacy_bid_tag_key(bid_id: str) -> str:
    """Where the migration leaves the campaign tag of a bid made under the old layout (its id has none)."""
    return f"{LEGACY_BID_TAG_PREFIX}:{bid_id}"
