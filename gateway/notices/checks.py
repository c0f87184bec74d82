"""A notice's query string, checked in the documented order before anything is recorded:

  1. parse        every field present once                       400 malformed_query / missing_field
  2. macros       none left unsubstituted (literal or encoded)   400 unsubstituted_macro
  3. signature    known key, valid MAC, currency, not expired    403 forged_notice
  4. values       price a finite number >= 0, not above the bid  422 invalid_value / price_above_bid
                  (loss: the reason a non-negative integer)

Pure and synchronous (no I/O): the endpoint runs it, then the ledger. Every refusal is a gateway
BadRequest, so nothing past this module can raise on a malformed query.
"""

from __future__ import annotations

import hmac
import math
import re
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import parse_qsl, unquote

from gateway.errors import ForgedNotice, InvalidRequest, MalformedRequest
from gateway.notices.keyring import NoticeKeyring
from gateway.notices.signing import SIGNED_FIELDS, NoticeKind, signature

__all__ = ["CheckedNotice", "check_notice", "parse_query", "required_fields"]

MAX_QUERY_BYTES: Final = 8192
MAX_QUERY_FIELDS: Final = 32
# "${NAME}" as written, once or twice URL-encoded ("%24%7BNAME%7D"): an exchange that did not substitute.
_MACRO: Final = re.compile(r"\$\{([A-Za-z_]*)\}?")
# A plain decimal: float() would also take "nan", "inf", "1_0" and surrounding blanks.
_DECIMAL: Final = re.compile(r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]{1,3})?")
_REASON: Final = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True, slots=True)
class CheckedNotice:
    kind: NoticeKind
    bid_id: str
    campaign_id: str
    bid_price: float  # the signed bid price, in `currency`
    currency: str
    price: float | None = None  # win, bill: the clearing price (${AUCTION_PRICE})
    loss_reason: int | None = None  # loss: ${AUCTION_LOSS}


def required_fields(kind: NoticeKind) -> tuple[str, ...]:
    last = "loss" if kind is NoticeKind.LOSS else "price"
    return (*SIGNED_FIELDS, "cur", last, "sig")


def parse_query(query: bytes) -> dict[str, str]:
    """Name -> value; a repeated name is refused (which of two values was meant to be signed?)."""
    if len(query) > MAX_QUERY_BYTES:
        raise MalformedRequest("malformed_query", f"query string over {MAX_QUERY_BYTES} bytes")
    try:
        pairs = parse_qsl(
            query.decode("latin-1"),
            keep_blank_values=True,
            max_num_fields=MAX_QUERY_FIELDS,
            encoding="utf-8",
            errors="replace",
        )
    except ValueError as exc:  # more fields than max_num_fields
        raise MalformedRequest("malformed_query", f"query string: {exc}") from exc
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise MalformedRequest("malformed_query", f"query parameter {name!r} is given twice", name)
        params[name] = value
    return params


def _unsubstituted(value: str) -> str | None:
    """The macro name left in `value`, as sent or URL-encoded once more, or None."""
    for text in (value, unquote(value)):
        found = _MACRO.search(text)
        if found is not None:
            return found.group(0) if found.group(0).endswith("}") else "${" + found.group(1) + "}"
    return None


def check_notice(kind: NoticeKind, query: bytes, keyring: NoticeKeyring, now: float) -> CheckedNotice:
    params = parse_query(query)
    fields = required_fields(kind)
    for name in fields:
        if name not in params:
            raise MalformedRequest("missing_field", f"query parameter {name!r} is missing", name)
    for name in fields:
        macro = _unsubstituted(params[name])
        if macro is not None:
            raise MalformedRequest(
                "unsubstituted_macro",
                f"{name} still holds the macro {macro}: the exchange did not substitute it",
                name,
            )
    _verify(kind, params, keyring, now)
    checked = CheckedNotice(
        kind=kind,
        bid_id=params["bid"],
        campaign_id=params["c"],
        bid_price=_signed_number(params, "bp"),
        currency=params["bc"],
    )
    if kind is NoticeKind.LOSS:
        reason = params["loss"]
        if not _REASON.fullmatch(reason):
            raise InvalidRequest(
                "invalid_value", f"loss reason {reason!r} is not a non-negative integer", "loss"
            )
        return replace(checked, loss_reason=int(reason))
    price = _price(params["price"])
    if price > checked.bid_price:
        raise InvalidRequest(
            "price_above_bid", f"clearing price {price} is above the bid price {checked.bid_price}", "price"
        )
    return replace(checked, price=price)


def _verify(kind: NoticeKind, params: dict[str, str], keyring: NoticeKeyring, now: float) -> None:
    kid = params["kid"]
    secret = keyring.secret(kid)
    if secret is None:
        raise ForgedNotice("unknown_key", f"key id {kid!r} is not one this gateway verifies", "kid")
    expected = signature(secret, kind.value, [params[name] for name in SIGNED_FIELDS])
    # Constant time; bytes, because compare_digest refuses non-ASCII str and a forger chooses the input.
    if not hmac.compare_digest(expected.encode(), params["sig"].encode("utf-8", "surrogatepass")):
        raise ForgedNotice(
            "signature",
            f"the signature does not match this {kind.value} notice's fields: altered, forged, another "
            "kind's or another bid's URL",
            "sig",
        )
    # From here every literal field is one this gateway wrote.
    if params["cur"].upper() != params["bc"]:
        raise ForgedNotice(
            "currency", f"${{AUCTION_CURRENCY}} is {params['cur']!r}, the bid was in {params['bc']!r}", "cur"
        )
    if now > _signed_number(params, "exp"):
        raise ForgedNotice("expired", f"the notice URL expired at {params['exp']} (epoch s)", "exp")


def _signed_number(params: dict[str, str], name: str) -> float:
    """A signed numeric field. This gateway writes only numbers there, but a signature made with a leaked or
    the public dev key can carry anything: that is a forged notice, never a 500."""
    value = params[name]
    number = float(value) if _DECIMAL.fullmatch(value) else math.nan
    if not math.isfinite(number):
        raise ForgedNotice("malformed", f"{name} {value!r} is not a number this gateway writes", name)
    return number


def _price(value: str) -> float:
    price = float(value) if _DECIMAL.fullmatch(value) else math.nan
    if not math.isfinite(price):
        raise InvalidRequest("invalid_value", f"price {value!r} is not a finite number >= 0", "price")
    return price
