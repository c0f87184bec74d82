"""Bulk load of the snapshots (and campaign configurations) into Redis: `python -m gateway seed-redis`.

Rows are the embedded store's own precomputed buckets (`EmbeddedFeatureStore.user_rows`/`ad_rows`), packed
as `gateway.stores.redis_store` reads them, so both backends serve byte-identical features. Campaign
configurations go to their hash-tagged keys (`gateway.stores.keys`). Writes go in chunks: one MSET per
chunk on one server; in a cluster one MSET per slot, each shard's MSETs pipelined, every shard at once (no
transaction: a re-run simply overwrites).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from gateway.errors import StoreError
from gateway.stores.campaigns import CampaignSpec, encode_config
from gateway.stores.embedded import EmbeddedFeatureStore
from gateway.stores.keys import config_key
from gateway.stores.redis_store import AD_ROW, USER_ROW, encode_rows, feature_namespace
from gateway.stores.shards import Command, RedisShards, Shard, run_on_shards

__all__ = ["SeedReport", "add_arguments", "command", "read_campaigns", "seed_redis"]

log = logging.getLogger(__name__)

CHUNK: Final = 2_000  # keys per round trip: big enough to amortise it, small enough not to block Redis
CHUNK_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class SeedReport:
    namespace: str
    users: int
    ads: int
    campaigns: int


def read_campaigns(path: Path) -> list[CampaignSpec]:
    """A .jsonl (optionally .gz) of CampaignSpec lines; StoreError names the file and the problem."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return msgspec.json.Decoder(CampaignSpec).decode_lines(data)
    except (OSError, EOFError) as exc:
        raise StoreError(f"campaign file {path} is not readable: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise StoreError(f"campaign file {path} is invalid: {exc}") from exc


async def write_chunks(shards: RedisShards, items: Iterable[tuple[str, bytes]]) -> int:
    """SET every (key, value), CHUNK keys per round trip per shard; raises StoreError."""
    written = 0
    chunk: list[tuple[str, bytes]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == CHUNK:
            written += await _write(shards, chunk)
            chunk = []
    if chunk:
        written += await _write(shards, chunk)
    return written


async def _write(shards: RedisShards, chunk: list[tuple[str, bytes]]) -> int:
    deadline = time.monotonic() + CHUNK_TIMEOUT_S
    await shards.discover(deadline)
    by_slot: dict[int, list[str | bytes]] = {}
    for key, value in chunk:
        by_slot.setdefault(shards.slot(key) if shards.cluster else 0, []).extend((key, value))
    groups: dict[Shard, list[Command]] = {}
    for slot, pairs in by_slot.items():
        groups.setdefault(shards.shard_for_slot(slot), []).append(("MSET", *pairs))
    for shard, results in await shards.execute_many(groups, deadline, "seed"):
        if isinstance(results, StoreError):
            raise results
        refused = next((r for r in results if isinstance(r, Exception)), None)
        if refused is not None:
            raise StoreError(f"seeding {shard.name} failed: {refused}")
    return len(chunk)


async def seed_redis(
    shards: RedisShards, snapshot_dir: Path, campaigns: list[CampaignSpec] | None = None
) -> SeedReport:
    """Write every snapshot user and ad (and the given campaign configs); raises StoreError."""
    store = EmbeddedFeatureStore.load(snapshot_dir)
    namespace = feature_namespace()
    user_ids, user_cat, user_dense = store.user_rows()
    ad_ids, ad_cat, ad_dense = store.ad_rows()
    users = await write_chunks(
        shards,
        zip(
            (f"{namespace}:u:{i}" for i in user_ids), encode_rows(USER_ROW, user_cat, user_dense), strict=True
        ),
    )
    ads = await write_chunks(
        shards,
        zip((f"{namespace}:a:{i}" for i in ad_ids), encode_rows(AD_ROW, ad_cat, ad_dense), strict=True),
    )
    configured = await write_chunks(
        shards, ((config_key(spec.campaign_id), encode_config(spec.config())) for spec in campaigns or [])
    )
    return SeedReport(namespace=namespace, users=users, ads=ads, campaigns=configured)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`seed-redis` flags; defaults come from Settings (BIDGW_REDIS_URL, BIDGW_SNAPSHOT_DIR)."""
    parser.add_argument(
        "--redis-url", help="default: BIDGW_REDIS_URL (redis+cluster://host:port for a cluster)"
    )
    parser.add_argument("--snapshots", type=Path, help="snapshot directory (default: BIDGW_SNAPSHOT_DIR)")
    parser.add_argument("--campaigns", type=Path, help="CampaignSpec .jsonl[.gz]: budgets and caps to load")


def command(args: argparse.Namespace) -> int:
    """The `seed-redis` command: 0 when written, 2 (one line on stderr) when it could not be."""
    from gateway.config import Settings  # noqa: PLC0415 - settings are read when the command runs

    settings = Settings()
    url = args.redis_url or settings.redis_url
    snapshots = args.snapshots or settings.snapshot_dir

    try:
        specs = read_campaigns(args.campaigns) if args.campaigns else None
        report = run_on_shards(
            url, lambda shards: seed_redis(shards, snapshots, specs), socket_timeout_s=CHUNK_TIMEOUT_S
        )
    except (StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info(
        "seeded %s: %d users, %d ads under %s, %d campaign configs",
        url,
        report.users,
        report.ads,
        report.namespace,
        report.campaigns,
    )
    return 0
