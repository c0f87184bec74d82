"""The Redis feature store: user and ad rows shared by every replica, read with campaign state in one MGET.

Values are stored pre-hashed, exactly the rows the embedded store computes from the snapshots (`seed-redis`
writes them), so the hot path never hashes a known user or ad:
  bidgw:f:<spec>:u:<user id>   48 bytes: 5 little-endian int64 buckets (USER_CAT_FIELDS), 2 float32 dense
  bidgw:f:<spec>:a:<ad id>     40 bytes: 4 int64 buckets (AD_CAT_FIELDS), 2 float32 dense
<spec> fingerprints the feature contract (fields, bucket counts, row layout): a model with another spec
reads another namespace instead of misreading these bytes.

One bid costs one round trip: a single MGET carries the user row, the ad rows and campaign configurations
missing from the local cache, and each candidate campaign's state (spend today, open holds, the user's
impressions); see `gateway.stores.campaigns`. Ads and campaign configurations change rarely and repeat on
every bid, so a bounded TTL cache keeps them in the worker (absent keys too, so unknown ads do not hammer
Redis). A cold key is fetched once however many concurrent bids need it: the first bid owns the fetch, the
others await its result (single flight).

Redis down or slow: every call is bounded by the request's deadline (and `timeout_s`); on failure the bid
gets defaults for what it could not read, cached values for the rest, and no campaign limits (fail open:
bidding continues; see docs/pacing.md). Never an exception for an unreachable backend; counted in `stats`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast

import msgspec
import numpy as np
import numpy.typing as npt
import xxhash
from cachetools import TTLCache
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

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
from gateway.stores.campaigns import CampaignConfig, CampaignLedger, config_key, decode_config, redis_call
from gateway.stores.embedded import StoreStats

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


_Cached = bytes | CampaignConfig | None  # an ad row, a decoded campaign config, or "absent in Redis"
_Result = _Cached | Literal[_Fetch.FAILED]


@dataclass(slots=True)
class RedisStoreStats(StoreStats):
    """The embedded store's counters (so the metrics layer exports both alike) plus Redis's own."""

    lookups: int = 0
    failures: int = 0  # round trips that failed or timed out: the bid used defaults and cached values
    cache_hits: int = 0  # ad rows and campaign configs served from the worker's cache
    shared_fetches: int = 0  # keys a bid awaited from another bid's in-flight fetch (single flight)
    bad_configs: int = 0  # campaign configs that did not decode (the campaign is treated as unmanaged)


class RedisFeatureStore:
    """FeatureStore and BidStateStore over Redis. Build with `connect`; close with `aclose`."""

    def __init__(
        self,
        client: Redis,
        ledger: CampaignLedger,
        *,
        timeout_s: float = 0.01,
        cache_size: int = 100_000,
        cache_ttl_s: float = 30.0,
        namespace: str | None = None,
    ) -> None:
        self._client = client
        self.ledger = ledger
        self._timeout_s = timeout_s
        namespace = namespace or feature_namespace()
        self._user_prefix = f"{namespace}:u:"
        self._ad_prefix = f"{namespace}:a:"
        self._cache: TTLCache[str, _Cached] = TTLCache(
            maxsize=cache_size, ttl=cache_ttl_s, timer=time.monotonic
        )
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
        clock: Callable[[], float] = time.time,
    ) -> RedisFeatureStore:
        """A store on a new connection pool. No I/O here: connections open on first use, so a gateway
        starts (and bids on defaults) while Redis is still down."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,  # waiting for a pooled connection is bounded by each call's deadline instead
            socket_timeout=max(timeout_s, win_timeout_s),
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 0),  # a retry would spend budget the bid no longer has
        )
        client = Redis(connection_pool=pool)
        ledger = CampaignLedger(
            client, bid_ttl_s=bid_ttl_s, win_ttl_s=win_dedupe_ttl_s, timeout_s=win_timeout_s, clock=clock
        )
        return cls(client, ledger, timeout_s=timeout_s, cache_size=cache_size, cache_ttl_s=cache_ttl_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    @property
    def client(self) -> Redis:
        return self._client

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

        found: dict[str, _Result] = {}
        owned: dict[str, asyncio.Future[_Result]] = {}
        joined: dict[str, asyncio.Future[_Result]] = {}
        for key in dict.fromkeys(ad_keys + config_keys):
            cached = self._cache.get(key, _Fetch.FAILED)
            if cached is not _Fetch.FAILED:
                found[key] = cached
                self.stats.cache_hits += 1
            elif (flight := self._inflight.get(key)) is not None:
                joined[key] = flight
            else:
                owned[key] = self._inflight[key] = asyncio.get_running_loop().create_future()

        head = [self._user_prefix + user_key] if user_key else []
        state_keys = self.ledger.state_keys(campaign_ids, user_key, now) if campaign_ids else []
        request = head + list(owned) + state_keys
        values: list[bytes | None] | None = None
        try:
            if request:
                # decode_responses=False: values are bytes (or None for an absent key).
                fetched = await redis_call(self._client.mget(request), deadline, "lookup")
                values = cast("list[bytes | None]", fetched)
        except StoreError as exc:
            self.stats.failures += 1
            log.debug("redis lookup failed, bidding on defaults and cached values: %s", exc)
        finally:
            # Settle every fetch this bid owns, whatever happened (cancellation included): others await them.
            for i, (key, future) in enumerate(owned.items()):
                del self._inflight[key]
                result = self._remember(key, values[len(head) + i]) if values is not None else _Fetch.FAILED
                found[key] = result
                if not future.done():
                    future.set_result(result)
        if joined:
            self.stats.shared_fetches += len(joined)
            await asyncio.wait(joined.values(), timeout=max(deadline - time.monotonic(), 0.0))
            for key, future in joined.items():
                found[key] = future.result() if future.done() else _Fetch.FAILED

        user = self._user(user_key, values[0] if values is not None and head else _Fetch.FAILED)
        rows = [found[key] for key in ad_keys]
        campaigns = None
        if with_campaigns and values is not None:
            configs = [found[key] for key in config_keys]
            campaigns = self._campaigns(
                ads,
                campaign_ids=campaign_ids,
                configs=configs,
                state=values[len(request) - len(state_keys) :],
                user_key=user_key,
                now=now,
            )
        return BidLookup(
            user=user,
            ads=self._ads(ads, rows),
            campaigns=campaigns,
            degraded=values is None and bool(request),
        )

    def _remember(self, key: str, raw: bytes | None) -> _Result:
        value: _Cached = raw
        if raw is not None and key.startswith("bidgw:camp:"):
            try:
                value = decode_config(raw)
            except msgspec.DecodeError:
                self.stats.bad_configs += 1
                log.warning("campaign config at %s does not decode; the campaign is unmanaged", key)
                value = None
        self._cache[key] = value
        return value

    def _user(self, user_key: str | None, raw: bytes | Literal[_Fetch.FAILED] | None) -> UserFeatures:
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
        blobs = [row if isinstance(row, bytes) and len(row) == AD_ROW.itemsize else None for row in rows]
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
        state: list[bytes | None],
        user_key: str | None,
        now: float,
    ) -> CampaignStates | None:
        if any(config is _Fetch.FAILED for config in configs):
            return None  # a configuration we could not read: treat like Redis down, not like "unmanaged"
        count = len(campaign_ids)
        managed = np.fromiter((isinstance(c, CampaignConfig) for c in configs), dtype=np.bool_, count=count)
        budget = np.fromiter((_budget(c) for c in configs), dtype=np.int64, count=count)
        cap = np.fromiter(
            (c.freq_cap if isinstance(c, CampaignConfig) else 0 for c in configs), dtype=np.int64, count=count
        )
        committed, impressions = CampaignLedger.states_from(state, count, bool(user_key))
        index = {cid: k for k, cid in enumerate(campaign_ids)}
        rows = np.fromiter(
            (index[cid] for cid in ads.campaign_ids), dtype=np.intp, count=len(ads.campaign_ids)
        )
        return CampaignStates(
            managed=managed[rows],
            budget_micros=budget[rows],
            committed_micros=committed[rows],
            freq_cap=cap[rows],
            impressions=impressions[rows],
            now=now,
        )


_NO_ADS: Final = AdKeys(ad_ids=(), campaign_ids=(), advertisers=(), categories=())


def _budget(config: _Result) -> int:
    if isinstance(config, CampaignConfig) and config.daily_budget_micros is not None:
        return config.daily_budget_micros
    return -1
