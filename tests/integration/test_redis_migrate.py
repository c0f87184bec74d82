"""`python -m gateway migrate-redis` on a populated real redis-server: the old layout (written here key by
key, as the gateway before hash tags wrote it) moves to the new one without losing a micro-USD of the
day's spend, twice in a row gives the same state, and bids made before the migration still bill once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.config import REPO_ROOT
from gateway.core.pacing import utc_day
from gateway.core.ports import AdKeys
from gateway.stores import keys
from gateway.stores.campaigns import CampaignLedger, WinOutcome
from gateway.stores.redis_store import RedisFeatureStore
from gateway.stores.seed import seed_redis
from gateway.stores.shards import RedisShards
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration
SNAPSHOTS = REPO_ROOT / "data" / "snapshots"
BID_TTL_S = 300
HOUR = 3600
DAY = 86_400


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def migrate(url: str) -> str:
    command = [sys.executable, "-m", "gateway", "migrate-redis", "--redis-url", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def populate_old_layout(url: str, now: float) -> dict[str, Any]:
    """What a fleet of the previous version leaves in Redis mid-day, written as it wrote it."""
    day, bucket = utc_day(now), int(now // BID_TTL_S)

    async def job() -> dict[str, Any]:
        client = Redis.from_url(url)
        try:
            await seed_redis(RedisShards.standalone(client), SNAPSHOTS)  # a populated instance: features too
            old = "bidgw:camp"
            await client.set(f"{old}:c1:cfg", json.dumps({"daily_budget_micros": 1_000_000, "freq_cap": 3}))
            await client.set(
                f"{old}:c:2:cfg", json.dumps({"daily_budget_micros": 50_000})
            )  # a colon in the id
            await client.set(f"{old}:c1:spend:{day}", 5_000, ex=8 * DAY)
            await client.set(f"{old}:c:2:spend:{day}", 12_345, ex=8 * DAY)
            await client.set(f"{old}:c1:resv:{bucket}", 2_000, ex=2 * BID_TTL_S)
            await client.set(f"{old}:c1:imps:{day}:alice", 2, ex=2 * DAY)
            await client.set(f"{old}:c1:imps:{day}:user:with:colons", 1, ex=2 * DAY)
            record: dict[Any, Any] = {
                "c": "c1",
                "u": "alice",
                "d": day,
                "p": "2.0",
                "cur": "USD",
                "r": "1.0",
                "m": "2000",
            }
            hold = f"{old}:c1:resv:{bucket}"
            await client.hset("bidgw:bid:" + "a" * 32, mapping={**record, "h": "1", "hk": hold, "w": "0"})
            await client.expire("bidgw:bid:" + "a" * 32, BID_TTL_S)
            await client.hset("bidgw:bid:" + "b" * 32, mapping={**record, "h": "0", "hk": hold, "w": "1"})
            await client.expire("bidgw:bid:" + "b" * 32, 2 * DAY)
            # A gateway of the new version already recorded spend under the new layout today.
            await client.set(keys.spend_key("c1", day), 700, ex=8 * DAY)
            return {"day": day, "keys": await client.dbsize()}
        finally:
            await client.aclose()

    return asyncio.run(job())


def snapshot_state(url: str) -> dict[str, Any]:
    async def job() -> dict[str, Any]:
        client = Redis.from_url(url, decode_responses=True)
        try:
            names = sorted(
                [k async for k in client.scan_iter(match="bidgw:*") if not k.startswith("bidgw:f:")]
            )
            return {name: await client.dump(name) for name in names}
        finally:
            await client.aclose()

    return asyncio.run(job())


def test_migration_moves_the_old_layout_once_and_keeps_the_days_spend(redis_server: RedisServer) -> None:
    now = time.time()
    populated = populate_old_layout(redis_server.url, now)
    day = populated["day"]

    first = migrate(redis_server.url)
    assert "moved 9 keys" in first, first
    assert "(17345 micro-USD)" in first  # 5,000 + 12,345 of old spend moved
    state = snapshot_state(redis_server.url)
    assert not [k for k in state if k.startswith(("bidgw:camp:", "bidgw:bid:"))], "old keys left behind"
    second = migrate(redis_server.url)  # idempotent: nothing left to move, nothing changes
    assert "moved 0 keys" in second, second
    assert snapshot_state(redis_server.url) == state

    async def after() -> None:
        client = Redis.from_url(redis_server.url)
        shards = RedisShards.standalone(client)
        ledger = CampaignLedger(shards, bid_ttl_s=BID_TTL_S, clock=lambda: now)
        store = RedisFeatureStore(shards, ledger, timeout_s=1.0)
        try:
            # 9 old keys moved: 8 new keys (c1's spend merged into the one there) and 2 bid tags.
            assert await client.dbsize() == populated["keys"] - 9 + 8 + 2
            # The day's spend: the old layout's, added to what the new version had already recorded.
            assert await ledger.spend_micros("c1", day) == 5_700
            assert await ledger.spend_micros("c:2", day) == 12_345
            assert 7 * DAY < await client.ttl(keys.spend_key("c1", day)) <= 8 * DAY
            ads = AdKeys(
                ad_ids=["x", "y"], campaign_ids=["c1", "c:2"], advertisers=["a", "b"], categories=["", ""]
            )
            found = await store.lookup("alice", ads, time.monotonic() + 1)
            assert found.campaigns is not None
            assert found.campaigns.managed.tolist() == [True, True]
            assert found.campaigns.budget_micros.tolist() == [1_000_000, 50_000]
            assert found.campaigns.committed_micros.tolist() == [5_700 + 2_000, 12_345]  # spend + the hold
            assert found.campaigns.impressions.tolist() == [2, 0]
            assert found.campaigns.freq_cap.tolist() == [3, 0]
            # Bids made before the migration: the open one bills once (its hold released), the won one
            # answers duplicate.
            won = await ledger.record_win("a" * 32, 1.5, None, time.monotonic() + 1)
            assert (won.outcome, won.cost_micros, won.campaign_id) == (WinOutcome.RECORDED, 1_500, "c1")
            again = await ledger.record_win("a" * 32, 1.5, None, time.monotonic() + 1)
            assert again.outcome is WinOutcome.DUPLICATE
            billed = await ledger.record_win("b" * 32, 1.5, None, time.monotonic() + 1)
            assert billed.outcome is WinOutcome.DUPLICATE
            assert await ledger.spend_micros("c1", day) == 7_200
            found = await store.lookup("alice", ads, time.monotonic() + 1)
            assert found.campaigns is not None
            assert found.campaigns.committed_micros.tolist() == [7_200, 12_345]  # the hold became spend
            assert found.campaigns.impressions.tolist() == [3, 0]
        finally:
            await client.aclose()

    asyncio.run(after())


def test_migration_refuses_a_cluster_and_a_bad_url() -> None:
    for url, says in (
        ("redis+cluster://127.0.0.1:1", "runs on the one server"),
        ("http://127.0.0.1:1", "scheme must be"),
    ):
        command = [sys.executable, "-m", "gateway", "migrate-redis", "--redis-url", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2
        assert says in done.stderr
        assert "Traceback" not in done.stderr
