"""A decoded request as columns: candidate fields column-wise, and each candidate's scoring placement."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import numpy as np
import pytest

from gateway.core import auction, request_columns
from gateway.openrtb import BidRequest, Candidate


def request(imp_ids: list[list[str] | None], imps: int = 1) -> BidRequest:
    candidates: list[dict[str, Any]] = [
        {"id": f"ad{c}", "campaign_id": "c", "advertiser": "a.com", "bid_type": "cpm", "bid": 1.0}
        | ({} if ids is None else {"imp_ids": ids})
        for c, ids in enumerate(imp_ids)
    ]
    body = {"id": "r", "imp": [{"id": f"i{k}"} for k in range(imps)], "ext": {"candidates": candidates}}
    return msgspec.convert(body, BidRequest)


def test_candidate_columns() -> None:
    body = {
        "id": "r",
        "imp": [{"id": "i0"}],
        "ext": {
            "candidates": [
                {"id": "a", "campaign_id": "ca", "advertiser": "a.com", "bid_type": "cpc", "bid": 0.5},
                {
                    "id": "b",
                    "campaign_id": "cb",
                    "advertiser": "B.com",
                    "bid_type": "cpa",
                    "bid": 2,
                    "cat": ["IAB1-2", "IAB3"],
                    "imp_ids": ["i0"],
                    "deal_id": "D1",
                },
            ]
        },
    }
    req = msgspec.convert(body, BidRequest)
    assert req.ext is not None
    columns = request_columns.candidate_columns(req.ext.candidates)
    assert len(columns) == 2
    assert list(columns.ad_ids) == ["a", "b"]
    assert list(columns.campaign_ids) == ["ca", "cb"]
    assert list(columns.advertisers) == ["a.com", "B.com"]
    assert [list(cats) for cats in columns.categories] == [[], ["IAB1-2", "IAB3"]]
    assert columns.bid_types.tolist() == [1, 2]
    assert columns.bids.tolist() == [0.5, 2.0]
    assert [None if ids is None else list(ids) for ids in columns.imp_ids] == [None, ["i0"]]
    assert list(columns.deal_ids) == [None, "D1"]


@pytest.mark.parametrize(
    ("imps", "imp_ids", "expected"),
    [
        pytest.param(1, [None, ["i0"]], [0, 0], id="one-imp"),
        pytest.param(3, [None, None], [0, 0], id="unrestricted"),
        pytest.param(3, [None, ["i2"], ["i2", "i1"], ["i9"], []], [0, 2, 1, 0, 0], id="first-allowed-imp"),
    ],
)
def test_scoring_imps(imps: int, imp_ids: list[list[str] | None], expected: list[int]) -> None:
    req = request(imp_ids, imps)
    assert req.ext is not None
    columns = request_columns.candidate_columns(req.ext.candidates)
    assert request_columns.scoring_imps(req, columns).tolist() == expected


@pytest.mark.parametrize("seed", range(30))
def test_scoring_imps_on_random_requests(seed: int) -> None:
    """The shortcuts (one imp, no imp_ids) agree with the rule: the first imp, in request order, that the
    candidate's imp_ids allow; the first imp when none does."""
    rng = random.Random(seed)
    imps = rng.choice([1, 1, 2, 4])
    names = [f"i{k}" for k in range(imps)]
    imp_ids = [
        None if rng.random() < 0.6 else rng.sample([*names, "i9"], rng.randint(0, 2))
        for _ in range(rng.randint(0, 8))
    ]
    req = request(imp_ids, imps)
    assert req.ext is not None
    columns = request_columns.candidate_columns(req.ext.candidates)
    expected = [min((names.index(i) for i in ids or () if i in names), default=0) for ids in imp_ids]
    assert request_columns.scoring_imps(req, columns).tolist() == expected


def candidates_with_bid_types(bid_types: list[str]) -> list[Candidate]:
    return [
        Candidate(id=f"ad{c}", campaign_id="c", advertiser="a.com", bid_type=bid_type, bid=1.0)  # type: ignore[arg-type]
        for c, bid_type in enumerate(bid_types)
    ]


@pytest.mark.parametrize(
    "bid_types",
    [[], ["cpm"], ["cpm", "cpc", "cpa", "cpc"], ["CPM", "cpc"], ["Cpa"]],
    ids=["none", "one", "lower-case", "mixed-case", "capitalised"],
)
def test_bid_type_column_holds_the_codes(bid_types: list[str]) -> None:
    """The bytearray path (lower case, as decoded) and the fallback (other spellings, e.g. from a catalog)
    give the same codes, as a writable int8 column."""
    column = request_columns.candidate_columns(candidates_with_bid_types(bid_types)).bid_types
    assert column.dtype == np.dtype(np.int8)
    assert column.tolist() == [auction.BID_TYPE_CODES[name.lower()] for name in bid_types]
    assert column.flags.writeable


def test_unknown_bid_type_raises_encode_bid_types_error() -> None:
    with pytest.raises(ValueError, match="unknown bid type 'cpx'"):
        request_columns.candidate_columns(candidates_with_bid_types(["cpm", "cpx"]))
