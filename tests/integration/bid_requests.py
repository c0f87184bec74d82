"""The project's own bid-request fixtures, built from the committed snapshots (known users and ads)."""

from __future__ import annotations

import gzip
import json
from functools import cache
from typing import Any

from gateway.config import REPO_ROOT

SNAPSHOTS = REPO_ROOT / "data" / "snapshots"


@cache
def snapshot(name: str) -> tuple[dict[str, Any], ...]:
    with gzip.open(SNAPSHOTS / f"{name}.jsonl.gz", "rt") as lines:
        return tuple(json.loads(line) for line in lines)


def ads_with_distinct_advertisers(count: int) -> list[dict[str, Any]]:
    chosen: dict[str, dict[str, Any]] = {}
    for ad in snapshot("ads"):
        chosen.setdefault(ad["advertiser"], ad)
        if len(chosen) == count:
            break
    return list(chosen.values())


def candidate(ad: dict[str, Any], bid_type: str = "cpm", bid: float = 2.0, **extra: Any) -> dict[str, Any]:
    return {
        "id": ad["id"],
        "campaign_id": ad["campaign_id"],
        "advertiser": ad["advertiser"],
        "bid_type": bid_type,
        "bid": bid,
        "cat": [ad["cat"]],
        **extra,
    }


def site_request(candidates: list[dict[str, Any]], imps: int = 1, **fields: Any) -> dict[str, Any]:
    user = snapshot("users")[0]
    request: dict[str, Any] = {
        "id": "req-1",
        "imp": [
            {
                "id": str(i + 1),
                "tagid": f"slot-{i + 1}",
                "banner": {"w": 300, "h": 250, "pos": 1},
                "bidfloor": 0.1,
            }
            for i in range(imps)
        ],
        "site": {"id": "s1", "domain": "news1.example", "cat": ["IAB12"]},
        "device": {"devicetype": 2, "os": "Windows", "geo": {"country": "USA"}},
        "user": {"id": user["id"]},
        "tmax": 500,
        "cur": ["USD"],
        "ext": {"candidates": candidates},
    }
    request.update(fields)
    return request
