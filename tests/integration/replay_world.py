"""Bid requests drawn from the synthetic world (training/world.py), with the truth behind each one.

Each request is one impression opportunity the training data could have held: a user on a publisher's
placement with its device, and a few candidate ads. Once the gateway has picked a winner, `truth` gives
the generator's P(click) and P(conversion | click) for that exact (user, winning ad, placement, device,
hour) — what the replay test draws clicks and conversions from."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from training import synthetic
from training import world as w


@dataclass(frozen=True, slots=True)
class Opportunities:
    world: w.World
    rows: synthetic.Rows  # rows.ad is the first candidate; the others are in `candidates`
    candidates: npt.NDArray[np.int64]  # [N, K] ad indices


def draw(world: w.World, n: int, candidates: int, seed: int, hour: int) -> Opportunities:
    """`n` opportunities at UTC `hour` (the gateway scores with the current hour), every value present."""
    rng = np.random.default_rng(seed)
    rows = synthetic.sample_rows(rng, world, n)
    users = world.users
    rows = replace(
        rows,
        user_known=np.ones(n, dtype=np.bool_),
        os=np.where(rows.os >= 0, rows.os, users.os[rows.user]),
        country=users.country[rows.user],
        position_known=np.ones(n, dtype=np.bool_),
        hour=np.full(n, hour, dtype=np.int64),
    )
    others = rng.choice(len(world.ads.ids), size=(n, candidates - 1), p=world.ads.popularity)
    return Opportunities(world, rows, np.concatenate([rows.ad[:, None], others], axis=1))


def request(opps: Opportunities, i: int, bid_usd: float = 1.0) -> dict[str, object]:
    world, rows = opps.world, opps.rows
    users, ads, pubs = world.users, world.ads, world.publishers
    pub, placement = int(rows.publisher[i]), int(rows.placement[i])
    width, height = w.SIZES[pubs.size[placement]]
    seen: set[int] = set()
    candidates = []
    for ad in opps.candidates[i].tolist():
        if ad in seen:
            continue
        seen.add(ad)
        candidates.append(
            {
                "id": ads.ids[ad],
                "campaign_id": ads.campaign_ids[ads.campaign[ad]],
                "advertiser": ads.advertisers[ads.advertiser[ad]],
                "bid_type": "cpc",
                "bid": bid_usd,
                "cat": [w.IAB_CATEGORIES[ads.category[ad]]],
            }
        )
    publisher: dict[str, object] = {"id": pubs.ids[pub], "cat": [w.IAB_CATEGORIES[pubs.category[pub]]]}
    publisher["bundle" if pubs.is_app[pub] else "domain"] = pubs.name[pub]
    return {
        "id": f"replay-{i}",
        "imp": [
            {
                "id": "1",
                "tagid": pubs.tagid[placement],
                "banner": {"w": width, "h": height, "pos": int(w.POSITIONS[pubs.pos[placement]])},
            }
        ],
        "app" if pubs.is_app[pub] else "site": publisher,
        "device": {
            "devicetype": int(w.DEVICE_TYPES[rows.device[i]]),
            "os": w.OSES[rows.os[i]],
            "geo": {"country": w.COUNTRIES[rows.country[i]]},
        },
        "user": {"id": users.ids[rows.user[i]]},
        "tmax": 1000,
        "cur": ["USD"],
        "ext": {"candidates": candidates},
    }


def truth(opps: Opportunities, index: list[int], winners: list[int]) -> tuple[w.F64, w.F64]:
    """True (pCTR, pCVR) of opportunity index[j] served with ad winners[j]."""
    idx = np.asarray(index, dtype=np.int64)
    rows = opps.rows
    picked = synthetic.Rows(
        user=rows.user[idx],
        user_known=rows.user_known[idx],
        ad=np.asarray(winners, dtype=np.int64),
        publisher=rows.publisher[idx],
        placement=rows.placement[idx],
        device=rows.device[idx],
        os=rows.os[idx],
        country=rows.country[idx],
        position_known=rows.position_known[idx],
        hour=rows.hour[idx],
    )
    return synthetic.true_probabilities(opps.world, picked)
