"""Notice URLs and their signature.

    {base}/v1/notices/{win|bill|loss}?bid=<Bid.id>&c=<campaign>&bp=<bid price>&bc=<bid currency>
        &exp=<expiry, epoch s>&kid=<key id>&auc=${AUCTION_ID}&rbid=${AUCTION_BID_ID}&imp=${AUCTION_IMP_ID}
        &cur=${AUCTION_CURRENCY}&price=${AUCTION_PRICE}      (win, bill)
        &loss=${AUCTION_LOSS}                                 (loss)
        &sig=<HMAC>

The signature is HMAC-SHA256 over the kind, the key id and every field fixed at bid time: our bid id, the
campaign, the bid price and currency, the expiry, and the values the exchange substitutes for
${AUCTION_ID} (the request id), ${AUCTION_BID_ID} (BidResponse.bidid) and ${AUCTION_IMP_ID} (the imp id).
Those three are signed as the values we know now and travel only as macros: after substitution the
verifier signs what arrived, so a notice for another auction, imp or response, a loss URL turned into a
bill URL (the kind is signed), or a URL replayed across bids fails. ${AUCTION_CURRENCY} must equal the
signed `bc`. Only ${AUCTION_PRICE} and ${AUCTION_LOSS} are unsigned; the price is checked against `bp`.
(Macro names and meanings: OpenRTB 2.6 section 4.4 "Substitution Macros".)

Encoding: each part as `<utf-8 length>:<bytes>`, so no choice of values can make two different field
lists sign the same bytes. The MAC is truncated to 128 bits (NIST SP 800-107: truncation to >= 64 bits
keeps HMAC's strength for forgery) and written base64url without padding: 22 characters per URL.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from gateway.notices.keyring import NoticeKeyring

__all__ = [
    "MACROS",
    "SIGNED_FIELDS",
    "BidFacts",
    "NoticeKind",
    "NoticeSigner",
    "NoticeUrls",
    "signature",
]

_DOMAIN: Final = "bidgw-notice-1"  # versioned: a future format cannot be confused with this one
SIGNATURE_BYTES: Final = 16
NOTICE_PATH: Final = "/v1/notices"


class NoticeKind(enum.StrEnum):
    WIN = "win"  # nurl: the exchange's win notice
    BILL = "bill"  # burl: the billing notice (the impression was served)
    LOSS = "loss"  # lurl: the loss notice, with a loss reason code


# Query parameter -> the OpenRTB 2.6 substitution macro the exchange replaces.
MACROS: Final[dict[str, str]] = {
    "auc": "${AUCTION_ID}",
    "rbid": "${AUCTION_BID_ID}",
    "imp": "${AUCTION_IMP_ID}",
    "cur": "${AUCTION_CURRENCY}",
    "price": "${AUCTION_PRICE}",
    "loss": "${AUCTION_LOSS}",
}
# Literal fields we write, then the substituted ones we sign, in signing order.
LITERAL_FIELDS: Final = ("bid", "c", "bp", "bc", "exp", "kid")
SUBSTITUTED_SIGNED: Final = ("auc", "rbid", "imp")
SIGNED_FIELDS: Final = (*LITERAL_FIELDS, *SUBSTITUTED_SIGNED)


@dataclass(frozen=True, slots=True)
class BidFacts:
    """What a bid's notices must prove: fixed when the bid is made."""

    bid_id: str  # Bid.id: the ledger's key
    campaign_id: str
    price: float  # the bid price, in `currency` (the response's cur)
    currency: str
    auction_id: str  # BidRequest.id, what ${AUCTION_ID} becomes
    imp_id: str
    response_bidid: str  # BidResponse.bidid, what ${AUCTION_BID_ID} becomes
    expires_at: int  # epoch seconds


@dataclass(frozen=True, slots=True)
class NoticeUrls:
    nurl: str
    burl: str
    lurl: str


def _payload(kind: str, values: Sequence[str]) -> bytes:
    out = bytearray()
    for part in (_DOMAIN, kind, *values):
        raw = part.encode("utf-8", "surrogatepass")
        out += f"{len(raw)}:".encode()
        out += raw
    return bytes(out)


def signature(secret: bytes, kind: str, values: Sequence[str]) -> str:
    """The URL's `sig` for `values` in SIGNED_FIELDS order."""
    mac = hmac.new(secret, _payload(kind, values), hashlib.sha256).digest()[:SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def format_price(price: float) -> str:
    """The bid price as written in `bp`: the shortest repr that reads back as the same float."""
    return repr(float(price))


class NoticeSigner:
    """Writes the three notice URLs of a bid, signed with the keyring's active key."""

    def __init__(self, keyring: NoticeKeyring, base_url: str) -> None:
        self._keyring = keyring
        self._base = base_url.rstrip("/") + NOTICE_PATH

    def urls(self, facts: BidFacts) -> NoticeUrls:
        return NoticeUrls(
            nurl=self.url(NoticeKind.WIN, facts),
            burl=self.url(NoticeKind.BILL, facts),
            lurl=self.url(NoticeKind.LOSS, facts),
        )

    def url(self, kind: NoticeKind, facts: BidFacts) -> str:
        kid = self._keyring.active
        literal = (
            facts.bid_id,
            facts.campaign_id,
            format_price(facts.price),
            facts.currency,
            str(facts.expires_at),
            kid,
        )
        signed = (*literal, facts.auction_id, facts.response_bidid, facts.imp_id)
        sig = signature(self._keyring.active_secret, kind.value, signed)
        query = [
            f"{name}={quote(value, safe='')}" for name, value in zip(LITERAL_FIELDS, literal, strict=True)
        ]
        # The macros stay literal: an exchange replaces the exact text "${AUCTION_PRICE}".
        macro_fields = ("auc", "rbid", "imp", "cur", "loss" if kind is NoticeKind.LOSS else "price")
        query += [f"{name}={MACROS[name]}" for name in macro_fields]
        query.append(f"sig={sig}")
        return f"{self._base}/{kind.value}?{'&'.join(query)}"
