"""Request body bytes -> a validated `BidRequest`, or one of the gateway's `BadRequest` errors.

The hot path: one reusable msgspec decoder (types and range constraints checked in C while parsing), then
plain loops over imps and candidates for the rules that span fields. Anything wrong with the input leaves
as a `BadRequest` subclass naming the JSON path of the offending field, never as another exception (a 500).

Error codes (stable, machine-readable):
  413 RequestTooLarge   body_too_large, too_many_imps, too_many_candidates
  400 MalformedRequest  malformed_json, invalid_type, missing_field
  422 InvalidRequest    invalid_value     a value outside its range or set (floor < 0, bid <= 0, tmax <= 0,
                                          at not 1/2, unknown bid_type, empty id, number out of range)
                        empty_list        imp empty; ext.candidates empty or missing while the gateway
                                          has no catalog to retrieve candidates from
                        duplicate_id      an imp id or candidate id used twice
                        unknown_currency  a bidfloorcur the gateway cannot convert
                        conflicting_fields more than one of site/app/dooh
                        unknown_imp       a candidate's imp_ids names an imp the request does not have
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import msgspec

from gateway.errors import BadRequest, InvalidRequest, MalformedRequest, RequestTooLarge
from gateway.openrtb import BidRequest, Candidate, Imp

__all__ = ["RequestLimits", "decode_bid_request", "from_validation_error"]

# Immutable and thread-safe; building it once keeps the type compilation off the request path.
_DECODER: Final = msgspec.json.Decoder(BidRequest)

# msgspec.ValidationError text is "<what> - at `$.imp[0].bidfloor`" (no suffix when the root is wrong).
_AT_PATH: Final = re.compile(r"^(?P<what>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING: Final = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")
_WRONG_TYPE: Final = re.compile(r"^Expected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`$")
_OUT_OF_RANGE: Final = re.compile(
    r"^Expected `(?P<type>[^`]+)`(?P<length> of length)? (?P<op>>=|>|<=|<) (?P<bound>\S+)$"
)
_BAD_ENUM: Final = re.compile(r"^Invalid enum value (?P<value>.+)$")

# Only for a readable message; the code stays "invalid_value" whatever the field.
_ALLOWED: Final[dict[str, str]] = {"at": "1 or 2", "bid_type": "'cpm', 'cpc' or 'cpa'"}

MIB: Final = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLimits:
    """What the gateway accepts; `known_currencies` are those it can convert floors from. Without a catalog
    (`candidates_required`) a request must bring its own candidates."""

    known_currencies: frozenset[str]
    max_body_bytes: int = MIB
    max_imps: int = 64
    max_candidates: int = 1000
    candidates_required: bool = True

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.max_imps, self.max_candidates) < 1:
            raise ValueError(f"request limits must be positive: {self}")
        if not self.known_currencies:
            raise ValueError("known_currencies must name at least one currency")


def decode_bid_request(body: bytes, limits: RequestLimits) -> BidRequest:
    """Parse and validate one bid request; raises only `BadRequest` subclasses for bad input."""
    if len(body) > limits.max_body_bytes:
        raise RequestTooLarge(
            "body_too_large", f"body is {len(body)} bytes; the limit is {limits.max_body_bytes}"
        )
    try:
        request = _DECODER.decode(body)
    except msgspec.ValidationError as exc:  # before DecodeError: it is a subclass
        raise from_validation_error(exc) from exc
    except msgspec.DecodeError as exc:
        raise MalformedRequest("malformed_json", f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # msgspec's nesting guard, even inside ignored fields
        raise MalformedRequest("malformed_json", "body is nested too deeply") from exc
    _check_rules(request, limits)
    return request


def _check_rules(request: BidRequest, limits: RequestLimits) -> None:
    imps = request.imp
    if len(imps) > limits.max_imps:
        raise RequestTooLarge("too_many_imps", f"{len(imps)} imps; the limit is {limits.max_imps}", "imp")
    candidates = request.ext.candidates if request.ext is not None else []
    if not candidates and limits.candidates_required:
        raise InvalidRequest(
            "empty_list",
            "ext.candidates must be non-empty: the gateway has nothing to rank otherwise",
            "ext.candidates",
        )
    if len(candidates) > limits.max_candidates:
        raise RequestTooLarge(
            "too_many_candidates",
            f"{len(candidates)} candidates; the limit is {limits.max_candidates}",
            "ext.candidates",
        )
    _check_channel(request)
    imp_ids = _check_imps(imps, limits.known_currencies)
    _check_candidates(candidates, imp_ids)


def _check_channel(request: BidRequest) -> None:
    present = [
        name
        for name, value in (("site", request.site), ("app", request.app), ("dooh", request.dooh))
        if value is not None
    ]
    if len(present) > 1:
        raise InvalidRequest(
            "conflicting_fields",
            f"at most one of site, app, dooh may be present; got {', '.join(present)}",
            present[1],
        )


def _check_imps(imps: list[Imp], currencies: frozenset[str]) -> set[str]:
    imp_ids: set[str] = set()
    for i, imp in enumerate(imps):
        if imp.id in imp_ids:
            raise InvalidRequest("duplicate_id", f"imp id {imp.id!r} appears more than once", f"imp[{i}].id")
        imp_ids.add(imp.id)
        if imp.bidfloorcur not in currencies:
            raise _unknown_currency(imp.bidfloorcur, f"imp[{i}].bidfloorcur")
        if imp.pmp is not None and imp.pmp.deals:
            for j, deal in enumerate(imp.pmp.deals):
                if deal.bidfloorcur not in currencies:
                    raise _unknown_currency(deal.bidfloorcur, f"imp[{i}].pmp.deals[{j}].bidfloorcur")
    return imp_ids


def _check_candidates(candidates: list[Candidate], imp_ids: set[str]) -> None:
    # Set comprehensions decide the common, error-free case; indexed loops only run to name the culprit.
    if len({c.id for c in candidates}) != len(candidates):
        seen: set[str] = set()
        for k, candidate in enumerate(candidates):
            if candidate.id in seen:
                raise InvalidRequest(
                    "duplicate_id",
                    f"candidate id {candidate.id!r} appears more than once",
                    f"ext.candidates[{k}].id",
                )
            seen.add(candidate.id)
    if {i for c in candidates if c.imp_ids is not None for i in c.imp_ids} <= imp_ids:
        return
    for k, candidate in enumerate(candidates):
        for m, imp_id in enumerate(candidate.imp_ids or ()):
            if imp_id not in imp_ids:
                raise InvalidRequest(
                    "unknown_imp",
                    f"candidate {candidate.id!r} names imp {imp_id!r}, which the request does not have",
                    f"ext.candidates[{k}].imp_ids[{m}]",
                )


def _unknown_currency(currency: str, field: str) -> InvalidRequest:
    return InvalidRequest("unknown_currency", f"{field}: unknown currency {currency!r}", field)


def from_validation_error(exc: msgspec.ValidationError) -> BadRequest:
    """Turn msgspec's message into a code, a JSON path like "imp[0].bidfloor" and a clean message."""
    parsed = _AT_PATH.match(str(exc))
    what = parsed.group("what") if parsed else str(exc)
    path = (parsed.group("path") if parsed else None) or None
    where = path or "body"

    if match := _MISSING.match(what):
        field = f"{path}.{match['name']}" if path else match["name"]
        return MalformedRequest("missing_field", f"{field} is required", field)
    if match := _WRONG_TYPE.match(what):
        return MalformedRequest(
            "invalid_type", f"{where} must be {match['expected']}, got {match['got']}", path
        )
    if match := _OUT_OF_RANGE.match(what):
        if match["length"] and match["op"] == ">=" and match["bound"] == "1":
            code = "empty_list" if match["type"] == "array" else "invalid_value"
            return InvalidRequest(code, f"{where} must be non-empty", path)
        subject = f"length of {where}" if match["length"] else where
        return InvalidRequest("invalid_value", f"{subject} must be {match['op']} {match['bound']}", path)
    if match := _BAD_ENUM.match(what):
        leaf = path.rsplit(".", 1)[-1] if path else ""
        allowed = _ALLOWED.get(leaf)
        detail = f"; allowed: {allowed}" if allowed else ""
        return InvalidRequest("invalid_value", f"{where}: invalid value {match['value']}{detail}", path)
    if what == "Number out of range":
        return InvalidRequest("invalid_value", f"{where}: number out of range", path)
    # A message shape this mapping does not know yet: still the client's fault, still a 400.
    return MalformedRequest("invalid_type", f"{where}: {what}", path)
