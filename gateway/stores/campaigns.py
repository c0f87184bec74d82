"""Campaign state in Redis: configurations, daily spend, bid reservations, frequency counters, win notices.

Money is integer micro-USD (INCRBY, exact sums). One impression at CPM price p costs p * 1000 micro-USD.

Keys (UTC days as YYYYMMDD; every replica computes the same names):
  bidgw:camp:<cid>:cfg                  CampaignConfig JSON (written by `seed-redis` or the operator)
  bidgw:camp:<cid>:spend:<day>          micro-USD won that day              (TTL SPEND_TTL_S)
  bidgw:camp:<cid>:resv:<bucket>        micro-USD held by open bids          (expires with its bucket)
  bidgw:camp:<cid>:imps:<day>:<user>    the user's impressions that day      (TTL FREQUENCY_TTL_S)
  bidgw:bid:<bid id>                    hash: campaign, user, day, price ... (TTL bid_ttl_s, then win_ttl_s)

Reservations leak nowhere: a bid that never wins leaves its hold in the time bucket of length bid_ttl_s
it was made in, and the bucket key expires two bucket lengths after the bucket began (a bid record lives
bid_ttl_s, so it always dies before its bucket key). Reading "open reservations" sums the current and the
previous bucket: a hold is counted for at most two bucket lengths, never forgotten while its bid may win.

Both writes are single Lua scripts, so replicas cannot race: `reserve` checks spend + open reservations +
price against the budget and the user's frequency cap and records the bid; `record_win` moves the hold into
spend, counts the impression and marks the bid won, once per bid id.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Final, TypeVar, cast

import msgspec
import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.core.pacing import MICROS_PER_USD, impression_cost_micros, utc_day
from gateway.core.ports import Reservation, ReserveOutcome
from gateway.errors import StoreError

__all__ = [
    "CampaignConfig",
    "CampaignLedger",
    "CampaignSpec",
    "WinOutcome",
    "WinResult",
    "redis_call",
    "usd_to_micros",
]

PREFIX: Final = "bidgw:camp"
BID_PREFIX: Final = "bidgw:bid"
SPEND_TTL_S: Final = 8 * 86_400  # a week of daily spend stays readable for reporting
FREQUENCY_TTL_S: Final = 2 * 86_400  # only today's counter is read; yesterday's lingers for late wins

_T = TypeVar("_T")
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class CampaignConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the gateway enforces for a campaign; stored as JSON at bidgw:camp:<cid>:cfg."""

    daily_budget_micros: NonNegative | None = None  # None: no budget limit
    freq_cap: NonNegative = 0  # impressions per user per UTC day; 0: no cap


class CampaignSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of a campaigns .jsonl file for `seed-redis`; the budget in USD for people."""

    campaign_id: Annotated[str, msgspec.Meta(min_length=1)]
    daily_budget_usd: Annotated[float, msgspec.Meta(ge=0)] | None = None
    freq_cap: NonNegative = 0

    def config(self) -> CampaignConfig:
        budget = None if self.daily_budget_usd is None else usd_to_micros(self.daily_budget_usd)
        return CampaignConfig(daily_budget_micros=budget, freq_cap=self.freq_cap)


def usd_to_micros(amount_usd: float) -> int:
    return int((Decimal(repr(float(amount_usd))) * MICROS_PER_USD).to_integral_value())


class WinOutcome(enum.Enum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"  # this bid id was already billed: nothing counted again
    UNKNOWN_BID = "unknown_bid"  # never returned by a gateway, or its record expired
    ABOVE_BID_PRICE = "above_bid_price"
    CURRENCY_MISMATCH = "currency_mismatch"


@dataclass(frozen=True, slots=True)
class WinResult:
    outcome: WinOutcome
    bid_id: str
    campaign_id: str | None = None
    cost_micros: int = 0  # what this notice charged (0 for anything but RECORDED)
    bid_price: float | None = None
    currency: str | None = None


# KEYS per reservation (6): cfg, spend today, hold bucket now, hold bucket before, user's impressions
# today (the cfg key again for an anonymous user: never written), bid record.
# ARGV: hold TTL (s), bid TTL (s), then per reservation (7): cost, campaign, user, day, price,
# currency, rate. Returns one ReserveOutcome per reservation.
_RESERVE_LUA: Final = """
local out = {}
local hold_ttl, bid_ttl = ARGV[1], ARGV[2]
for i = 0, #KEYS / 6 - 1 do
  local k, a = i * 6, 2 + i * 7
  local cost, user = tonumber(ARGV[a + 1]), ARGV[a + 3]
  local outcome, held = 1, '0'
  local raw = redis.call('GET', KEYS[k + 1])
  if raw then
    local cfg = cjson.decode(raw)
    local budget, cap = cfg['daily_budget_micros'], cfg['freq_cap']
    if type(budget) == 'number' then
      local committed = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
        + tonumber(redis.call('GET', KEYS[k + 3]) or '0') + tonumber(redis.call('GET', KEYS[k + 4]) or '0')
      if committed + cost > budget then outcome = 2 end
    end
    if outcome == 1 and user ~= '' and type(cap) == 'number' and cap > 0 then
      if tonumber(redis.call('GET', KEYS[k + 5]) or '0') >= cap then outcome = 3 end
    end
    if outcome == 1 then
      redis.call('INCRBY', KEYS[k + 3], cost)
      redis.call('EXPIRE', KEYS[k + 3], hold_ttl)
      held = '1'
    end
  end
  if outcome == 1 then
    redis.call('HSET', KEYS[k + 6], 'c', ARGV[a + 2], 'u', user, 'd', ARGV[a + 4], 'p', ARGV[a + 5],
      'cur', ARGV[a + 6], 'r', ARGV[a + 7], 'm', cost, 'h', held, 'hk', KEYS[k + 3], 'w', '0')
    redis.call('EXPIRE', KEYS[k + 6], bid_ttl)
  end
  out[#out + 1] = outcome
end
return out
"""

# KEYS: bid record, spend on the bid's day, the user's impressions that day (the record key again for an
# anonymous user), the hold bucket. ARGV: charge, dedupe TTL, spend TTL, impressions TTL, has user.
# Returns 1 recorded, 0 duplicate, -1 unknown (expired since the caller read it).
_WIN_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'w') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'w', '1', 'cm', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[5] == '1' then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
if redis.call('HGET', KEYS[1], 'h') == '1' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('DECRBY', KEYS[4], redis.call('HGET', KEYS[1], 'm'))
end
return 1
"""


def config_key(campaign_id: str) -> str:
    return f"{PREFIX}:{campaign_id}:cfg"


def spend_key(campaign_id: str, day: str) -> str:
    return f"{PREFIX}:{campaign_id}:spend:{day}"


def hold_key(campaign_id: str, bucket: int) -> str:
    return f"{PREFIX}:{campaign_id}:resv:{bucket}"


def impressions_key(campaign_id: str, day: str, user_key: str) -> str:
    return f"{PREFIX}:{campaign_id}:imps:{day}:{user_key}"


def bid_key(bid_id: str) -> str:
    return f"{BID_PREFIX}:{bid_id}"


_CONFIG_DECODER: Final = msgspec.json.Decoder(CampaignConfig)
_CONFIG_ENCODER: Final = msgspec.json.Encoder()


def decode_config(raw: bytes) -> CampaignConfig:
    """Raises msgspec.DecodeError for a value that is not a CampaignConfig."""
    return _CONFIG_DECODER.decode(raw)


def encode_config(config: CampaignConfig) -> bytes:
    return _CONFIG_ENCODER.encode(config)


def _int(raw: bytes | str | None) -> int:
    return 0 if raw is None else int(raw)


class CampaignLedger:
    """Budgets, holds, frequency counters and win notices over one Redis client (shared with the feature
    store, so a bid's state keys ride in the feature lookup's round trip).

    `clock` is wall time (epoch seconds) and decides the UTC day and the hold bucket; tests inject one.
    `timeout_s` caps every call, and a call never waits past the caller's `deadline` (time.monotonic)."""

    def __init__(
        self,
        client: Redis,
        *,
        bid_ttl_s: int = 300,
        win_ttl_s: int = 2 * 86_400,
        timeout_s: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if bid_ttl_s < 1 or win_ttl_s < bid_ttl_s:
            raise ValueError("bid_ttl_s must be >= 1 and win_ttl_s >= bid_ttl_s")
        self._client = client
        self._bid_ttl_s = bid_ttl_s
        self._win_ttl_s = win_ttl_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._reserve = client.register_script(_RESERVE_LUA)
        self._win = client.register_script(_WIN_LUA)

    # ------------------------------------------------------------------------------ the bid's read path

    def state_keys(self, campaign_ids: Sequence[str], user_key: str | None, now: float) -> list[str]:
        """The keys `states_from` decodes, per distinct campaign: spend today, the two open hold buckets,
        and (for a known user) the user's impressions today."""
        day, bucket = utc_day(now), self._bucket(now)
        keys: list[str] = []
        for cid in campaign_ids:
            keys += (spend_key(cid, day), hold_key(cid, bucket), hold_key(cid, bucket - 1))
            if user_key:
                keys.append(impressions_key(cid, day, user_key))
        return keys

    @staticmethod
    def states_from(
        values: Sequence[bytes | None], campaigns: int, has_user: bool
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(committed micro-USD, the user's impressions) per campaign, from `state_keys`' values."""
        width = 4 if has_user else 3
        numbers = np.fromiter(map(_int, values), dtype=np.int64, count=len(values)).reshape(campaigns, width)
        committed = numbers[:, 0] + numbers[:, 1] + numbers[:, 2]
        impressions = numbers[:, 3] if has_user else np.zeros(campaigns, dtype=np.int64)
        return committed, impressions

    # ------------------------------------------------------------------------------------------ writes

    async def reserve(self, reservations: Sequence[Reservation], deadline: float) -> list[ReserveOutcome]:
        """Hold each bid's cost against its campaign's budget (and check the user's cap), atomically, in
        one round trip. Unmanaged campaigns always get RESERVED (their bids are recorded for the win
        notice, nothing is held). Raises StoreError when Redis fails or the deadline passes."""
        if not reservations:
            return []
        now = self.clock()
        day, bucket = utc_day(now), self._bucket(now)
        keys: list[str] = []
        # Relative TTLs from the (injectable) clock: the bucket key lives until two buckets after its start.
        hold_ttl = math.ceil((bucket + 2) * self._bid_ttl_s - now)
        args: list[str | int | float] = [hold_ttl, self._bid_ttl_s]
        for r in reservations:
            config = config_key(r.campaign_id)
            keys += (
                config,
                spend_key(r.campaign_id, day),
                hold_key(r.campaign_id, bucket),
                hold_key(r.campaign_id, bucket - 1),
                impressions_key(r.campaign_id, day, r.user_key) if r.user_key else config,
                bid_key(r.bid_id),
            )
            args += (
                r.cost_micros,
                r.campaign_id,
                r.user_key or "",
                day,
                repr(r.price),
                r.currency,
                repr(r.rate),
            )
        result = await self._call(self._reserve(keys=keys, args=args), deadline, "reserve")
        return [ReserveOutcome(int(code)) for code in result]

    async def record_win(self, bid_id: str, price: float, currency: str | None, deadline: float) -> WinResult:
        """Bill a win notice: the clearing `price` (CPM, in the bid's response currency; `currency`, when
        given, must be that currency). Idempotent per bid id. Raises StoreError when Redis fails."""
        # The client never decodes responses (decode_responses=False): keys and values are bytes.
        record = cast(
            "dict[bytes, bytes]",
            await self._call(self._client.hgetall(bid_key(bid_id)), deadline, "read bid"),
        )
        if not record:
            return WinResult(WinOutcome.UNKNOWN_BID, bid_id)
        campaign_id = record[b"c"].decode()
        bid_currency = record[b"cur"].decode()
        bid_price = float(record[b"p"])
        found = WinResult(
            WinOutcome.DUPLICATE, bid_id, campaign_id, bid_price=bid_price, currency=bid_currency
        )
        if record.get(b"w") == b"1":
            return found
        if currency is not None and currency.upper() != bid_currency:
            return _replace(found, WinOutcome.CURRENCY_MISMATCH)
        if price > bid_price:
            return _replace(found, WinOutcome.ABOVE_BID_PRICE)
        # A clearing price at or under the bid price never charges more than the bid held.
        cost = min(impression_cost_micros(price / float(record[b"r"])), int(record[b"m"]))
        user = record[b"u"].decode()
        day = record[b"d"].decode()
        keys = [
            bid_key(bid_id),
            spend_key(campaign_id, day),
            impressions_key(campaign_id, day, user) if user else bid_key(bid_id),
            record[b"hk"].decode(),
        ]
        args = [cost, self._win_ttl_s, SPEND_TTL_S, FREQUENCY_TTL_S, "1" if user else "0"]
        code = int(await self._call(self._win(keys=keys, args=args), deadline, "record win"))
        if code < 0:
            return WinResult(WinOutcome.UNKNOWN_BID, bid_id)
        if code == 0:
            return found
        return WinResult(WinOutcome.RECORDED, bid_id, campaign_id, cost, bid_price, bid_currency)

    async def configure(self, campaign_id: str, config: CampaignConfig) -> None:
        await self._client.set(config_key(campaign_id), encode_config(config))

    async def spend_micros(self, campaign_id: str, day: str | None = None) -> int:
        """Recorded spend of a campaign on a UTC day (default today); reporting and tests."""
        raw = await self._client.get(spend_key(campaign_id, day or utc_day(self.clock())))
        return _int(raw)

    # ------------------------------------------------------------------------------------------ helpers

    def _bucket(self, now: float) -> int:
        return int(now // self._bid_ttl_s)

    async def _call(self, awaitable: Awaitable[_T], deadline: float, what: str) -> _T:
        return await redis_call(awaitable, min(deadline, time.monotonic() + self.timeout_s), what)


async def redis_call(awaitable: Awaitable[_T], deadline: float, what: str) -> _T:
    """Await one Redis command until `deadline` (time.monotonic); every failure becomes StoreError."""
    timeout = deadline - time.monotonic()
    if timeout <= 0:
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never started: nothing was sent
        raise StoreError(f"redis {what}: no time left in the request's budget")
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError as exc:
        raise StoreError(f"redis {what}: no answer within {timeout * 1000:.1f} ms") from exc
    except (RedisError, OSError) as exc:
        raise StoreError(f"redis {what} failed: {exc}") from exc


def _replace(result: WinResult, outcome: WinOutcome) -> WinResult:
    return WinResult(outcome, result.bid_id, result.campaign_id, 0, result.bid_price, result.currency)
