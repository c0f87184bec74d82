"""The Redis feature store: user and ad rows shared by every replica, read with campaign state, one round
trip per shard.

Values are stored pre-hashed, exactly the rows the embedded store computes from the snapshots (`seed-redis`
writes them), so the hot path never hashes a known user or ad:
  bidgw:f:<spec>:u:<user id>   48 bytes: 5 little-endian int64 buckets (USER_CAT_FIELDS), 2 float32 dense
  bidgw:f:<spec>:a:<ad id>     40 bytes: 4 int64 buckets (AD_CAT_FIELDS), 2 float32 dense
<spec> fingerprints the feature contract (fields, bucket counts, row layout): a model with another spec
reads another namespace instead of misreading these bytes. Rows are keyed one by one (no hash tag): in a
cluster they spread over every shard.

One bid costs one command, one round trip, per shard it touches, all shards at once: a read script (see
`gateway.stores.campaigns`) returns the user row, the ad rows and campaign configurations missing from the
local cache, and each candidate campaign's committed spend and the user's impressions, summed inside Redis
and packed into one string. On one server that is a single call; in a cluster, one call per shard with the
keys that shard serves (Redis 7's allow-cross-slot-keys: one script may read many slots of its node).
Ads and campaign configurations change rarely
and repeat on every bid, so a bounded TTL cache keeps them in the worker (absent keys too, so unknown ads do
not hammer Redis). A cold key is fetched once however many concurrent bids need it: the first bid owns the
fetch, the others await its result (single flight).

Redis down, slow or failing over: every round trip is bounded by the request's deadline (and `timeout_s`);
what a failed shard held is read as if Redis were down: defaults for the user, cached values for ads, and
no campaign limits for the bid when any campaign's state is missing (fail open: bidding continues; see
docs/pacing.md). Never an exception for an unreachable backend; counted in `stats` (and per shard).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final, Literal, cast

import msgspec
import numpy as np
import numpy.typing as npt
import xxhash
from redis.exceptions import ResponseError

from gateway.core import feature_spec as fs
from gateway.core.ports import (
    AD_CAT_FIELDS,
    AD_DENSE_FIELDS,
    USER_CAT_FIELDS,
    USER_DENSE_FIELDS,
    AdFeatures,
    AdKeys,
    BidLookup,
    CampaignStates,
    Reservation,
    ReserveOutcome,
    UserFeatures,
    ad_buckets_from_request,
    user_defaults,
)
from gateway.errors import StoreError
from gateway.stores.campaigns import CampaignLedger, campaign_slot, decode_config
from gateway.stores.embedded import StoreStats
from gateway.stores.keys import CAMPAIGN_PREFIX, config_key
from gateway.stores.local_cache import LocalCache
from gateway.stores.shards import Command, RedisShards, Shard

__all__ = [
    "AD_ROW",
    "USER_ROW",
    "RedisFeatureStore",
    "RedisStoreStats",
    "decode_rows",
    "encode_rows",
    "feature_namespace",
]

log = logging.getLogger(__name__)

USER_ROW: Final = np.dtype(
    [("cat", "<i8", (len(USER_CAT_FIELDS),)), ("dense", "<f4", (len(USER_DENSE_FIELDS),))]
)
AD_ROW: Final = np.dtype([("cat", "<i8", (len(AD_CAT_FIELDS),)), ("dense", "<f4", (len(AD_DENSE_FIELDS),))])


def feature_namespace() -> str:
    """bidgw:f:<spec>: the spec fingerprint changes whenever the stored rows would mean something else."""
    contract = repr(
        (
            [(f.name, f.buckets) for f in fs.CATEGORICAL_FIELDS],
            fs.DENSE_FIELDS,
            USER_CAT_FIELDS,
            USER_DENSE_FIELDS,
            AD_CAT_FIELDS,
            AD_DENSE_FIELDS,
            USER_ROW.descr,
            AD_ROW.descr,
        )
    )
    return f"bidgw:f:{xxhash.xxh3_64_hexdigest(contract.encode())[:12]}"


def encode_rows(
    row: np.dtype[np.void], cat: npt.NDArray[np.int64], dense: npt.NDArray[np.float32]
) -> list[bytes]:
    """One packed value per row (a vectorised pack, then slices)."""
    packed = np.empty(len(cat), dtype=row)
    packed["cat"] = cat
    packed["dense"] = dense
    blob, size = packed.tobytes(), row.itemsize
    return [blob[i : i + size] for i in range(0, len(blob), size)]


def decode_rows(
    row: np.dtype[np.void], values: list[bytes]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Packed values to ([n, cat fields] int64, [n, dense fields] float32); ValueError for a bad length."""
    blob = b"".join(values)
    if len(blob) != len(values) * row.itemsize:
        raise ValueError(f"stored rows are not {row.itemsize}-byte values")
    unpacked = np.frombuffer(blob, dtype=row)
    return unpacked["cat"].astype(np.int64), unpacked["dense"].astype(np.float32)


class _Fetch(enum.Enum):
    FAILED = "failed"  # the round trip that would have read the key failed or ran out of time


# A campaign's limits as eligibility reads them: (managed 1, daily budget micro-USD or -1, cap or 0).
_Limits = tuple[int, int, int]
_UNMANAGED: Final[_Limits] = (0, -1, 0)
_Cached = bytes | _Limits | None  # an ad row, a decoded campaign config, or "absent in Redis"
_Result = _Cached | Literal[_Fetch.FAILED]
_Raw = bytes | None | Literal[_Fetch.FAILED]
_Span = tuple[list[int], list[int]]  # one command's raw keys and campaigns (indices into the bid's lists)


@dataclass(slots=True)
class RedisStoreStats(StoreStats):
    """The embedded store's counters (so the metrics layer exports both alike) plus Redis's own."""

    lookups: int = 0
    failures: int = 0  # lookups with a failed or late shard: the bid used defaults and cached values there
    cache_hits: int = 0  # ad rows and campaign configs served from the worker's cache
    shared_fetches: int = 0  # keys a bid awaited from another bid's in-flight fetch (single flight)
    bad_configs: int = 0  # campaign configs that did not decode (the campaign is treated as unmanaged)


@dataclass(slots=True)
class _Read:
    """What one bid's round trips brought back: raw values in request order, campaign state in order."""

    values: list[_Raw]
    committed: npt.NDArray[np.int64]
    impressions: npt.NDArray[np.int64]
    state_ok: bool = True  # every campaign's state was read
    failed: bool = False  # some shard failed or ran late


class RedisFeatureStore:
    """FeatureStore and BidStateStore over Redis (standalone or Cluster). Build with `connect`; close with
    `aclose`."""

    def __init__(
        self,
        shards: RedisShards,
        ledger: CampaignLedger,
        *,
        timeout_s: float = 0.01,
        cache_size: int = 100_000,
        cache_ttl_s: float = 30.0,
        namespace: str | None = None,
    ) -> None:
        self._shards = shards
        self.ledger = ledger
        self._timeout_s = timeout_s
        namespace = namespace or feature_namespace()
        self._user_prefix = f"{namespace}:u:"
        self._ad_prefix = f"{namespace}:a:"
        self._cache: LocalCache[_Cached] = LocalCache(cache_size, cache_ttl_s)
        self._inflight: dict[str, asyncio.Future[_Result]] = {}
        self._anonymous = user_defaults()
        self.stats = RedisStoreStats()

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        timeout_s: float = 0.01,
        connect_timeout_s: float = 0.5,
        max_connections: int = 64,
        cache_size: int = 100_000,
        cache_ttl_s: float = 30.0,
        bid_ttl_s: int = 300,
        win_dedupe_ttl_s: int = 2 * 86_400,
        win_timeout_s: float = 1.0,
        win_replicas: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> RedisFeatureStore:
        """A store on new connection pools (`url`: see gateway.stores.shards; ValueError for a bad one).
        No I/O here: connections open on first use, so a gateway starts (and bids on defaults) while Redis
        is still down."""
        shards = RedisShards.from_url(
            url,
            socket_timeout_s=max(timeout_s, win_timeout_s),
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
        )
        ledger = CampaignLedger(
            shards,
            bid_ttl_s=bid_ttl_s,
            win_ttl_s=win_dedupe_ttl_s,
            timeout_s=win_timeout_s,
            win_replicas=win_replicas,
            clock=clock,
        )
        return cls(shards, ledger, timeout_s=timeout_s, cache_size=cache_size, cache_ttl_s=cache_ttl_s)

    async def aclose(self) -> None:
        await self._shards.aclose()

    @property
    def shards(self) -> RedisShards:
        return self._shards

    def user_key(self, user_id: str) -> str:
        return self._user_prefix + user_id

    def ad_key(self, ad_id: str) -> str:
        return self._ad_prefix + ad_id

    def ready(self) -> bool:
        # Redis being down degrades bids to defaults; it is no reason to take the replica out of service.
        return True

    # ------------------------------------------------------------------------- FeatureStore (compatible)

    async def user_features(self, user_key: str | None, deadline: float | None = None) -> UserFeatures:
        found = await self._fetch(user_key, _NO_ADS, self._deadline(deadline), with_campaigns=False)
        return found.user

    async def ad_features(self, ads: AdKeys, deadline: float | None = None) -> AdFeatures:
        found = await self._fetch(None, ads, self._deadline(deadline), with_campaigns=False)
        return found.ads

    # -------------------------------------------------------------------------------- BidStateStore

    async def lookup(self, user_key: str | None, ads: AdKeys, deadline: float) -> BidLookup:
        return await self._fetch(user_key, ads, deadline, with_campaigns=True)

    async def reserve(self, reservations: Sequence[Reservation], deadline: float) -> list[ReserveOutcome]:
        return await self.ledger.reserve(reservations, deadline)

    def new_bid_id(self, campaign_id: str, *, signed_notices_only: bool = False) -> str:
        return self.ledger.new_bid_id(campaign_id, signed_notices_only=signed_notices_only)

    # ------------------------------------------------------------------------------------- internals

    def _deadline(self, deadline: float | None) -> float:
        return time.monotonic() + self._timeout_s if deadline is None else deadline

    async def _fetch(
        self, user_key: str | None, ads: AdKeys, deadline: float, *, with_campaigns: bool
    ) -> BidLookup:
        self.stats.lookups += 1
        now = self.ledger.clock()
        deadline = min(deadline, time.monotonic() + self._timeout_s)
        ad_keys = [self._ad_prefix + ad_id for ad_id in ads.ad_ids]
        campaign_ids = list(dict.fromkeys(ads.campaign_ids)) if with_campaigns else []
        config_keys = [config_key(cid) for cid in campaign_ids]

        owned: dict[str, asyncio.Future[_Result]] = {}
        joined: dict[str, asyncio.Future[_Result]] = {}
        cached, missing = self._cache.get_many(dict.fromkeys(ad_keys + config_keys), self._cache.timer())
        self.stats.cache_hits += len(cached)
        found: dict[str, _Result] = dict(cached)  # and, below, what this bid reads or awaits
        for key in missing:
            if (flight := self._inflight.get(key)) is not None:
                joined[key] = flight
            else:
                owned[key] = self._inflight[key] = asyncio.get_running_loop().create_future()

        head = [self._user_prefix + user_key] if user_key else []
        raw = head + list(owned)
        read: _Read | None = None
        try:
            read = await self._read(raw, campaign_ids, user_key, now, deadline)
        finally:
            # Settle every fetch this bid owns, whatever happened (cancellation included): others await them.
            for i, (key, future) in enumerate(owned.items()):
                del self._inflight[key]
                value = read.values[len(head) + i] if read is not None else _Fetch.FAILED
                result = _Fetch.FAILED if value is _Fetch.FAILED else self._remember(key, value)
                found[key] = result
                if not future.done():
                    future.set_result(result)
        assert read is not None  # _read raised otherwise, and so did this method
        if read.failed:
            self.stats.failures += 1
            log.debug("redis lookup failed in part, bidding on defaults and cached values there")
        if joined:
            self.stats.shared_fetches += len(joined)
            await asyncio.wait(joined.values(), timeout=max(deadline - time.monotonic(), 0.0))
            for key, future in joined.items():
                found[key] = future.result() if future.done() else _Fetch.FAILED

        user = self._user(user_key, read.values[0] if head else _Fetch.FAILED)
        rows = [found[key] for key in ad_keys]
        campaigns = None
        if with_campaigns and read.state_ok:
            campaigns = self._campaigns(
                ads,
                campaign_ids=campaign_ids,
                configs=[found[key] for key in config_keys],
                committed=read.committed,
                impressions=read.impressions,
                now=now,
            )
        return BidLookup(user=user, ads=self._ads(ads, rows), campaigns=campaigns, degraded=read.failed)

    async def _read(
        self, raw: list[str], campaign_ids: list[str], user_key: str | None, now: float, deadline: float
    ) -> _Read:
        """The raw values of `raw` and each campaign's state: one round trip per shard, all at once."""
        count = len(campaign_ids)
        read = _Read([_Fetch.FAILED] * len(raw), np.zeros(count, np.int64), np.zeros(count, np.int64))
        if not raw and not campaign_ids:
            return read
        shards = self._shards
        try:
            await shards.discover(deadline)
        except StoreError:
            read.failed, read.state_ok = True, not campaign_ids
            return read
        groups: dict[Shard, list[Command]] = {}
        spans: dict[Shard, _Span] = {}
        for shard, (raw_at, campaigns_at) in self._by_shard(raw, campaign_ids).items():
            raw_keys = [raw[i] for i in raw_at]
            if campaigns_at or (shards.cluster and len(raw_keys) > 1):  # MGET would span slots
                selected = [campaign_ids[j] for j in campaigns_at]
                groups[shard] = [self.ledger.read_command(raw_keys, selected, user_key, now)]
            else:
                groups[shard] = [("MGET", *raw_keys)]
            spans[shard] = (raw_at, campaigns_at)
        for shard, replies in await shards.execute_many(groups, deadline, "lookup"):
            raw_at, campaigns_at = spans[shard]
            if isinstance(replies, StoreError):
                log.debug("redis lookup on %s failed: %s", shard.name, replies)
                read.failed = True
                read.state_ok = read.state_ok and not campaigns_at
                continue
            self._scatter(read, raw_at, campaigns_at, replies[0])
        return read

    def _by_shard(self, raw: list[str], campaign_ids: list[str]) -> dict[Shard, _Span]:
        """Which raw keys and campaigns each shard serves (indices): one command per shard."""
        shards = self._shards
        if not shards.cluster:  # one server: everything in one command
            return {shards.shard_for_slot(0): (list(range(len(raw))), list(range(len(campaign_ids))))}
        spans: dict[Shard, _Span] = {}
        for i, key in enumerate(raw):
            spans.setdefault(shards.shard_for_slot(RedisShards.slot(key)), ([], []))[0].append(i)
        for j, cid in enumerate(campaign_ids):
            spans.setdefault(shards.shard_for_slot(campaign_slot(cid)), ([], []))[1].append(j)
        return spans

    def _scatter(self, read: _Read, raw_at: list[int], campaigns_at: list[int], reply: Any) -> None:
        if isinstance(reply, ResponseError):  # a MOVED slot, a script error: that part failed
            log.debug("redis lookup command refused: %s", reply)
            read.failed = True
            read.state_ok = read.state_ok and not campaigns_at
            return
        values = cast("list[bytes | None]", reply)
        if campaigns_at:
            try:
                committed, impressions = CampaignLedger.read_state(
                    cast("bytes", values[-1]), len(campaigns_at)
                )
            except (ValueError, TypeError) as exc:
                log.warning("campaign state reply did not decode: %s", exc)
                read.failed, read.state_ok = True, False
                return
            read.committed[campaigns_at] = committed
            read.impressions[campaigns_at] = impressions
        for i, value in zip(raw_at, values, strict=False):  # the read script adds the state last
            read.values[i] = value

    def _remember(self, key: str, raw: bytes | None) -> _Result:
        value: _Cached = raw
        if raw is not None and key.startswith(CAMPAIGN_PREFIX):
            try:
                config = decode_config(raw)
            except msgspec.DecodeError:
                self.stats.bad_configs += 1
                log.warning("campaign config at %s does not decode; the campaign is unmanaged", key)
                value = None
            else:
                budget = config.daily_budget_micros
                value = (1, -1 if budget is None else budget, config.freq_cap)
        self._cache.put(key, value, self._cache.timer())
        return value

    def _user(self, user_key: str | None, raw: _Raw) -> UserFeatures:
        if user_key is None:
            self.stats.user_anonymous += 1
            return self._anonymous
        if raw is None or raw is _Fetch.FAILED or len(raw) != USER_ROW.itemsize:
            # As the embedded store: a miss is the anonymous row, so an unseen id shares no trained embedding.
            self.stats.user_misses += 1
            return self._anonymous
        self.stats.user_hits += 1
        cat, dense = decode_rows(USER_ROW, [raw])
        return UserFeatures(cat=cat[0], dense=dense[0], known=True)

    def _ads(self, ads: AdKeys, rows: list[_Result]) -> AdFeatures:
        count = len(rows)
        size = AD_ROW.itemsize
        if all(type(row) is bytes and len(row) == size for row in rows):  # every ad known: the usual bid
            cat, dense = decode_rows(AD_ROW, cast("list[bytes]", rows))
            self.stats.ad_hits += count
            return AdFeatures(cat=cat, dense=dense, known=np.ones(count, dtype=np.bool_))
        blobs = [row if isinstance(row, bytes) and len(row) == size else None for row in rows]
        known = np.fromiter((blob is not None for blob in blobs), dtype=np.bool_, count=count)
        cat = np.empty((count, len(AD_CAT_FIELDS)), dtype=np.int64)
        dense = np.empty((count, len(AD_DENSE_FIELDS)), dtype=np.float32)
        hits = [blob for blob in blobs if blob is not None]
        if hits:
            cat[known], dense[known] = decode_rows(AD_ROW, hits)
        misses = np.flatnonzero(~known).tolist()
        if misses:
            # Unknown (or unreadable) ads: hashed from what the request says, population-mean priors.
            cat[misses] = [ad_buckets_from_request(ads, c) for c in misses]
            dense[misses] = (fs.DEFAULT_AD_CTR, fs.DEFAULT_AD_CVR)
        self.stats.ad_hits += len(hits)
        self.stats.ad_misses += len(misses)
        return AdFeatures(cat=cat, dense=dense, known=known)

    def _campaigns(
        self,
        ads: AdKeys,
        *,
        campaign_ids: list[str],
        configs: list[_Result],
        committed: npt.NDArray[np.int64],
        impressions: npt.NDArray[np.int64],
        now: float,
    ) -> CampaignStates | None:
        if any(config is _Fetch.FAILED for config in configs):
            return None  # a configuration we could not read: treat like Redis down, not like "unmanaged"
        count = len(campaign_ids)
        limits = np.fromiter(
            chain.from_iterable(c if isinstance(c, tuple) else _UNMANAGED for c in configs),
            dtype=np.int64,
            count=3 * count,
        ).reshape(count, 3)
        if count != len(ads.campaign_ids):  # campaigns with several candidates: per candidate rows
            index = {cid: k for k, cid in enumerate(campaign_ids)}
            rows = np.fromiter(
                (index[cid] for cid in ads.campaign_ids), dtype=np.intp, count=len(ads.campaign_ids)
            )
            limits, committed, impressions = limits[rows], committed[rows], impressions[rows]
        # else one candidate per campaign: campaign_ids is ads.campaign_ids in order (dict.fromkeys)
        return CampaignStates(
            managed=limits[:, 0].astype(np.bool_),
            budget_micros=limits[:, 1],
            committed_micros=committed,
            freq_cap=limits[:, 2],
            impressions=impressions,
            now=now,
        )


_NO_ADS: Final = AdKeys(ad_ids=(), campaign_ids=(), advertisers=(), categories=())
