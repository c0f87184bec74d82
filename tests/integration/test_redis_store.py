"""The Redis feature store against a real redis-server: same rows as the embedded store, one round trip
(one script call) per bid, a local cache with single flight, and deadlines kept when Redis is down or
stalled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import hiredis
import numpy as np
import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection

from gateway.config import REPO_ROOT
from gateway.core.ports import AdKeys
from gateway.stores.campaigns import CampaignConfig, CampaignLedger
from gateway.stores.embedded import EmbeddedFeatureStore
from gateway.stores.redis_store import RedisFeatureStore
from gateway.stores.seed import seed_redis
from gateway.stores.shards import RedisShards, Script
from tests.integration.bid_requests import snapshot
from tests.integration.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]
SNAPSHOTS = REPO_ROOT / "data" / "snapshots"


class RecordingRedis(Redis):
    """A client whose connections record the keys each command carried (EVALSHA's KEYS, MGET's), decoded
    from the bytes actually sent, and send them over a slow network (5 ms) so concurrent bids overlap."""

    def __init__(self, url: str) -> None:
        self.mgets: list[list[str]] = []
        recorded = self.mgets

        class RecordingConnection(Connection):
            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                reader = hiredis.Reader()
                reader.feed(command if isinstance(command, bytes) else b"".join(command))
                while (args := reader.gets()) is not False:
                    name = bytes(args[0]).upper()
                    if name == b"EVALSHA":
                        recorded.append([k.decode() for k in args[3 : 3 + int(args[2])]])
                    elif name == b"MGET":
                        recorded.append([k.decode() for k in args[1:]])
                await asyncio.sleep(0.005)
                await super().send_packed_command(command, check_health)

        super().__init__(connection_pool=ConnectionPool.from_url(url, connection_class=RecordingConnection))


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def embedded() -> EmbeddedFeatureStore:
    return EmbeddedFeatureStore.load(SNAPSHOTS)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[RecordingRedis]:
    client = RecordingRedis(redis_server.url)
    await client.flushall()
    await seed_redis(RedisShards.standalone(client), SNAPSHOTS)
    client.mgets.clear()
    yield client
    await client.aclose()


def store_on(client: Redis, **options: Any) -> RedisFeatureStore:
    shards = RedisShards.standalone(client)
    return RedisFeatureStore(shards, CampaignLedger(shards), timeout_s=0.5, **options)


def keys_for(ads: Sequence[dict[str, Any]]) -> AdKeys:
    return AdKeys(
        ad_ids=[a["id"] for a in ads],
        campaign_ids=[a["campaign_id"] for a in ads],
        advertisers=[a["advertiser"] for a in ads],
        categories=[a["cat"] for a in ads],
    )


def unknown_ad(i: int) -> dict[str, Any]:
    return {"id": f"nobody-{i}", "campaign_id": f"nc-{i}", "advertiser": "x.example", "cat": "IAB3-1"}


async def test_seeded_rows_equal_the_embedded_store(
    client: RecordingRedis, embedded: EmbeddedFeatureStore
) -> None:
    store = store_on(client)
    ads = [*snapshot("ads")[:20], unknown_ad(1)]
    keys = keys_for(ads)
    for user_id in (snapshot("users")[3]["id"], "never-seen", None):
        found = await store.lookup(user_id, keys, time.monotonic() + 1)
        expected_user = embedded.lookup_user(user_id)
        np.testing.assert_array_equal(found.user.cat, expected_user.cat)
        np.testing.assert_array_equal(found.user.dense, expected_user.dense)
        assert found.user.known is expected_user.known
        expected_ads = embedded.lookup_ads(keys)
        np.testing.assert_array_equal(found.ads.cat, expected_ads.cat)
        np.testing.assert_array_equal(found.ads.dense, expected_ads.dense)
        np.testing.assert_array_equal(found.ads.known, expected_ads.known)
        assert not found.degraded
    # The FeatureStore methods (the embedded store's interface) answer the same.
    user = await store.user_features(snapshot("users")[3]["id"])
    assert user.known
    assert (await store.ad_features(keys)).known.tolist() == [True] * 20 + [False]


async def test_one_round_trip_per_bid_then_the_cache(client: RecordingRedis) -> None:
    store = store_on(client)
    ledger = store.ledger
    ads = snapshot("ads")[:50]
    await ledger.configure(ads[0]["campaign_id"], CampaignConfig(daily_budget_micros=10**9, freq_cap=3))
    user = snapshot("users")[0]["id"]
    found = await store.lookup(user, keys_for(ads), time.monotonic() + 1)
    [first] = client.mgets  # one script call
    campaigns = len({a["campaign_id"] for a in ads})
    # user row + 50 ad rows + per campaign: config, spend, two hold buckets, the user's impressions
    assert len(first) == 1 + 50 + campaigns * 5
    assert found.campaigns is not None
    assert found.campaigns.managed.tolist() == [a["campaign_id"] == ads[0]["campaign_id"] for a in ads]
    client.mgets.clear()
    await store.lookup(user, keys_for(ads), time.monotonic() + 1)
    [second] = client.mgets
    assert len(second) == 1 + campaigns * 4  # ads and configs came from the local cache
    assert store.stats.cache_hits == 50 + campaigns


async def test_concurrent_bids_share_one_fetch_of_a_cold_key(client: RecordingRedis) -> None:
    store = store_on(client)
    ads = snapshot("ads")[100:110]
    results = await asyncio.gather(
        *(store.lookup(None, keys_for(ads), time.monotonic() + 1) for _ in range(20))
    )
    assert all(r.ads.known.all() for r in results)
    fetched = [key for keys in client.mgets for key in keys if ":a:" in key]
    assert len(fetched) == len(set(fetched)) == 10  # each cold ad row read from Redis once
    assert len(client.mgets) == 20  # and still one round trip per bid (its campaign state)
    assert store.stats.failures == 0
    assert store.stats.shared_fetches == 19 * 20  # 19 bids x (10 ads + 10 configs) awaited the first


async def test_stalled_redis_keeps_the_deadline_and_serves_cached_ads(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    shards = RedisShards.standalone(client)
    await seed_redis(shards, SNAPSHOTS)
    store = RedisFeatureStore(shards, CampaignLedger(shards), timeout_s=0.02)
    ads = snapshot("ads")[:5]
    user = snapshot("users")[0]["id"]
    warm = await store.lookup(user, keys_for(ads), time.monotonic() + 1)
    assert warm.user.known
    redis_server.pause()
    try:
        started = time.monotonic()
        found = await store.lookup(user, keys_for(ads), time.monotonic() + 0.005)
        elapsed = time.monotonic() - started
    finally:
        redis_server.resume()
    assert elapsed < 0.05
    assert found.degraded
    assert found.campaigns is None
    assert not found.user.known  # the user row was not cached: defaults
    assert found.ads.known.all()  # the ads were: cached values
    np.testing.assert_array_equal(found.ads.cat, warm.ads.cat)
    assert store.stats.failures == 1
    recovered = await store.lookup(user, keys_for(ads), time.monotonic() + 1)
    assert recovered.user.known
    assert not recovered.degraded
    await client.aclose()


async def test_redis_down_at_start_and_back_later() -> None:
    server = RedisServer()
    store = RedisFeatureStore.connect(server.url, timeout_s=0.05)
    ads = snapshot("ads")[:3]
    started = time.monotonic()
    down = await store.lookup("u", keys_for(ads), time.monotonic() + 0.05)
    assert time.monotonic() - started < 0.1
    assert down.degraded
    assert not down.ads.known.any()
    with server:
        await seed_redis(store.shards, SNAPSHOTS)
        up = await store.lookup(snapshot("users")[0]["id"], keys_for(ads), time.monotonic() + 1)
        assert up.user.known
        assert up.ads.known.all()
        assert not up.degraded
    await store.aclose()


async def test_warm_up_loads_the_scripts_before_the_first_bid(redis_server: RedisServer) -> None:
    """A new worker's first bid must not pay connect + NOSCRIPT + SCRIPT LOAD inside its 10 ms budget."""
    store = RedisFeatureStore.connect(redis_server.url, timeout_s=0.05)
    shards = store.shards
    script = shards.register(Script("return 'warm'"))
    client = Redis.from_url(redis_server.url)
    await client.script_flush()
    assert await client.script_exists(script.sha) == [False]
    assert await shards.warm_up(attempts=3, pause_s=0.01)
    assert await client.script_exists(script.sha) == [True]
    assert all(shard.scripts_loaded for shard in shards.shards())
    await client.aclose()
    await store.aclose()


async def test_warm_up_gives_up_by_itself_while_redis_is_down() -> None:
    store = RedisFeatureStore.connect(RedisServer().url, timeout_s=0.05)  # never started
    started = time.monotonic()
    assert not await store.shards.warm_up(attempts=3, pause_s=0.05)
    assert time.monotonic() - started < 3.0
    await store.aclose()
