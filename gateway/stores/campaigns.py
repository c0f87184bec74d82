"""Campaign state in Redis: configurations, daily spend, bid reservations, frequency counters, win notices.

Money is integer micro-USD (INCRBY, exact sums). One impression at CPM price p costs p * 1000 micro-USD.
Key names and hash tags: `gateway.stores.keys` (every key of a campaign, and its bid records, in one slot).

Reservations leak nowhere: a bid that never wins leaves its hold in the time bucket of length bid_ttl_s
it was made in, and the bucket key expires two bucket lengths after the bucket began (a bid record lives
bid_ttl_s, so it always dies before its bucket key). Reading "open reservations" sums the current and the
previous bucket: a hold is counted for at most two bucket lengths, never forgotten while its bid may win.

Every write is a Lua script over one campaign slot, so replicas cannot race: `reserve` checks spend + open
reservations + price against the budget and the user's frequency cap and records the bid (one script per
slot, all slots of a response at once, each on its own shard); `record_win` moves the hold into spend,
counts the impression and marks the bid won, once per bid id; `record_loss` marks it lost with the
exchange's reason code and releases the hold of a bid that never won, once per bid id. The bid's read
(`read_command`) is a script too, one call per shard: per campaign it answers committed micro-USD and the
user's impressions, packed, not the raw keys.

With `win_replicas` > 0 a win is acknowledged only once WAIT says that many replicas have it (capped at the
live replicas the slot map lists for the shard: a primary promoted a moment ago has none until a replica
rejoins): a primary that dies right after answering cannot take an acknowledged notice with it
(replication is asynchronous). When the replicas do not confirm in time the notice gets StoreError (503);
the exchange's retry then finds the bid won and answers duplicate, so nothing is billed twice either way.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Final, cast

import msgspec
import numpy as np
import numpy.typing as npt
from redis.exceptions import ResponseError

from gateway.core.pacing import MICROS_PER_USD, impression_cost_micros, utc_day
from gateway.core.ports import Reservation, ReserveOutcome
from gateway.errors import StoreError
from gateway.stores import keys
from gateway.stores.attribution import ModelAttribution, attribution_of
from gateway.stores.keys import bid_key, config_key, hold_key, impressions_key, spend_key
from gateway.stores.shards import Command, RedisShards, Script, Shard

__all__ = [
    "FREQUENCY_TTL_S",
    "SPEND_TTL_S",
    "CampaignConfig",
    "CampaignLedger",
    "CampaignSpec",
    "LossOutcome",
    "LossResult",
    "WinOutcome",
    "WinResult",
    "decode_config",
    "encode_config",
    "usd_to_micros",
]

_RETRY_PAUSE_S: Final = 0.05  # between tries of a win notice's call while a cluster fails over
SPEND_TTL_S: Final = 8 * 86_400  # a week of daily spend stays readable for reporting
FREQUENCY_TTL_S: Final = 2 * 86_400  # only today's counter is read; yesterday's lingers for late wins

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class CampaignConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the gateway enforces for a campaign; stored as JSON at its `cfg` key."""

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


class LossOutcome(enum.Enum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"  # a loss was already recorded for this bid id
    ALREADY_WON = "already_won"  # the bid was billed: a loss notice cannot undo that
    UNKNOWN_BID = "unknown_bid"


@dataclass(frozen=True, slots=True)
class LossResult:
    outcome: LossOutcome
    bid_id: str
    campaign_id: str | None = None
    released_micros: int = 0  # the budget hold this notice released (0 unless RECORDED)


@dataclass(frozen=True, slots=True)
class WinResult:
    outcome: WinOutcome
    bid_id: str
    campaign_id: str | None = None
    cost_micros: int = 0  # what this notice charged (0 for anything but RECORDED)
    bid_price: float | None = None
    currency: str | None = None
    attribution: ModelAttribution | None = None  # RECORDED only: what calibration counts the impression as


# One server. KEYS: `n` raw keys (returned as stored: feature rows, configs), then `width` state keys per
# campaign: spend today, hold bucket now, hold bucket before, and (width 4, a known user) the user's
# impressions today. ARGV: n, width. Returns the n raw values, then one string of little-endian int64
# pairs per campaign: committed micro-USD (spend + both holds) and the user's impressions. Summed here,
# packed: the gateway parses one bulk string instead of 3-4 replies per campaign.
_READ_LUA: Final = """
local n, width = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
if n > 0 then
  local raw = redis.call('MGET', unpack(KEYS, 1, n))
  for i = 1, n do out[i] = raw[i] end
end
local packed = {}
if #KEYS > n then
  local v = redis.call('MGET', unpack(KEYS, n + 1, #KEYS))
  for k = 1, #v, width do
    local committed = (tonumber(v[k]) or 0) + (tonumber(v[k + 1]) or 0) + (tonumber(v[k + 2]) or 0)
    local seen = 0
    if width == 4 then seen = tonumber(v[k + 3]) or 0 end
    packed[#packed + 1] = struct.pack('<i8i8', committed, seen)
  end
end
out[n + 1] = table.concat(packed)
return out
"""

# A cluster shard: the same read and reply for every key this shard serves, whatever their slots, in one
# call (allow-cross-slot-keys: Redis 7). A script's declared KEYS must share one slot, so KEYS[1] is one
# key of the shard, there for routing only (a node that no longer serves its slot answers MOVED), and the
# keys to read come in ARGV: n, width, the n raw keys, then `width` state keys per campaign. Raw keys are
# read one by one (each may be in its own slot); a campaign's state keys share its slot: one MGET each.
# A key this node does not serve (a slot moved since the caller's map) fails the call: the caller's
# failure path, and a slot map refresh.
_CLUSTER_READ_LUA: Final = """#!lua flags=allow-cross-slot-keys,no-writes
local n, width = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, n do out[i] = redis.call('GET', ARGV[2 + i]) end
local packed = {}
for k = 3 + n, #ARGV, width do
  local v = redis.call('MGET', unpack(ARGV, k, k + width - 1))
  local committed = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0) + (tonumber(v[3]) or 0)
  local seen = 0
  if width == 4 then seen = tonumber(v[4]) or 0 end
  packed[#packed + 1] = struct.pack('<i8i8', committed, seen)
end
out[n + 1] = table.concat(packed)
return out
"""

# KEYS per reservation (6): cfg, spend today, hold bucket now, hold bucket before, user's impressions
# today (the cfg key again for an anonymous user: never written), bid record.
# ARGV: hold TTL (s), bid TTL (s), then per reservation (12): cost, campaign, user, day, price,
# currency, rate, and the model attribution clicks and conversions are joined to (model version, arm,
# pCTR, pCVR, bid type; gateway.stores.feedback). Returns one ReserveOutcome per reservation.
_RESERVE_LUA: Final = """
local out = {}
local hold_ttl, bid_ttl = ARGV[1], ARGV[2]
for i = 0, #KEYS / 6 - 1 do
  local k, a = i * 6, 2 + i * 12
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
      'cur', ARGV[a + 6], 'r', ARGV[a + 7], 'm', cost, 'h', held, 'hk', KEYS[k + 3], 'w', '0',
      'mv', ARGV[a + 8], 'ar', ARGV[a + 9], 'pc', ARGV[a + 10], 'pv', ARGV[a + 11], 'bt', ARGV[a + 12])
    redis.call('EXPIRE', KEYS[k + 6], bid_ttl)
  end
  out[#out + 1] = outcome
end
return out
"""

# KEYS: bid record, spend on the bid's day, the user's impressions that day (the record key again for an
# anonymous user), the hold bucket. ARGV: charge, dedupe TTL, spend TTL, impressions TTL, has user, shadow
# seen ('1': the caller counted the impression for the shadow version too, so its clicks count there).
# Returns 1 recorded, 0 duplicate, -1 unknown (expired since the caller read it).
_WIN_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'w') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'w', '1', 'cm', ARGV[1])
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'ws', '1') end
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

# KEYS: bid record, its hold bucket. ARGV: loss reason, dedupe TTL. Returns {code, released micro-USD}:
# 1 recorded, 0 duplicate (a loss already recorded), 2 already won (nothing changes: the win billed it),
# -1 unknown. A hold still open is released and the record's `h` cleared, so a (contradictory) win notice
# after the loss bills without releasing the hold a second time.
_LOSS_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
if redis.call('HEXISTS', KEYS[1], 'l') == 1 then return {0, 0} end
if redis.call('HGET', KEYS[1], 'w') == '1' then return {2, 0} end
local released = 0
if redis.call('HGET', KEYS[1], 'h') == '1' then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    released = tonumber(redis.call('HGET', KEYS[1], 'm'))
    redis.call('DECRBY', KEYS[2], released)
  end
  redis.call('HSET', KEYS[1], 'h', '0')
end
redis.call('HSET', KEYS[1], 'l', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {1, released}
"""

READ_SCRIPT: Final = Script(_READ_LUA)
CLUSTER_READ_SCRIPT: Final = Script(_CLUSTER_READ_LUA)
RESERVE_SCRIPT: Final = Script(_RESERVE_LUA)
WIN_SCRIPT: Final = Script(_WIN_LUA)
LOSS_SCRIPT: Final = Script(_LOSS_LUA)

_CONFIG_DECODER: Final = msgspec.json.Decoder(CampaignConfig)
_CONFIG_ENCODER: Final = msgspec.json.Encoder()
_STATE: Final = np.dtype("<i8")


def decode_config(raw: bytes) -> CampaignConfig:
    """Raises msgspec.DecodeError for a value that is not a CampaignConfig."""
    return _CONFIG_DECODER.decode(raw)


def encode_config(config: CampaignConfig) -> bytes:
    return _CONFIG_ENCODER.encode(config)


@lru_cache(maxsize=65_536)
def campaign_slot(campaign_id: str) -> int:
    """The cluster slot of every key of the campaign (cached: computed per candidate campaign per bid)."""
    return RedisShards.slot(config_key(campaign_id))


def _int(raw: bytes | str | None) -> int:
    return 0 if raw is None else int(raw)


def _hash(reply: Any) -> dict[bytes, bytes]:
    """An HGETALL reply, raw: a map (RESP3) or [field, value, ...] (RESP2), bytes either way."""
    if isinstance(reply, dict):
        return cast("dict[bytes, bytes]", reply)
    pairs = cast("list[bytes]", reply)
    return dict(zip(pairs[::2], pairs[1::2], strict=True))


def _failed(results: list[Any] | StoreError) -> StoreError | None:
    if isinstance(results, StoreError):
        return results
    error = next((r for r in results if isinstance(r, ResponseError)), None)
    return None if error is None else StoreError(f"redis refused a command: {error}")


class CampaignLedger:
    """Budgets, holds, frequency counters and win notices over Redis shards (shared with the feature
    store, so a bid's state read rides in the feature lookup's round trip per shard).

    `clock` is wall time (epoch seconds) and decides the UTC day and the hold bucket; tests inject one.
    `timeout_s` caps every call, and a call never waits past the caller's `deadline` (time.monotonic)."""

    def __init__(
        self,
        shards: RedisShards,
        *,
        bid_ttl_s: int = 300,
        win_ttl_s: int = 2 * 86_400,
        timeout_s: float = 0.05,
        win_replicas: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if bid_ttl_s < 1 or win_ttl_s < bid_ttl_s:
            raise ValueError("bid_ttl_s must be >= 1 and win_ttl_s >= bid_ttl_s")
        if win_replicas < 0:
            raise ValueError("win_replicas must be >= 0")
        self.shards = shards
        self._bid_ttl_s = bid_ttl_s
        self._win_ttl_s = win_ttl_s
        self._win_replicas = win_replicas
        self.timeout_s = timeout_s
        self.clock = clock
        # Per campaign, the state key names of the current (day, hold bucket): built once per bucket
        # (bid_ttl_s), not per bid; cleared with each new bucket, so bounded by the campaigns of one bucket.
        self._names: dict[str, tuple[str, str, str, str]] = {}
        self._names_period: tuple[str, int] | None = None
        for script in (READ_SCRIPT, CLUSTER_READ_SCRIPT, RESERVE_SCRIPT, WIN_SCRIPT, LOSS_SCRIPT):
            shards.register(script)

    @staticmethod
    def new_bid_id(campaign_id: str, *, signed_notices_only: bool = False) -> str:
        """A bid id that names its campaign's slot, so its win notice finds the record (keys.new_bid_id)."""
        return keys.new_bid_id(campaign_id, signed_notices_only=signed_notices_only)

    # ------------------------------------------------------------------------------ the bid's read path

    def read_command(
        self, raw_keys: Sequence[str], campaign_ids: Sequence[str], user_key: str | None, now: float
    ) -> Command:
        """One script call: the raw values of `raw_keys`, then the state of each campaign (`read_state`).
        In a cluster every key must be served by the shard the command goes to: callers group by shard."""
        day, bucket = utc_day(now), self._bucket(now)
        if self._names_period != (day, bucket):  # a new day or hold bucket: new key names
            self._names.clear()
            self._names_period = (day, bucket)
        cache = self._names
        state: list[str] = []
        for cid in campaign_ids:
            names = cache.get(cid)
            if names is None:
                prefix = keys.campaign_prefix(cid)
                names = cache[cid] = (
                    f"{prefix}spend:{day}",
                    f"{prefix}resv:{bucket}",
                    f"{prefix}resv:{bucket - 1}",
                    f"{prefix}imps:{day}:",
                )
            state += names[:3]
            if user_key:
                state.append(names[3] + user_key)
        width = 4 if user_key else 3
        if self.shards.cluster:
            anchor = raw_keys[0] if raw_keys else state[0]
            return CLUSTER_READ_SCRIPT.command([anchor], (len(raw_keys), width, *raw_keys, *state))
        return READ_SCRIPT.command([*raw_keys, *state], (len(raw_keys), width))

    @staticmethod
    def read_state(packed: bytes, campaigns: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(committed micro-USD, the user's impressions) per campaign, from the read script's last value.
        ValueError when the reply does not hold exactly `campaigns` pairs."""
        numbers = np.frombuffer(packed, dtype=_STATE)
        if len(numbers) != 2 * campaigns:
            raise ValueError(f"campaign state for {len(numbers) // 2} campaigns, expected {campaigns}")
        pairs = numbers.reshape(campaigns, 2).astype(np.int64)
        return pairs[:, 0], pairs[:, 1]

    # ------------------------------------------------------------------------------------------ writes

    async def reserve(self, reservations: Sequence[Reservation], deadline: float) -> list[ReserveOutcome]:
        """Hold each bid's cost against its campaign's budget (and check the user's cap), atomically per
        campaign slot, one script per slot, every shard at once. Unmanaged campaigns always get RESERVED
        (their bids are recorded for the win notice, nothing is held). Raises StoreError when a shard
        fails or the deadline passes (holds made on the other shards stand: their bids bill normally)."""
        if not reservations:
            return []
        deadline = min(deadline, time.monotonic() + self.timeout_s)
        await self.shards.discover(deadline)
        now = self.clock()
        day, bucket = utc_day(now), self._bucket(now)
        # Relative TTLs from the (injectable) clock: the bucket key lives until two buckets after its start.
        hold_ttl = math.ceil((bucket + 2) * self._bid_ttl_s - now)
        by_slot: dict[int, list[int]] = {}
        for i, r in enumerate(reservations):
            by_slot.setdefault(campaign_slot(r.campaign_id) if self.shards.cluster else 0, []).append(i)
        groups: dict[Shard, list[Command]] = {}
        members: dict[Shard, list[list[int]]] = {}
        for slot, indices in by_slot.items():
            shard = self.shards.shard_for_slot(slot)
            groups.setdefault(shard, []).append(
                self._reserve_command([reservations[i] for i in indices], day, bucket, hold_ttl)
            )
            members.setdefault(shard, []).append(indices)
        outcomes: list[ReserveOutcome | None] = [None] * len(reservations)
        failure: StoreError | None = None
        for shard, results in await self.shards.execute_many(groups, deadline, "reserve"):
            failure = _failed(results) or failure
            if isinstance(results, StoreError):
                continue
            for indices, codes in zip(members[shard], results, strict=True):
                if not isinstance(codes, ResponseError):
                    for i, code in zip(indices, codes, strict=True):
                        outcomes[i] = ReserveOutcome(int(code))
        if failure is not None:
            raise failure
        return [outcome for outcome in outcomes if outcome is not None]

    def _reserve_command(
        self, reservations: Sequence[Reservation], day: str, bucket: int, hold_ttl: int
    ) -> Command:
        script_keys: list[str] = []
        args: list[str | int | float] = [hold_ttl, self._bid_ttl_s]
        for r in reservations:
            config = config_key(r.campaign_id)
            tag = keys.campaign_tag(r.campaign_id)
            if keys.bid_tag(r.bid_id) != tag:
                # Its win notice would look for the record in another slot and never find it.
                raise ValueError(f"bid id {r.bid_id!r} was not made by new_bid_id({r.campaign_id!r})")
            script_keys += (
                config,
                spend_key(r.campaign_id, day),
                hold_key(r.campaign_id, bucket),
                hold_key(r.campaign_id, bucket - 1),
                impressions_key(r.campaign_id, day, r.user_key) if r.user_key else config,
                bid_key(tag, r.bid_id),
            )
            args += (
                r.cost_micros,
                r.campaign_id,
                r.user_key or "",
                day,
                repr(r.price),
                r.currency,
                repr(r.rate),
                r.model_version,
                r.arm,
                repr(r.pctr),
                repr(r.pcvr),
                r.bid_type,
            )
        return RESERVE_SCRIPT.command(script_keys, args)

    async def record_win(self, bid_id: str, price: float, currency: str | None, deadline: float) -> WinResult:
        """Bill a win notice: the clearing `price` (CPM, in the bid's response currency; `currency`, when
        given, must be that currency). Idempotent per bid id. Raises StoreError when Redis fails."""
        deadline = min(deadline, time.monotonic() + self.timeout_s)
        tag = keys.bid_tag(bid_id) or await self._legacy_tag(bid_id, deadline)
        if tag is None:
            return WinResult(WinOutcome.UNKNOWN_BID, bid_id)
        record_key = bid_key(tag, bid_id)
        [reply] = await self._on_slot(record_key, [("HGETALL", record_key)], deadline, "read bid")
        record = _hash(reply)
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
        script_keys = [
            record_key,
            spend_key(campaign_id, day),
            impressions_key(campaign_id, day, user) if user else record_key,
            record[b"hk"].decode(),
        ]
        attribution = attribution_of(record)
        shadow_seen = attribution is not None and attribution.shadow is not None
        args = [
            cost,
            self._win_ttl_s,
            SPEND_TTL_S,
            FREQUENCY_TTL_S,
            "1" if user else "0",
            "1" if shadow_seen else "0",
        ]
        win = WIN_SCRIPT.command(script_keys, args)
        results = await self._on_slot(record_key, [win], deadline, "record win", wait=True)
        code = int(results[0])
        if code < 0:
            return WinResult(WinOutcome.UNKNOWN_BID, bid_id)
        if code == 0:
            return found
        return WinResult(WinOutcome.RECORDED, bid_id, campaign_id, cost, bid_price, bid_currency, attribution)

    async def record_loss(self, bid_id: str, reason: int, deadline: float) -> LossResult:
        """Record a loss notice with its reason code (OpenRTB 2.6 loss reasons, ${AUCTION_LOSS}) and release
        the bid's budget hold if it never won. Idempotent per bid id: a second call answers DUPLICATE.
        Same routing as `record_win`: the record's slot, from the bid id. Raises StoreError."""
        deadline = min(deadline, time.monotonic() + self.timeout_s)
        tag = keys.bid_tag(bid_id) or await self._legacy_tag(bid_id, deadline)
        if tag is None:
            return LossResult(LossOutcome.UNKNOWN_BID, bid_id)
        record_key = bid_key(tag, bid_id)
        [reply] = await self._on_slot(record_key, [("HGETALL", record_key)], deadline, "read bid")
        record = _hash(reply)
        if not record:
            return LossResult(LossOutcome.UNKNOWN_BID, bid_id)
        campaign_id = record[b"c"].decode()
        if b"l" in record:
            return LossResult(LossOutcome.DUPLICATE, bid_id, campaign_id)
        if record.get(b"w") == b"1":
            return LossResult(LossOutcome.ALREADY_WON, bid_id, campaign_id)
        loss = LOSS_SCRIPT.command([record_key, record[b"hk"].decode()], [reason, self._win_ttl_s])
        results = await self._on_slot(record_key, [loss], deadline, "record loss", wait=True)
        code, released = (int(v) for v in results[0])
        outcome = {
            1: LossOutcome.RECORDED,
            0: LossOutcome.DUPLICATE,
            2: LossOutcome.ALREADY_WON,
        }.get(code, LossOutcome.UNKNOWN_BID)
        return LossResult(outcome, bid_id, campaign_id if code >= 0 else None, released)

    async def _legacy_tag(self, bid_id: str, deadline: float) -> str | None:
        """The campaign tag `migrate-redis` left for a bid made under the old layout (its id has none)."""
        tag_key = keys.legacy_bid_tag_key(bid_id)
        [raw] = await self._on_slot(tag_key, [("GET", tag_key)], deadline, "read bid tag")
        return raw.decode() if isinstance(raw, bytes) else None

    async def _on_slot(
        self, key: str, commands: list[Command], deadline: float, what: str, *, wait: bool = False
    ) -> list[Any]:
        """`commands` on the shard of `key`'s slot; with `wait`, then WAIT for the replicas (see
        `_replicas_to_wait`). In a cluster a failure (a dead primary, a MOVED slot) is retried until
        `deadline`, re-reading the slot map between tries: win notices can wait out a failover where bids
        cannot. Safe to repeat: every write here is idempotent per bid id (a script that ran but whose
        answer was lost answers duplicate next time)."""
        await self.shards.discover(deadline)
        while True:
            shard = self.shards.shard_for_key(key)
            replicas = self._replicas_to_wait(shard) if wait else 0
            sent = commands
            if replicas:
                # Same connection, right after the writes: returns once that many replicas have them.
                wait_ms = max(1, int((deadline - time.monotonic()) * 500))  # half the time left; never 0
                sent = [*commands, ("WAIT", replicas, wait_ms)]
            try:
                results = await self.shards.execute(shard, sent, deadline, what)
                failure = _failed(results)
            except StoreError as exc:
                failure = exc
            if failure is None and replicas and int(results[-1]) < replicas:
                # Written, unconfirmed: no retry (it would answer duplicate: acknowledged, unreplicated).
                raise StoreError(
                    f"redis {what}: written on {shard.name}, but {int(results[-1])} of {replicas} replicas "
                    "confirmed it in time; a retry answers duplicate"
                )
            if failure is None:
                return results[: len(commands)]
            if not self.shards.cluster or deadline - time.monotonic() <= _RETRY_PAUSE_S:
                raise failure
            await asyncio.sleep(_RETRY_PAUSE_S)
            await self.shards.refresh(deadline)

    def _replicas_to_wait(self, shard: Shard) -> int:
        """`win_replicas`, capped at the replicas the shard has now: a primary just promoted has none until
        its old node returns, and waiting for a replica that does not exist would refuse every notice."""
        if shard.replicas is None:  # one server: the operator knows its replicas
            return self._win_replicas
        return min(self._win_replicas, shard.replicas)

    async def configure(self, campaign_id: str, config: CampaignConfig) -> None:
        key = config_key(campaign_id)
        await self._on_slot(key, [("SET", key, encode_config(config))], self._deadline(), "configure")

    async def spend_micros(self, campaign_id: str, day: str | None = None) -> int:
        """Recorded spend of a campaign on a UTC day (default today); reporting and tests."""
        key = spend_key(campaign_id, day or utc_day(self.clock()))
        [raw] = await self._on_slot(key, [("GET", key)], self._deadline(), "read spend")
        return _int(cast("bytes | None", raw))

    # ------------------------------------------------------------------------------------------ helpers

    def _deadline(self) -> float:
        return time.monotonic() + max(self.timeout_s, 1.0)

    def _bucket(self, now: float) -> int:
        return int(now // self._bid_ttl_s)


def _replace(result: WinResult, outcome: WinOutcome) -> WinResult:
    return WinResult(outcome, result.bid_id, result.campaign_id, 0, result.bid_price, result.currency)
