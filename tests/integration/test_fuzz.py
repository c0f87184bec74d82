"""Fuzz POST /v1/bid: bodies generated from the served /openapi.json BidRequest schema and randomly broken,
plus hand-broken bodies. Whatever comes in, the gateway never answers 5xx, and every 4xx names the problem
as {"error": {"code", "message", "field"}}.

The generator is a small seeded one (the seed is printed with every failure and a run is reproducible); the
schema-driven generation by schemathesis over every route is tests/integration/test_schemathesis.py.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.config import Settings
from gateway.local_triton import LocalTriton
from tests.integration.bid_requests import ads_with_distinct_advertisers, candidate, site_request
from tests.integration.gateway_server import serve_in_thread

pytestmark = pytest.mark.integration

SEED = 20240611
GENERATED_EXAMPLES = 200
JUNK: tuple[Any, ...] = (
    None,
    "",
    "x",
    0,
    -1,
    1.5,
    True,
    [],
    {},
    [1, "a"],
    {"k": "v"},
    10**30,
    -(10**30),
    1e308,
)
WEIRD_STRINGS = ("", " ", "USD", "EUR", "XYZ", "IAB1", "é", "\u0000", "\ud7ff", "😀" * 3, "a" * 5000, "1")


@pytest.fixture(scope="module")
def gateway(triton: LocalTriton) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(Settings(triton_url=triton.http_address)) as url,
        httpx.Client(base_url=url) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def schema(gateway: httpx.Client) -> dict[str, Any]:
    spec: dict[str, Any] = gateway.get("/openapi.json").json()
    return spec


def check_answer(response: httpx.Response, what: str) -> None:
    """The contract under fuzzing: no 5xx; a 4xx is a well-formed error naming the problem."""
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        document = response.json()
        assert set(document) == {"error"}, f"{what}: {document}"
        error = document["error"]
        assert set(error) == {"code", "message", "field"}, f"{what}: {error}"
        assert isinstance(error["code"], str), f"{what}: {error}"
        assert error["code"], f"{what}: {error}"
        assert isinstance(error["message"], str), f"{what}: {error}"
        assert error["message"].strip(), f"{what}: {error}"
        assert error["field"] is None or isinstance(error["field"], str), f"{what}: {error}"
    elif response.status_code == 204:  # a plain request's no-bid: no body at all
        assert response.content == b"", f"{what}: {response.content[:200]!r}"
    else:
        assert response.status_code == 200, f"{what}: {response.status_code}"
        document = response.json()
        assert "id" in document, what
        for seat in document.get("seatbid") or []:
            for bid in seat["bid"]:
                assert isinstance(bid["price"], float), f"{what}: {bid}"
                assert 0 < bid["price"] < math.inf, f"{what}: {bid}"


def post(client: httpx.Client, content: bytes, content_type: str = "application/json") -> httpx.Response:
    return client.post("/v1/bid", content=content, headers={"content-type": content_type})


class Generator:
    """Instances of a JSON schema (the subset msgspec emits: $ref, anyOf, enum, object, array, scalars)."""

    def __init__(self, spec: dict[str, Any], rng: random.Random) -> None:
        self._schemas: dict[str, Any] = spec["components"]["schemas"]
        self._rng = rng
        self._ads = ads_with_distinct_advertisers(10)

    def request(self) -> dict[str, Any]:
        request: dict[str, Any] = self.value(self._schemas["BidRequest"], depth=0, name="")
        if self._rng.random() < 0.9:  # mostly with candidates; the rest go to retrieval
            request["ext"] = {
                **(request.get("ext") or {}),
                "candidates": self.value({"type": "array"}, 1, "candidates"),
            }
        return request

    def value(self, schema: dict[str, Any], depth: int, name: str) -> Any:
        rng = self._rng
        if "$ref" in schema:
            return self.value(self._schemas[schema["$ref"].rsplit("/", 1)[1]], depth, name)
        if "anyOf" in schema:
            return self.value(rng.choice(schema["anyOf"]), depth, name)
        if "enum" in schema:
            return rng.choice(schema["enum"])
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            if name == "candidates":
                return [candidate(ad, bid=round(rng.uniform(0.01, 20), 2)) for ad in rng.sample(self._ads, 3)]
            low = schema.get("minItems", 0)
            count = rng.randint(low, low + (2 if depth < 4 else 0))
            return [self.value(schema.get("items", {}), depth + 1, name) for _ in range(count)]
        if kind == "string":
            if name in ("cur", "bidfloorcur"):
                return rng.choice(("USD", "EUR", "USD", "XYZ"))
            return rng.choice(WEIRD_STRINGS[1:] if schema.get("minLength") else WEIRD_STRINGS)
        if kind == "integer":
            low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
            return rng.randint(int(low), int(low) + 1000)
        if kind == "number":
            low = float(schema.get("minimum", schema.get("exclusiveMinimum", 0.0)))
            return low + rng.uniform(0.001, 50.0)
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "null":
            return None
        return rng.choice(JUNK)

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        chosen = {
            key: self.value(sub, depth + 1, key)
            for key, sub in properties.items()
            if key in required or (depth < 4 and self._rng.random() < 0.5)
        }
        if chosen.get("site") is not None and self._rng.random() < 0.8:
            chosen["app"] = chosen["dooh"] = None  # mostly valid: one of site/app/dooh
        return chosen


def paths(document: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every key/index path inside a JSON document."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield (*prefix, index)
            yield from paths(value, (*prefix, index))


def replaced(document: Any, path: tuple[str | int, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(document))
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return copy


def mutate(document: Any, rng: random.Random) -> Any:
    """Break one to three places: a junk value, a deleted key, an unknown key, or a non-finite number."""
    for _ in range(rng.randint(1, 3)):
        all_paths = list(paths(document))
        if not all_paths:
            return rng.choice(JUNK)
        path = rng.choice(all_paths)
        action = rng.random()
        if action < 0.6:
            document = replaced(document, path, rng.choice((*JUNK, math.nan, math.inf, -math.inf)))
        elif action < 0.8 and isinstance(path[-1], str):
            copy = replaced(document, path, None)
            parent = copy
            for step in path[:-1]:
                parent = parent[step]
            del parent[path[-1]]
            document = copy
        else:
            document = replaced(document, path, {"unknown": [rng.choice(JUNK)] * 3, "ext": {"x": {"y": []}}})
    return document


def test_generated_and_mutated_requests_never_get_a_5xx(
    gateway: httpx.Client, schema: dict[str, Any]
) -> None:
    rng = random.Random(SEED)
    generator = Generator(schema, rng)
    statuses: dict[int, int] = {}
    for example in range(GENERATED_EXAMPLES):
        document = generator.request()
        if example % 4:  # three in four broken, one in four as generated
            document = mutate(document, rng)
        body = json.dumps(document, allow_nan=True).encode()
        response = post(gateway, body)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        check_answer(response, f"seed {SEED} example {example}: {body[:300]!r}")
    # The generator must reach both sides of the contract, or the test proves little.
    assert statuses.get(200, 0) >= 5, statuses
    assert sum(n for status, n in statuses.items() if 400 <= status < 500) >= 50, statuses


def valid_request() -> dict[str, Any]:
    ads = ads_with_distinct_advertisers(2)
    request = site_request([candidate(ad, bid=2.0 + i, imp_ids=["1"]) for i, ad in enumerate(ads)])
    request["imp"][0]["pmp"] = {"private_auction": 0, "deals": [{"id": "d1", "bidfloor": 1.0}]}
    return request


def test_a_wrong_type_at_every_level_gets_a_4xx_naming_the_field(gateway: httpx.Client) -> None:
    base = valid_request()
    assert post(gateway, json.dumps(base).encode()).status_code == 200
    junk_values: tuple[Any, ...] = (None, "x", -1, 1.5, True, [], {})
    for path in paths(base):
        for junk in junk_values:
            body = json.dumps(replaced(base, path, junk)).encode()
            check_answer(post(gateway, body), f"{path} = {junk!r}")


def nested(depth: int) -> bytes:
    return b'{"id":"x","imp":[{"id":"1"}],"ext":{"junk":' + b"[" * depth + b"]" * depth + b"}}"


VALID = json.dumps(valid_request()).encode()
HAND_BROKEN: dict[str, bytes] = {
    "empty": b"",
    "whitespace": b" \n\t ",
    "null": b"null",
    "array": b"[]",
    "number": b"42",
    "string": b'"bid"',
    "truncated": VALID[: len(VALID) // 2],
    "trailing_garbage": VALID + b"}",
    "two_documents": VALID + VALID,
    "bom": b"\xef\xbb\xbf" + VALID,
    "invalid_utf8": VALID.replace(b'"req-1"', b'"\xff\xfe\xfd"'),
    "invalid_utf8_in_key": VALID.replace(b'"tagid"', b'"\xc3\x28"'),
    "lone_surrogate": VALID.replace(b'"req-1"', b'"\\ud800"'),
    "nul_bytes": b"\x00" * 64,
    "nan_tmax": VALID.replace(b'"tmax": 500', b'"tmax": NaN'),
    "nan_floor": VALID.replace(b'"bidfloor": 0.1', b'"bidfloor": NaN'),
    "infinity_floor": VALID.replace(b'"bidfloor": 0.1', b'"bidfloor": Infinity'),
    "minus_infinity_bid": VALID.replace(b'"bid": 2.0', b'"bid": -Infinity'),
    "overflowing_float": VALID.replace(b'"bidfloor": 0.1', b'"bidfloor": 1e400'),
    "huge_float_bid": VALID.replace(b'"bid": 2.0', b'"bid": 1e308'),
    "subnormal_bid": VALID.replace(b'"bid": 2.0', b'"bid": 5e-324'),
    "huge_int_tmax": VALID.replace(b'"tmax": 500', b'"tmax": ' + str(10**40).encode()),
    "int64_overflow_at": VALID.replace(b'"tmax": 500', b'"tmax": 500, "at": 18446744073709551617'),
    "huge_int_dimension": VALID.replace(b'"w": 300', b'"w": 99999999999999999999'),
    "negative_tmax": VALID.replace(b'"tmax": 500', b'"tmax": -5'),
    "zero_tmax": VALID.replace(b'"tmax": 500', b'"tmax": 0'),
    "tiny_tmax": VALID.replace(b'"tmax": 500', b'"tmax": 1'),
    "duplicate_keys": VALID.replace(b'"tmax": 500', b'"tmax": 500, "tmax": "x"'),
    "deep_nesting_in_unknown_field": nested(100_000),
    "deep_nesting_moderate": nested(500),
    "deep_object_nesting": b'{"id":"x","imp":[{"id":"1"}],"ext":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
    "long_id": VALID.replace(b'"req-1"', b'"' + b"i" * 500_000 + b'"'),
    "many_imps": json.dumps({**valid_request(), "imp": [{"id": str(i)} for i in range(100)]}).encode(),
    "site_and_app": VALID.replace(b'"site":', b'"app": {"id": "a1"}, "site":'),
    "unknown_imp_in_candidate": VALID.replace(b'"imp_ids": ["1"]', b'"imp_ids": ["nope"]'),
    "candidates_not_a_list": VALID.replace(b'"candidates": [', b'"candidates": {"a": [').replace(
        b"}]}}", b"}]}}}"
    ),
}


@pytest.mark.parametrize("case", HAND_BROKEN, ids=str)
def test_hand_broken_bodies_get_a_named_4xx_never_a_5xx(gateway: httpx.Client, case: str) -> None:
    response = post(gateway, HAND_BROKEN[case])
    check_answer(response, case)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""]
)
def test_a_wrong_content_type_never_gets_a_5xx(gateway: httpx.Client, content_type: str) -> None:
    check_answer(post(gateway, VALID, content_type), content_type)
    check_answer(post(gateway, b"a=1&b=2", content_type), content_type)


def test_an_oversized_chunked_body_gets_413(gateway: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 100_000  # 2 MB in all, sent without a content-length

    response = gateway.post("/v1/bid", content=chunks(), headers={"content-type": "application/json"})
    check_answer(response, "chunked 2 MB")
    assert response.status_code == 413
