"""The catalog in Redis: written by `python -m gateway seed-catalog`, read back by the reloader.

Three keys share the hash tag `{catalog}`, so one MSET writes them atomically on a single server and in a
cluster alike (same slot), and a reader never sees the bytes of one catalog with the digest of another:

  bidgw:v2:catalog:{catalog}:jsonl     the catalog file's bytes, as validated
  bidgw:v2:catalog:{catalog}:digest    sha256 of those bytes: what a poll reads (64 bytes, not the file)
  bidgw:v2:catalog:{catalog}:version   the header's catalog_version, for people and dashboards

Seeding also writes each campaign's budget and frequency cap as its CampaignConfig (the campaign state the
bid path enforces), for every campaign, so a budget removed from the catalog is removed from Redis too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.catalog.loader import Catalog, parse_catalog
from gateway.errors import CatalogError, StoreError
from gateway.stores.campaigns import CampaignSpec, encode_config
from gateway.stores.keys import config_key
from gateway.stores.seed import write_chunks
from gateway.stores.shards import RedisShards, run_on_shards

__all__ = [
    "DATA_KEY",
    "DIGEST_KEY",
    "VERSION_KEY",
    "RedisCatalogSource",
    "SeedCatalogReport",
    "add_arguments",
    "command",
    "read_catalog",
    "write_campaign_configs",
    "write_catalog",
]

log = logging.getLogger(__name__)

CATALOG_PREFIX: Final = "bidgw:v2:catalog:{catalog}"
DATA_KEY: Final = f"{CATALOG_PREFIX}:jsonl"
DIGEST_KEY: Final = f"{CATALOG_PREFIX}:digest"
VERSION_KEY: Final = f"{CATALOG_PREFIX}:version"
TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class SeedCatalogReport:
    version: str
    campaigns: int
    creatives: int
    bytes: int


async def write_catalog(shards: RedisShards, catalog: Catalog, data: bytes) -> SeedCatalogReport:
    """Store a validated catalog (its bytes) and its campaigns' configs; raises StoreError.

    Configs first: a gateway that picks the new catalog up must find its campaigns' budgets and caps
    already there (a campaign without a config bids unlimited)."""
    campaigns = await write_campaign_configs(shards, catalog)
    deadline = time.monotonic() + TIMEOUT_S
    await shards.discover(deadline)
    command = ("MSET", DATA_KEY, data, DIGEST_KEY, catalog.digest, VERSION_KEY, catalog.version)
    [reply] = await shards.execute(shards.shard_for_key(DATA_KEY), [command], deadline, "seed catalog")
    if isinstance(reply, Exception):
        raise StoreError(f"writing the catalog failed: {reply}")
    return SeedCatalogReport(
        version=catalog.version, campaigns=campaigns, creatives=catalog.creative_count(), bytes=len(data)
    )


async def write_campaign_configs(shards: RedisShards, catalog: Catalog) -> int:
    """Each campaign's daily budget and frequency cap as the campaign state Redis enforces (CampaignConfig);
    returns how many were written; raises StoreError."""
    await shards.discover(time.monotonic() + TIMEOUT_S)
    specs = (
        CampaignSpec(campaign_id=c.id, daily_budget_usd=c.daily_budget_usd, freq_cap=c.freq_cap)
        for c in catalog.campaigns
    )
    return await write_chunks(shards, ((config_key(s.campaign_id), encode_config(s.config())) for s in specs))


async def read_catalog(shards: RedisShards, deadline: float) -> tuple[str, bytes] | None:
    """(digest, bytes) of the stored catalog, None when none is stored; raises StoreError."""
    await shards.discover(deadline)
    shard = shards.shard_for_key(DATA_KEY)
    [reply] = await shards.execute(shard, [("MGET", DIGEST_KEY, DATA_KEY)], deadline, "read catalog")
    if isinstance(reply, Exception):
        raise StoreError(f"reading the catalog failed: {reply}")
    digest, data = reply
    if digest is None or data is None:
        return None
    return _text(digest), bytes(data)


class RedisCatalogSource:
    """A `CatalogSource` over Redis: each poll reads the 64-byte digest, and the bytes only when it
    changed."""

    def __init__(self, shards: RedisShards, *, timeout_s: float = 5.0) -> None:
        self.name = "redis"
        self._shards = shards
        self._timeout_s = timeout_s
        self._digest: str | None = None

    async def fetch(self) -> bytes | None:
        deadline = time.monotonic() + self._timeout_s
        await self._shards.discover(deadline)
        shard = self._shards.shard_for_key(DIGEST_KEY)
        [digest] = await self._shards.execute(shard, [("GET", DIGEST_KEY)], deadline, "poll catalog")
        if isinstance(digest, Exception):
            raise StoreError(f"polling the catalog failed: {digest}")
        if digest is None:
            raise CatalogError("no catalog stored in Redis: run `python -m gateway seed-catalog`")
        if _text(digest) == self._digest:
            return None
        stored = await read_catalog(self._shards, deadline)
        if stored is None:
            raise CatalogError("the catalog was removed from Redis while being read")
        self._digest, data = stored
        return data


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`seed-catalog` flags; defaults come from Settings (BIDGW_REDIS_URL, BIDGW_CATALOG_PATH)."""
    parser.add_argument(
        "--redis-url", help="default: BIDGW_REDIS_URL (redis+cluster://host:port for a cluster)"
    )
    parser.add_argument("--file", type=Path, help="catalog .jsonl (default: BIDGW_CATALOG_PATH)")


def command(args: argparse.Namespace) -> int:
    """The `seed-catalog` command: validate, then write; 0 when written, 2 (one line on stderr) when not."""
    from gateway.config import Settings  # noqa: PLC0415 - settings are read when the command runs

    settings = Settings()
    url = args.redis_url or settings.redis_url
    path = args.file or settings.catalog_path

    try:
        data = Path(path).read_bytes()
        catalog = parse_catalog(data)
        report = run_on_shards(
            url, lambda shards: write_catalog(shards, catalog, data), socket_timeout_s=TIMEOUT_S
        )
    except OSError as exc:
        print(f"error: catalog file {path} is not readable: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except (CatalogError, StoreError, ValueError) as exc:
        print(f"error: {path}: {exc}" if isinstance(exc, CatalogError) else f"error: {exc}", file=sys.stderr)
        return 2
    log.info(
        "seeded catalog %s into %s: %d campaigns, %d creatives, %d bytes",
        report.version,
        url,
        report.campaigns,
        report.creatives,
        report.bytes,
    )
    return 0
