"""What an exchange does with the gateway's answers, for tests: plain OpenRTB requests (no ext.candidates),
and the notice URLs of a bid with their macros substituted (OpenRTB 2.6 section 4.4) as an exchange would."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx


def plain_banner_request(request_id: str, *, floor: float = 0.05, user: str | None = "u00001") -> bytes:
    """A site's 300x250 banner, as an exchange sends it: the catalog decides what to bid."""
    doc: dict[str, Any] = {
        "id": request_id,
        "at": 2,
        "tmax": 200,
        "cur": ["USD"],
        "imp": [{"id": "1", "bidfloor": floor, "banner": {"w": 300, "h": 250, "pos": 1}}],
        "site": {"id": "s1", "domain": "news.example", "cat": ["IAB12"], "publisher": {"id": "p1"}},
        "device": {"devicetype": 2, "os": "iOS", "geo": {"country": "USA"}},
    }
    if user is not None:
        doc["user"] = {"id": user}
    return json.dumps(doc).encode()


def substituted(
    url: str, response: dict[str, Any], bid: dict[str, Any], *, price: float | None = None, loss: int = 102
) -> str:
    """The notice URL's path and query with every macro filled (the base is whatever the test serves
    on); `price` defaults to the bid's own price (a first-price clearing)."""
    values = {
        "${AUCTION_ID}": response["id"],
        "${AUCTION_BID_ID}": response.get("bidid", ""),
        "${AUCTION_IMP_ID}": bid["impid"],
        "${AUCTION_CURRENCY}": response.get("cur", "USD"),
        "${AUCTION_PRICE}": repr(bid["price"] if price is None else price),
        "${AUCTION_LOSS}": str(loss),
    }
    for macro, value in values.items():
        url = url.replace(macro, quote(value, safe=""))
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def bids_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [bid for seatbid in response.get("seatbid") or [] for bid in seatbid["bid"]]


def resent_once(send: Callable[[], httpx.Response], resent: list[str], what: str) -> httpx.Response:
    """As an exchange sends a notice: once more when the connection broke before an answer (a reset from an
    in-thread server under two dozen client threads, seen in CI). Whether the first attempt was recorded is
    unknown to the sender, which is why notices are idempotent; `resent` collects `what` for the caller's
    bound on duplicates."""
    try:
        return send()
    except httpx.TransportError:
        resent.append(what)
        return send()
