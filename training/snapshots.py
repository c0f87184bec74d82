"""The stores' snapshots: the world's observable attributes as gzipped JSON lines, byte-for-byte reproducible.

The gateway's embedded stores load these files; the model was trained on exactly these values (the
world rounds its statistics before training sees them), so a store lookup reproduces training features.
Sorted keys, compact separators, gzip mtime 0 and no file name in the gzip header make the bytes a pure
function of the world, so regenerating them leaves git clean.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

from training import world as w

USERS_FILE: Final = "users.jsonl.gz"
ADS_FILE: Final = "ads.jsonl.gz"
PUBLISHERS_FILE: Final = "publishers.jsonl.gz"


def user_records(users: w.Users) -> Iterator[dict[str, Any]]:
    for i, user_id in enumerate(users.ids):
        yield {
            "id": user_id,
            "age": w.AGES[users.age[i]],
            "gender": w.GENDERS[users.gender[i]],
            "interests": [w.IAB_CATEGORIES[users.interest1[i]], w.IAB_CATEGORIES[users.interest2[i]]],
            "ctr_hist": float(users.ctr_hist[i]),
            "activity": float(users.activity[i]),
            # OpenRTB device.devicetype is an integer; the model's device_type feature is str() of it.
            "devicetype": int(w.DEVICE_TYPES[users.device[i]]),
            "os": w.OSES[users.os[i]],
            "country": w.COUNTRIES[users.country[i]],
        }


def ad_records(ads: w.Ads) -> Iterator[dict[str, Any]]:
    for i, ad_id in enumerate(ads.ids):
        yield {
            "id": ad_id,
            "campaign_id": ads.campaign_ids[ads.campaign[i]],
            "advertiser": ads.advertisers[ads.advertiser[i]],
            "cat": w.IAB_CATEGORIES[ads.category[i]],
            "prior_ctr": float(ads.prior_ctr[i]),
            "prior_cvr": float(ads.prior_cvr[i]),
        }


def publisher_records(pubs: w.Publishers) -> Iterator[dict[str, Any]]:
    placements: list[list[dict[str, Any]]] = [[] for _ in pubs.ids]
    for j, pub in enumerate(pubs.placement_pub.tolist()):
        width, height = w.SIZES[pubs.size[j]]
        placements[pub].append({"tagid": pubs.tagid[j], "w": width, "h": height, "pos": int(pubs.pos[j])})
    for i, pub_id in enumerate(pubs.ids):
        is_app = bool(pubs.is_app[i])
        yield {
            "id": pub_id,
            "kind": "app" if is_app else "site",
            "bundle" if is_app else "domain": pubs.name[i],
            "cat": w.IAB_CATEGORIES[pubs.category[i]],
            "placements": placements[i],
        }


def write_jsonl_gz(path: Path, records: Iterable[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(lines.encode("utf-8"))


def read_jsonl_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def write_snapshots(world: w.World, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, records in (
        (USERS_FILE, user_records(world.users)),
        (ADS_FILE, ad_records(world.ads)),
        (PUBLISHERS_FILE, publisher_records(world.publishers)),
    ):
        path = directory / name
        write_jsonl_gz(path, records)
        written.append(path)
    return written
