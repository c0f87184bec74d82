"""Bulk load of the snapshots (and campaign configurations) into Redis: `python -m gateway seed-redis`.

Rows are the embedded store's own precomputed buckets (`EmbeddedFeatureStore.user_rows`/`ad_rows`), packed
as `gateway.stores.redis_store` reads them, so both backends serve byte-identical features. Writes go in
pipelined MSET chunks (no transaction: a re-run simply overwrites).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import StoreError
from gateway.stores.campaigns import CampaignSpec, config_key, encode_config
from gateway.stores.embedded import EmbeddedFeatureStore
from gateway.stores.redis_store import AD_ROW, USER_ROW, encode_rows, feature_namespace

__all__ = ["SeedReport", "add_arguments", "command", "read_campaigns", "seed_redis"]

log = logging.getLogger(__name__)

CHUNK: Final = 2_000  # keys per MSET: big enough to amortise the round trip, small enough not to block Redis


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


async def _mset_chunks(client: Redis, items: Iterable[tuple[str, bytes]]) -> int:
    written = 0
    chunk: dict[str, bytes] = {}
    for key, value in items:
        chunk[key] = value
        if len(chunk) == CHUNK:
            await client.mset(chunk)
            written += len(chunk)
            chunk = {}
    if chunk:
        await client.mset(chunk)
        written += len(chunk)
    return written


async def seed_redis(
    client: Redis, snapshot_dir: Path, campaigns: list[CampaignSpec] | None = None
) -> SeedReport:
    """Write every snapshot user and ad (and the given campaign configs); raises StoreError."""
    store = EmbeddedFeatureStore.load(snapshot_dir)
    namespace = feature_namespace()
    user_ids, user_cat, user_dense = store.user_rows()
    ad_ids, ad_cat, ad_dense = store.ad_rows()
    try:
        users = await _mset_chunks(
            client,
            zip(
                (f"{namespace}:u:{i}" for i in user_ids),
                encode_rows(USER_ROW, user_cat, user_dense),
                strict=True,
            ),
        )
        ads = await _mset_chunks(
            client,
            zip((f"{namespace}:a:{i}" for i in ad_ids), encode_rows(AD_ROW, ad_cat, ad_dense), strict=True),
        )
        configured = await _mset_chunks(
            client, ((config_key(spec.campaign_id), encode_config(spec.config())) for spec in campaigns or [])
        )
    except (RedisError, OSError) as exc:
        raise StoreError(f"seeding redis failed: {exc}") from exc
    return SeedReport(namespace=namespace, users=users, ads=ads, campaigns=configured)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`seed-redis` flags; defaults come from Settings (BIDGW_REDIS_URL, BIDGW_SNAPSHOT_DIR)."""
    parser.add_argument("--redis-url", help="default: BIDGW_REDIS_URL")
    parser.add_argument("--snapshots", type=Path, help="snapshot directory (default: BIDGW_SNAPSHOT_DIR)")
    parser.add_argument("--campaigns", type=Path, help="CampaignSpec .jsonl[.gz]: budgets and caps to load")


def command(args: argparse.Namespace) -> int:
    """The `seed-redis` command: 0 when written, 2 (one line on stderr) when it could not be."""
    from gateway.config import Settings  # noqa: PLC0415 - settings are read when the command runs

    settings = Settings()
    url = args.redis_url or settings.redis_url
    snapshots = args.snapshots or settings.snapshot_dir

    async def run() -> SeedReport:
        client = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
        try:
            specs = read_campaigns(args.campaigns) if args.campaigns else None
            return await seed_redis(client, snapshots, specs)
        finally:
            await client.aclose()

    try:
        report = asyncio.run(run())
    except StoreError as exc:
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
