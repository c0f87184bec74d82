"""BidResponse encoding: valid OpenRTB, no nulls, optional fields omitted."""

from __future__ import annotations

import json

import msgspec

from gateway.openrtb import (
    Bid,
    BidExt,
    BidResponse,
    NoBidReason,
    ResponseExt,
    SeatBid,
    encode_response,
)


def bid(**overrides: object) -> Bid:
    fields: dict[str, object] = {
        "id": "b1",
        "impid": "1",
        "price": 1.75,
        "adid": "ad-7",
        "adomain": ["shoes.example"],
        "cid": "camp-1",
        "crid": "cr-7",
        "cat": ["IAB18"],
        "ext": BidExt(ecpm=2.1, pctr=0.021, pcvr=0.08, bid_type="cpc", model_version="ranker:3"),
    }
    fields.update(overrides)
    return msgspec.convert(fields, Bid, from_attributes=True)


def test_bid_response_layout() -> None:
    resp = BidResponse(id="req-1", bidid="resp-1", cur="USD", seatbid=[SeatBid(seat="gw", bid=[bid()])])
    assert json.loads(encode_response(resp)) == {
        "id": "req-1",
        "bidid": "resp-1",
        "cur": "USD",
        "seatbid": [
            {
                "seat": "gw",
                "bid": [
                    {
                        "id": "b1",
                        "impid": "1",
                        "price": 1.75,
                        "adid": "ad-7",
                        "adomain": ["shoes.example"],
                        "cid": "camp-1",
                        "crid": "cr-7",
                        "cat": ["IAB18"],
                        "ext": {
                            "ecpm": 2.1,
                            "pctr": 0.021,
                            "pcvr": 0.08,
                            "bid_type": "cpc",
                            "model_version": "ranker:3",
                        },
                    }
                ],
            }
        ],
    }


def test_none_fields_are_omitted_not_null() -> None:
    body = encode_response(BidResponse(id="req-1", seatbid=[SeatBid(bid=[bid()])]))
    assert b"null" not in body
    decoded = json.loads(body)
    assert set(decoded) == {"id", "seatbid"}  # no nbr, ext, bidid, cur
    assert "dealid" not in decoded["seatbid"][0]["bid"][0]
    assert "seat" not in decoded["seatbid"][0]


def test_dealid_is_written_when_set() -> None:
    body = encode_response(BidResponse(id="r", seatbid=[SeatBid(seat="gw", bid=[bid(dealid="deal-9")])]))
    assert json.loads(body)["seatbid"][0]["bid"][0]["dealid"] == "deal-9"


def test_no_bid_with_reason() -> None:
    body = encode_response(BidResponse(id="r", nbr=NoBidReason.INSUFFICIENT_AUCTION_TIME))
    assert json.loads(body) == {"id": "r", "nbr": 15}


def test_response_ext_always_carries_degraded() -> None:
    healthy = json.loads(encode_response(BidResponse(id="r", ext=ResponseExt(degraded=False))))
    assert healthy["ext"] == {"degraded": False}
    debug = {"stages_us": {"decode": 26}, "scorer": "fallback"}
    degraded = json.loads(encode_response(BidResponse(id="r", ext=ResponseExt(degraded=True, debug=debug))))
    assert degraded["ext"] == {"degraded": True, "debug": debug}


def test_encode_decode_round_trip() -> None:
    resp = BidResponse(
        id="r", bidid="x", cur="EUR", seatbid=[SeatBid(seat="gw", bid=[bid(), bid(id="b2", dealid="d")])]
    )
    assert msgspec.json.decode(encode_response(resp), type=BidResponse) == resp


def test_no_bid_reason_codes() -> None:
    assert {reason.name: int(reason) for reason in NoBidReason} == {
        "UNKNOWN_ERROR": 0,
        "TECHNICAL_ERROR": 1,
        "INVALID_REQUEST": 2,
        "KNOWN_WEB_SPIDER": 3,
        "SUSPECTED_NON_HUMAN_TRAFFIC": 4,
        "CLOUD_DATACENTER_PROXY_IP": 5,
        "UNSUPPORTED_DEVICE": 6,
        "BLOCKED_PUBLISHER_OR_SITE": 7,
        "UNMATCHED_USER": 8,
        "DAILY_READER_CAP_MET": 9,
        "DAILY_DOMAIN_CAP_MET": 10,
        "ADS_TXT_AUTHORIZATION_UNAVAILABLE": 11,
        "ADS_TXT_AUTHORIZATION_VIOLATION": 12,
        "ADS_CERT_AUTHENTICATION_UNAVAILABLE": 13,
        "ADS_CERT_AUTHENTICATION_VIOLATION": 14,
        "INSUFFICIENT_AUCTION_TIME": 15,
        "INCOMPLETE_SUPPLY_CHAIN": 16,
        "BLOCKED_SUPPLY_CHAIN_NODE": 17,
    }
