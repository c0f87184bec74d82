"""The catalog's Redis source against real Redis (one server, and a cluster): `seed-catalog` validates and
stores the file and the campaigns' budgets/caps; the reloader reads it back, polls cheaply, and swaps in a
re-seeded catalog; a broken file is refused with its line number and leaves Redis as it was."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from gateway.catalog.redis_catalog import DATA_KEY, DIGEST_KEY, VERSION_KEY, RedisCatalogSource
from gateway.catalog.reloader import CatalogHolder, CatalogReloader
from gateway.catalog.retrieval import CatalogRetriever
from gateway.config import REPO_ROOT
from gateway.errors import CatalogError
from gateway.stores.campaigns import CampaignConfig
from gateway.stores.keys import config_key
from gateway.stores.shards import RedisShards
from tests.integration.redis_cluster import RedisCluster
from tests.integration.redis_server import RedisServer
from tests.unit.catalog.builders import NOON_UTC, banner, campaign, jsonl, request

pytestmark = pytest.mark.integration

CATALOG_V1 = jsonl(
    campaign("c1", banner("a1"), bid=2.0, daily_budget_usd=12.5, freq_cap=3),
    campaign("c2", banner("b1"), bid=1.0),
    version="v1",
)
CATALOG_V2 = jsonl(campaign("c3", banner("c1-new"), bid=3.0), version="v2")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def seed(url: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "seed-catalog", "--redis-url", url, "--file", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "catalog.jsonl"
    path.write_bytes(data)
    return path


async def read_keys(url: str, *keys: str) -> list[bytes | None]:
    shards = RedisShards.from_url(url, socket_timeout_s=5.0, connect_timeout_s=2.0)
    try:
        await shards.discover(asyncio.get_running_loop().time() + 5)
        replies = []
        for key in keys:
            [reply] = await shards.execute(shards.shard_for_key(key), [("GET", key)], 1e12, "test read")
            replies.append(reply)
        return replies
    finally:
        await shards.aclose()


async def round_trip(url: str, tmp_path: Path) -> None:
    seeded = seed(url, write(tmp_path, CATALOG_V1))
    assert seeded.returncode == 0, seeded.stderr
    data, version, budget, unmanaged = await read_keys(
        url, DATA_KEY, VERSION_KEY, config_key("c1"), config_key("c2")
    )
    assert (data, version) == (CATALOG_V1, b"v1")
    assert msgspec.json.decode(budget or b"", type=CampaignConfig) == CampaignConfig(
        daily_budget_micros=12_500_000, freq_cap=3
    )
    assert msgspec.json.decode(unmanaged or b"", type=CampaignConfig) == CampaignConfig()

    shards = RedisShards.from_url(url, socket_timeout_s=5.0, connect_timeout_s=2.0)
    try:
        holder = CatalogHolder()
        reloader = CatalogReloader(holder, RedisCatalogSource(shards), interval_s=1.0)
        await reloader.load_initial()
        retriever = CatalogRetriever(holder)
        assert [c.id for c in retriever.retrieve(request(), NOON_UTC).candidates] == ["a1", "b1"]
        assert await reloader.reload_once() is False  # the digest is unchanged: the bytes are not read

        assert seed(url, write(tmp_path, CATALOG_V2)).returncode == 0
        assert await reloader.reload_once() is True
        got = retriever.retrieve(request(), NOON_UTC)
        assert ([c.id for c in got.candidates], got.catalog_version) == (["c1-new"], "v2")
    finally:
        await shards.aclose()


async def test_seed_read_back_and_reload_on_one_server(redis_server: RedisServer, tmp_path: Path) -> None:
    await round_trip(redis_server.url, tmp_path)


async def test_seed_then_read_back_on_a_cluster(tmp_path: Path) -> None:
    with RedisCluster(primaries=3, replicas=0) as cluster:
        await round_trip(cluster.url, tmp_path)


async def test_a_broken_file_is_refused_with_its_line_and_redis_is_untouched(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    assert seed(redis_server.url, write(tmp_path, CATALOG_V1)).returncode == 0
    broken = jsonl(campaign("c1"), campaign("c2", bid=0), version="v9")
    refused = seed(redis_server.url, write(tmp_path, broken))
    assert refused.returncode == 2
    assert "line 3: bid must be > 0.0" in refused.stderr
    [digest, version] = await read_keys(redis_server.url, DIGEST_KEY, VERSION_KEY)
    assert version == b"v1"
    assert digest is not None


async def test_an_empty_redis_has_no_catalog_to_load() -> None:
    with RedisServer() as empty:
        shards = RedisShards.from_url(empty.url, socket_timeout_s=5.0, connect_timeout_s=2.0)
        try:
            reloader = CatalogReloader(CatalogHolder(), RedisCatalogSource(shards), interval_s=1.0)
            with pytest.raises(CatalogError, match="seed-catalog"):
                await reloader.load_initial()
        finally:
            await shards.aclose()
