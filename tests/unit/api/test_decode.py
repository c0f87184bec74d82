"""decode_bid_request: every refusal names its code, status and field; valid inputs decode with defaults."""

from __future__ import annotations

import contextlib
import copy
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import msgspec
import pytest

from gateway.api.decode import RequestLimits, decode_bid_request
from gateway.errors import BadRequest, InvalidRequest, MalformedRequest, RequestTooLarge
from gateway.openrtb import BidRequest

Doc = dict[str, Any]

LIMITS = RequestLimits(known_currencies=frozenset({"USD", "EUR", "GBP"}))


def candidate(i: int, **fields: Any) -> Doc:
    doc: Doc = {
        "id": f"ad-{i}",
        "campaign_id": f"camp-{i % 3}",
        "advertiser": f"advertiser{i}.com",
        "bid_type": ("cpm", "cpc", "cpa")[i % 3],
        "bid": 1.25 + i,
    }
    doc.update(fields)
    return doc


def valid_doc() -> Doc:
    """Two imps (one with deals), a site, device, user and five candidates."""
    return {
        "id": "req-1",
        "tmax": 100,
        "cur": ["USD"],
        "imp": [
            {"id": "1", "bidfloor": 0.5, "banner": {"w": 300, "h": 250, "format": [{"w": 300, "h": 250}]}},
            {
                "id": "2",
                "bidfloor": 1.0,
                "bidfloorcur": "EUR",
                "video": {"w": 640, "h": 480},
                "pmp": {"private_auction": 1, "deals": [{"id": "d1", "bidfloor": 2.0}, {"id": "d2"}]},
            },
        ],
        "site": {"id": "s1", "domain": "news.example", "publisher": {"id": "p1"}},
        "device": {"devicetype": 2, "os": "iOS", "geo": {"country": "USA"}},
        "user": {"id": "u1", "yob": 1990, "gender": "F"},
        "ext": {"candidates": [candidate(i, imp_ids=["1", "2"] if i == 4 else None) for i in range(5)]},
    }


def encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(doc: Any, limits: RequestLimits = LIMITS) -> BidRequest:
    return decode_bid_request(encode(doc), limits)


@dataclass(frozen=True)
class Bad:
    name: str
    mutate: Callable[[Doc], Any]  # edits the doc in place, or returns a replacement (bytes or JSON value)
    error: type[BadRequest]
    status: int
    code: str
    field: str | None
    limits: RequestLimits = LIMITS


def set_at(path: str, value: Any) -> Callable[[Doc], None]:
    """`set_at("imp.0.bidfloor", x)`: dotted path, list indices as numbers."""

    def mutate(doc: Doc) -> None:
        *parents, leaf = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value

    return mutate


def delete(path: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        *parents, leaf = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[leaf]

    return mutate


def raw(body: bytes) -> Callable[[Doc], bytes]:
    return lambda _doc: body


def add_imp(doc: Doc) -> None:
    doc["imp"].append({"id": "3"})


M, V, T = MalformedRequest, InvalidRequest, RequestTooLarge
BAD: list[Bad] = [
    # 413: limits, the body's checked before it is parsed
    Bad("body too large", lambda d: None, T, 413, "body_too_large", None,
        replace(LIMITS, max_body_bytes=100)),
    Bad("body too large, not even JSON", raw(b"x" * 200), T, 413, "body_too_large", None,
        replace(LIMITS, max_body_bytes=100)),
    Bad("too many imps", add_imp, T, 413, "too_many_imps", "imp", replace(LIMITS, max_imps=2)),
    Bad("too many candidates", lambda d: None, T, 413, "too_many_candidates", "ext.candidates",
        replace(LIMITS, max_candidates=4)),
    # 400: not JSON
    Bad("empty body", raw(b""), M, 400, "malformed_json", None),
    Bad("truncated", raw(b'{"id": "r", "imp": [{"id": "1"'), M, 400, "malformed_json", None),
    Bad("not json", raw(b"id=1&imp=2"), M, 400, "malformed_json", None),
    Bad("trailing garbage", lambda d: encode(d) + b" {}", M, 400, "malformed_json", None),
    Bad("invalid utf-8", raw(b'{"id": "\xff\xfe"}'), M, 400, "malformed_json", None),
    Bad("nested too deeply in an unknown field", raw(b'{"zz": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        M, 400, "malformed_json", None),
    # 400: wrong type
    Bad("root is an array", lambda d: [d], M, 400, "invalid_type", None),
    Bad("id is a number", set_at("id", 7), M, 400, "invalid_type", "id"),
    Bad("imp is an object", set_at("imp", {"id": "1"}), M, 400, "invalid_type", "imp"),
    Bad("imp bidfloor is a string", set_at("imp.0.bidfloor", "0.5"), M, 400, "invalid_type",
        "imp[0].bidfloor"),
    Bad("deal bidfloor is null", set_at("imp.1.pmp.deals.0.bidfloor", None), M, 400, "invalid_type",
        "imp[1].pmp.deals[0].bidfloor"),
    Bad("site is a list", set_at("site", []), M, 400, "invalid_type", "site"),
    Bad("tmax is a float", set_at("tmax", 99.5), M, 400, "invalid_type", "tmax"),
    Bad("country is a number", set_at("device.geo.country", 840), M, 400, "invalid_type",
        "device.geo.country"),
    Bad("banner format entry is a string", set_at("imp.0.banner.format.0", "300x250"), M, 400, "invalid_type",
        "imp[0].banner.format[0]"),
    Bad("candidate bid is a string", set_at("ext.candidates.3.bid", "2"), M, 400, "invalid_type",
        "ext.candidates[3].bid"),
    Bad("candidate bid_type is a number", set_at("ext.candidates.0.bid_type", 1), M, 400, "invalid_type",
        "ext.candidates[0].bid_type"),
    Bad("candidates is an object", set_at("ext.candidates", {}), M, 400, "invalid_type", "ext.candidates"),
    Bad("debug is a string", set_at("ext.debug", "yes"), M, 400, "invalid_type", "ext.debug"),
    # 400: missing required field
    Bad("no id", delete("id"), M, 400, "missing_field", "id"),
    Bad("no imp", delete("imp"), M, 400, "missing_field", "imp"),
    Bad("imp without id", delete("imp.0.id"), M, 400, "missing_field", "imp[0].id"),
    Bad("deal without id", delete("imp.1.pmp.deals.1.id"), M, 400, "missing_field", "imp[1].pmp.deals[1].id"),
    Bad("candidate without bid", delete("ext.candidates.3.bid"), M, 400, "missing_field",
        "ext.candidates[3].bid"),
    Bad("candidate without id", delete("ext.candidates.1.id"), M, 400, "missing_field",
        "ext.candidates[1].id"),
    Bad("candidate without campaign", delete("ext.candidates.1.campaign_id"), M, 400, "missing_field",
        "ext.candidates[1].campaign_id"),
    Bad("candidate without advertiser", delete("ext.candidates.2.advertiser"), M, 400, "missing_field",
        "ext.candidates[2].advertiser"),
    Bad("candidate without bid_type", delete("ext.candidates.0.bid_type"), M, 400, "missing_field",
        "ext.candidates[0].bid_type"),
    # 422: breaks a rule
    Bad("empty id", set_at("id", ""), V, 422, "invalid_value", "id"),
    Bad("empty imp", set_at("imp", []), V, 422, "empty_list", "imp"),
    Bad("duplicate imp id", set_at("imp.1.id", "1"), V, 422, "duplicate_id", "imp[1].id"),
    Bad("duplicate candidate id", set_at("ext.candidates.2.id", "ad-0"), V, 422, "duplicate_id",
        "ext.candidates[2].id"),
    Bad("negative imp floor", set_at("imp.0.bidfloor", -0.01), V, 422, "invalid_value", "imp[0].bidfloor"),
    Bad("negative deal floor", set_at("imp.1.pmp.deals.1.bidfloor", -1), V, 422, "invalid_value",
        "imp[1].pmp.deals[1].bidfloor"),
    Bad("unknown imp currency", set_at("imp.0.bidfloorcur", "XXX"), V, 422, "unknown_currency",
        "imp[0].bidfloorcur"),
    Bad("unknown deal currency", set_at("imp.1.pmp.deals.0.bidfloorcur", "JPY"), V, 422, "unknown_currency",
        "imp[1].pmp.deals[0].bidfloorcur"),
    Bad("tmax zero", set_at("tmax", 0), V, 422, "invalid_value", "tmax"),
    Bad("tmax negative", set_at("tmax", -5), V, 422, "invalid_value", "tmax"),
    Bad("at 3", set_at("at", 3), V, 422, "invalid_value", "at"),
    Bad("at 0", set_at("at", 0), V, 422, "invalid_value", "at"),
    Bad("site and app", set_at("app", {"bundle": "com.example"}), V, 422, "conflicting_fields", "app"),
    Bad("site and dooh", set_at("dooh", {"id": "screen-1"}), V, 422, "conflicting_fields", "dooh"),
    Bad("candidate bid zero", set_at("ext.candidates.3.bid", 0), V, 422, "invalid_value",
        "ext.candidates[3].bid"),
    Bad("candidate bid negative", set_at("ext.candidates.0.bid", -2.5), V, 422, "invalid_value",
        "ext.candidates[0].bid"),
    Bad("candidate bid overflows", raw(encode(valid_doc()).replace(b'"bid":1.25', b'"bid":1e999')), V, 422,
        "invalid_value", "ext.candidates[0].bid"),
    Bad("unknown bid_type", set_at("ext.candidates.1.bid_type", "cpv"), V, 422, "invalid_value",
        "ext.candidates[1].bid_type"),
    Bad("candidate names a missing imp", set_at("ext.candidates.4.imp_ids", ["1", "9"]), V, 422,
        "unknown_imp", "ext.candidates[4].imp_ids[1]"),
    Bad("empty candidates", set_at("ext.candidates", []), V, 422, "empty_list", "ext.candidates"),
    Bad("no candidates key", set_at("ext", {"debug": True}), V, 422, "empty_list", "ext.candidates"),
    Bad("no ext", delete("ext"), V, 422, "empty_list", "ext.candidates"),
]  # fmt: skip


def body_for(case: Bad) -> bytes:
    doc = valid_doc()
    result = case.mutate(doc)
    if isinstance(result, bytes):
        return result
    return encode(doc if result is None else result)


@pytest.mark.parametrize("case", BAD, ids=[case.name for case in BAD])
def test_bad_input_is_refused_with_code_and_field(case: Bad) -> None:
    with pytest.raises(case.error) as caught:
        decode_bid_request(body_for(case), case.limits)
    err = caught.value
    assert type(err) is case.error
    assert (err.status_code, err.code, err.field) == (case.status, case.code, case.field)
    # The message is for people: the clean path, none of msgspec's "$." or " - at" plumbing.
    assert err.message
    assert "$." not in err.message
    assert " - at " not in err.message


def test_messages_name_the_field_and_the_rule() -> None:
    cases = {
        "imp.0.bidfloor": (-1, "imp[0].bidfloor must be >= 0.0"),
        "ext.candidates.3.bid": (0, "ext.candidates[3].bid must be > 0.0"),
        "ext.candidates.1.bid_type": ("cpv", "allowed: 'cpm', 'cpc' or 'cpa'"),
        "at": (5, "allowed: 1 or 2"),
        "tmax": ("fast", "tmax must be int | null, got str"),
    }
    for path, (value, expected) in cases.items():
        doc = valid_doc()
        set_at(path, value)(doc)
        with pytest.raises(BadRequest) as caught:
            decode(doc)
        assert expected in caught.value.message, (path, caught.value.message)


def test_missing_field_message() -> None:
    doc = valid_doc()
    del doc["ext"]["candidates"][3]["bid"]
    with pytest.raises(MalformedRequest, match=r"^ext\.candidates\[3\]\.bid is required$"):
        decode(doc)


@pytest.mark.parametrize("plain", [set_at("ext.candidates", []), delete("ext")], ids=["empty", "no ext"])
def test_without_candidates_is_accepted_when_a_catalog_supplies_them(plain: Callable[[Doc], None]) -> None:
    doc = valid_doc()
    plain(doc)
    request = decode(doc, replace(LIMITS, candidates_required=False))
    assert request.ext is None or request.ext.candidates == []


def test_body_exactly_at_the_limit_is_accepted() -> None:
    body = encode(valid_doc())
    request = decode_bid_request(body, replace(LIMITS, max_body_bytes=len(body)))
    assert request.id == "req-1"
    with pytest.raises(RequestTooLarge):
        decode_bid_request(body, replace(LIMITS, max_body_bytes=len(body) - 1))


def test_counts_exactly_at_the_limits_are_accepted() -> None:
    request = decode(valid_doc(), replace(LIMITS, max_imps=2, max_candidates=5))
    assert (len(request.imp), len(request.ext.candidates if request.ext else [])) == (2, 5)


def test_error_chains_the_decoder_cause() -> None:
    with pytest.raises(MalformedRequest) as caught:
        decode_bid_request(b"{", LIMITS)
    assert isinstance(caught.value.__cause__, msgspec.DecodeError)


# ----------------------------------------------------------------------------------------------- valid


def minimal(**channel: Doc) -> Doc:
    return {"id": "r", "imp": [{"id": "1"}], **channel, "ext": {"candidates": [candidate(0)]}}


@pytest.mark.parametrize(
    ("doc", "channel"),
    [
        (minimal(site={"page": "https://news.example/a"}), "site"),
        (minimal(app={"bundle": "com.example.game"}), "app"),
        (minimal(dooh={"id": "screen-7", "venuetype": ["transit"]}), "dooh"),
        (minimal(), None),
    ],
    ids=["site", "app", "dooh", "no-channel"],
)
def test_minimal_requests_decode(doc: Doc, channel: str | None) -> None:
    request = decode(doc)
    present = {name for name in ("site", "app", "dooh") if getattr(request, name) is not None}
    assert present == ({channel} if channel else set())
    assert request.imp[0].id == "1"


def test_defaults() -> None:
    doc = minimal(site={})
    doc["imp"][0]["pmp"] = {"deals": [{"id": "d"}]}
    request = decode(doc)
    imp = request.imp[0]
    assert request.at == 2
    assert request.tmax is None
    assert request.test == 0
    assert (imp.bidfloor, imp.bidfloorcur) == (0.0, "USD")
    assert imp.pmp is not None
    assert imp.pmp.private_auction == 0
    assert imp.pmp.deals is not None
    assert (imp.pmp.deals[0].bidfloor, imp.pmp.deals[0].bidfloorcur) == (0.0, "USD")
    assert request.ext is not None
    assert request.ext.debug is False
    only = request.ext.candidates[0]
    assert (only.cat, only.imp_ids, only.crid, only.deal_id) == ([], None, None, None)


def test_full_request_fields() -> None:
    request = decode(valid_doc())
    assert request.device is not None
    assert request.device.geo is not None
    assert request.device.geo.country == "USA"
    assert request.user is not None
    assert request.user.yob == 1990
    assert request.imp[1].bidfloorcur == "EUR"
    assert request.imp[0].banner is not None
    assert request.imp[0].banner.format is not None
    assert request.imp[0].banner.format[0].w == 300
    assert request.ext is not None
    assert request.ext.candidates[4].imp_ids == ["1", "2"]
    assert request.ext.candidates[1].bid_type == "cpc"


def with_unknown_fields(node: Any) -> Any:
    """The same document with an unknown key (of awkward shape) added to every object, at every depth."""
    if isinstance(node, dict):
        out = {key: with_unknown_fields(value) for key, value in node.items()}
        out["zz_vendor_ext"] = {"nested": [1, {"a": None}, "x"], "n": 1.5}
        out["zz_flag"] = None
        return out
    if isinstance(node, list):
        return [with_unknown_fields(item) for item in node]
    return node


def test_unknown_fields_are_tolerated_at_every_level() -> None:
    doc = valid_doc()
    doc["imp"][0]["native"] = {"request": "{}", "ver": "1.2"}
    doc["imp"][0]["instl"] = 0
    doc["user"]["buyeruid"] = "b-1"
    assert decode(with_unknown_fields(doc)) == decode(doc)


def test_ints_are_accepted_where_floats_are_expected() -> None:
    doc = valid_doc()
    doc["imp"][0]["bidfloor"] = 1
    doc["imp"][1]["pmp"]["deals"][0]["bidfloor"] = 3
    doc["ext"]["candidates"][0]["bid"] = 2
    request = decode(doc)
    deals = request.imp[1].pmp.deals if request.imp[1].pmp else None
    assert deals is not None
    assert request.ext is not None
    values = (request.imp[0].bidfloor, deals[0].bidfloor, request.ext.candidates[0].bid)
    assert values == (1.0, 3.0, 2.0)
    assert all(type(value) is float for value in values)


def test_decoded_request_is_immutable() -> None:
    request = decode(valid_doc())
    with pytest.raises(AttributeError):
        request.id = "other"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ fuzz

_ODD_VALUES: list[Any] = [None, True, False, 0, -1, 1.5, -0.5, 10**30, "", "x", [], {}, [1, "a"], {"a": 1}]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _mutated(doc: Doc, rng: random.Random) -> Any:
    doc = copy.deepcopy(doc)
    path = rng.choice(_paths(doc)[1:])
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[part]
    leaf = path[-1]
    action = rng.randrange(3)
    if action == 0 and isinstance(parent, dict):
        del parent[leaf]
    elif action == 1:
        parent[leaf] = [parent[leaf]] if rng.random() < 0.5 else {"wrapped": parent[leaf]}
    else:
        parent[leaf] = copy.deepcopy(rng.choice(_ODD_VALUES))
    return doc


def _only_bad_request_escapes(body: bytes) -> None:
    with contextlib.suppress(BadRequest):
        assert isinstance(decode_bid_request(body, LIMITS), BidRequest)


def test_fuzz_only_bad_request_escapes() -> None:
    rng = random.Random(20260)
    body = encode(valid_doc())
    for _ in range(500):
        _only_bad_request_escapes(rng.randbytes(rng.randrange(0, 300)))
    for end in range(len(body)):
        _only_bad_request_escapes(body[:end])
    for _ in range(500):
        flipped = bytearray(body)
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        _only_bad_request_escapes(bytes(flipped))
    for _ in range(2000):
        _only_bad_request_escapes(encode(_mutated(valid_doc(), rng)))
    for depth in (10, 100, 1000, 100_000):
        _only_bad_request_escapes(b'{"imp":' + b"[" * depth + b"]" * depth + b"}")
        _only_bad_request_escapes(b'{"ext":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}")
