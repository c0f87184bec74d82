"""Campaign state on a real redis-server: holds and win notices, budgets under concurrency, frequency caps
across UTC days, and pacing over a compressed simulated day (injectable clock)."""

from __future__ import annotations

import asyncio
import calendar
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from gateway.core import pacing
from gateway.core.pacing import CampaignVerdict, PacingParams
from gateway.core.ports import AdKeys, Reservation, ReserveOutcome
from gateway.stores.campaigns import CampaignConfig, CampaignLedger, WinOutcome
from gateway.stores.keys import hold_key, new_bid_id, spend_key
from gateway.stores.redis_store import RedisFeatureStore
from gateway.stores.shards import RedisShards
from tests.integration.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

DAY_START = calendar.timegm((2025, 3, 1, 0, 0, 0))


@dataclass
class Clock:
    now: float = DAY_START + 9 * 3600.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    # Bounded like the gateway's own pool: concurrent callers wait for a connection instead of failing.
    client = Redis(connection_pool=BlockingConnectionPool.from_url(redis_server.url, max_connections=32))
    await client.flushall()
    yield client
    await client.aclose()


def ledger_on(client: Redis, **options: Any) -> CampaignLedger:
    return CampaignLedger(RedisShards.standalone(client), **options)


def store_on(ledger: CampaignLedger) -> RedisFeatureStore:
    return RedisFeatureStore(ledger.shards, ledger, timeout_s=0.5)


def soon() -> float:
    return time.monotonic() + 1.0


def reservation(
    campaign: str, price: float, user: str | None = "u1", currency: str = "USD", rate: float = 1.0
) -> Reservation:
    return Reservation(
        bid_id=new_bid_id(campaign),
        campaign_id=campaign,
        user_key=user,
        price=price,
        currency=currency,
        rate=rate,
        cost_micros=pacing.impression_cost_micros(price / rate),
    )


def one_ad(campaign: str) -> AdKeys:
    return AdKeys(
        ad_ids=[f"ad-{campaign}"], campaign_ids=[campaign], advertisers=["a.example"], categories=["IAB1"]
    )


async def test_a_win_moves_the_hold_into_spend_once(client: Redis) -> None:
    clock = Clock()
    ledger = ledger_on(client, clock=clock)
    store = store_on(ledger)
    await ledger.configure("c1", CampaignConfig(daily_budget_micros=1_000_000))
    bid = reservation("c1", 2.5)
    assert await ledger.reserve([bid], soon()) == [ReserveOutcome.RESERVED]
    state = (await store.lookup("u1", one_ad("c1"), soon())).campaigns
    assert state is not None
    assert state.committed_micros.tolist() == [2500]  # held, not yet spent

    won = await ledger.record_win(bid.bid_id, 2.0, None, soon())
    assert (won.outcome, won.cost_micros, won.campaign_id) == (WinOutcome.RECORDED, 2000, "c1")
    assert await ledger.spend_micros("c1") == 2000
    state = (await store.lookup("u1", one_ad("c1"), soon())).campaigns
    assert state is not None
    assert state.committed_micros.tolist() == [2000]  # the hold was released, the clearing price spent
    assert state.impressions.tolist() == [1]

    again = await ledger.record_win(bid.bid_id, 2.0, "USD", soon())
    assert again.outcome is WinOutcome.DUPLICATE
    assert await ledger.spend_micros("c1") == 2000
    assert (await ledger.record_win("no-such-bid", 1.0, None, soon())).outcome is WinOutcome.UNKNOWN_BID


async def test_win_notice_validation(client: Redis) -> None:
    ledger = ledger_on(client, clock=Clock())
    usd = reservation("c2", 2.0)
    eur = reservation("c2", 1.84, currency="EUR", rate=0.92)
    assert await ledger.reserve([usd, eur], soon()) == [ReserveOutcome.RESERVED] * 2  # unmanaged: recorded
    assert (await ledger.record_win(usd.bid_id, 2.01, None, soon())).outcome is WinOutcome.ABOVE_BID_PRICE
    assert (await ledger.record_win(eur.bid_id, 0.92, "USD", soon())).outcome is WinOutcome.CURRENCY_MISMATCH
    won = await ledger.record_win(eur.bid_id, 0.92, "eur", soon())
    assert (won.outcome, won.cost_micros) == (WinOutcome.RECORDED, 1000)  # 0.92 EUR CPM = 1 USD CPM
    assert await ledger.spend_micros("c2") == 1000


async def test_an_expired_bid_is_unknown(client: Redis) -> None:
    ledger = ledger_on(client, bid_ttl_s=1, win_ttl_s=1, clock=Clock())
    bid = reservation("c3", 1.0)
    await ledger.reserve([bid], soon())
    await asyncio.sleep(1.2)
    assert (await ledger.record_win(bid.bid_id, 1.0, None, soon())).outcome is WinOutcome.UNKNOWN_BID


async def test_holds_of_bids_that_never_win_expire_with_their_bucket(client: Redis) -> None:
    clock = Clock()
    ledger = ledger_on(client, bid_ttl_s=300, clock=clock)
    store = store_on(ledger)
    await ledger.configure("c4", CampaignConfig(daily_budget_micros=10_000))
    assert await ledger.reserve([reservation("c4", 6.0)], soon()) == [ReserveOutcome.RESERVED]
    assert await ledger.reserve([reservation("c4", 6.0)], soon()) == [ReserveOutcome.BUDGET_EXHAUSTED]
    clock.now += 300  # next bucket: the hold is still open (the bid could still win)
    state = (await store.lookup(None, one_ad("c4"), soon())).campaigns
    assert state is not None
    assert state.committed_micros.tolist() == [6000]
    clock.now += 300  # two buckets on: the bid's record is long gone, and so is its hold
    state = (await store.lookup(None, one_ad("c4"), soon())).campaigns
    assert state is not None
    assert state.committed_micros.tolist() == [0]
    assert await ledger.reserve([reservation("c4", 6.0)], soon()) == [ReserveOutcome.RESERVED]
    ttl = await client.ttl(hold_key("c4", int(clock.now // 300)))
    assert 0 < ttl <= 600  # the key itself expires too: nothing leaks


async def test_a_small_budget_is_never_overspent_under_concurrent_bids(client: Redis) -> None:
    # About correctness, not latency: 300 concurrent holds on a busy CI box can outlast the 50 ms default.
    ledger = ledger_on(client, clock=Clock(), timeout_s=1.0)
    budget = 50_000
    await ledger.configure("c5", CampaignConfig(daily_budget_micros=budget))
    rng = random.Random(5)
    bids = [reservation("c5", round(rng.uniform(0.5, 3.0), 3), user=f"u{i}") for i in range(300)]
    outcomes = await asyncio.gather(*(ledger.reserve([b], soon()) for b in bids))
    reserved = [b for b, [outcome] in zip(bids, outcomes, strict=True) if outcome is ReserveOutcome.RESERVED]
    assert sum(b.cost_micros for b in reserved) <= budget
    assert sum(b.cost_micros for b in reserved) > budget - 3000  # it did fill up to within one bid
    wins = await asyncio.gather(*(ledger.record_win(b.bid_id, b.price, None, soon()) for b in reserved))
    assert all(w.outcome is WinOutcome.RECORDED for w in wins)
    assert await ledger.spend_micros("c5") == sum(b.cost_micros for b in reserved) <= budget


async def test_frequency_cap_per_user_per_day_resets_at_utc_midnight(client: Redis) -> None:
    clock = Clock(now=DAY_START + 23 * 3600 + 3000)  # 23:50 UTC
    ledger = ledger_on(client, clock=clock)
    store = store_on(ledger)
    await ledger.configure("c6", CampaignConfig(freq_cap=2))
    for _ in range(2):
        bid = reservation("c6", 1.0, user="alice")
        assert await ledger.reserve([bid], soon()) == [ReserveOutcome.RESERVED]
        assert (await ledger.record_win(bid.bid_id, 1.0, None, soon())).outcome is WinOutcome.RECORDED

    async def verdict(user: str) -> CampaignVerdict:
        states = (await store.lookup(user, one_ad("c6"), soon())).campaigns
        assert states is not None
        rng = np.random.default_rng(0)
        return CampaignVerdict(pacing.campaign_verdicts(states, ["c6"], PacingParams(), rng)[0])

    async def hold(user: str) -> list[ReserveOutcome]:
        return await ledger.reserve([reservation("c6", 1.0, user=user)], soon())

    assert await verdict("alice") is CampaignVerdict.FREQUENCY_CAPPED
    assert await verdict("bob") is CampaignVerdict.PASS
    assert await hold("alice") == [ReserveOutcome.FREQUENCY_CAPPED]

    clock.now += 900  # 00:05 UTC the next day
    assert await verdict("alice") is CampaignVerdict.PASS
    assert await hold("alice") == [ReserveOutcome.RESERVED]


async def simulate_day(client: Redis, campaign: str, params: PacingParams, seed: int) -> list[int]:
    """A compressed day: a bid opportunity every 15 simulated seconds (5,760), each won at CPM 1.000 when
    the campaign passes its rules; 12x more traffic than the budget buys. Returns spend per UTC hour."""
    clock = Clock(now=float(DAY_START))
    ledger = ledger_on(client, clock=clock)
    store = store_on(ledger)
    budget = 480_000  # 480 impressions at 1,000 micro-USD
    await ledger.configure(campaign, CampaignConfig(daily_budget_micros=budget))
    rng = np.random.default_rng(seed)
    hourly = [0] * 24
    keys = one_ad(campaign)
    for step in range(5760):
        clock.now = DAY_START + step * 15.0
        states = (await store.lookup(None, keys, soon())).campaigns
        assert states is not None
        if pacing.campaign_verdicts(states, keys.campaign_ids, params, rng)[0] != CampaignVerdict.PASS:
            continue
        bid = reservation(campaign, 1.0, user=None)
        if await ledger.reserve([bid], soon()) == [ReserveOutcome.RESERVED]:
            won = await ledger.record_win(bid.bid_id, 1.0, None, soon())
            hourly[step // 240] += won.cost_micros
    assert sum(hourly) == int(await client.get(spend_key(campaign, pacing.utc_day(DAY_START))) or 0)
    return hourly


@pytest.mark.slow
async def test_pacing_spreads_a_day_of_spend_instead_of_burning_it_first(client: Redis) -> None:
    budget, per_hour = 480_000, 20_000
    paced = await simulate_day(client, "paced", PacingParams(horizon_s=900), seed=1)
    unpaced = await simulate_day(client, "unpaced", PacingParams(horizon_s=0), seed=1)
    print(f"MEASURED: pacing curve, spend per UTC hour (micro-USD; plan {per_hour}/h): {paced}")
    print(f"MEASURED: without pacing: {unpaced}")
    assert sum(unpaced[:2]) == budget  # unpaced, the budget is gone by 02:00
    assert budget * 0.97 <= sum(paced) <= budget
    assert paced[0] <= 2 * per_hour  # not burned in the first hour
    assert all(0.5 * per_hour <= spend <= 1.6 * per_hour for spend in paced), paced
