"""What the data plane needs from the outside world, as small Protocols and plain array records.

`core/` never imports `scoring/` or `stores/`: the app wires concrete implementations (Triton, the
embedded snapshot store, Redis) into the pipeline through these shapes. Everything crossing this boundary
is numpy arrays, not per-candidate Python objects, so the hot path stays vectorised.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from gateway.core import feature_spec
from gateway.openrtb import Bid, BidRequest, Candidate

USER_CAT_FIELDS: Final = ("user_id", "user_age", "user_gender", "user_interest1", "user_interest2")
USER_DENSE_FIELDS: Final = ("user_ctr_hist", "user_activity")
AD_CAT_FIELDS: Final = ("ad_id", "campaign_id", "advertiser", "ad_category")
AD_DENSE_FIELDS: Final = ("ad_prior_ctr", "ad_prior_cvr")


@dataclass(frozen=True, slots=True)
class UserFeatures:
    """One user's model inputs: `cat` buckets in USER_CAT_FIELDS order, `dense` in USER_DENSE_FIELDS order."""

    cat: npt.NDArray[np.int64]  # [len(USER_CAT_FIELDS)]
    dense: npt.NDArray[np.float32]  # [len(USER_DENSE_FIELDS)]
    known: bool


@dataclass(frozen=True, slots=True)
class AdKeys:
    """What the request says about each candidate; a store falls back to hashing these for unknown ads."""

    ad_ids: Sequence[str]
    campaign_ids: Sequence[str]
    advertisers: Sequence[str]
    categories: Sequence[str]  # the candidate's first IAB category (or "" when it has none)


@dataclass(frozen=True, slots=True)
class AdFeatures:
    """Per-candidate model inputs, rows in AdKeys order."""

    cat: npt.NDArray[np.int64]  # [C, len(AD_CAT_FIELDS)]
    dense: npt.NDArray[np.float32]  # [C, len(AD_DENSE_FIELDS)]; also the fallback scorer's priors
    known: npt.NDArray[np.bool_]  # [C]


class FeatureStore(Protocol):
    """User and ad features. Implementations never raise for an unknown key: they return defaults."""

    async def user_features(self, user_key: str | None) -> UserFeatures: ...

    async def ad_features(self, ads: AdKeys) -> AdFeatures: ...

    def ready(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class CampaignStates:
    """Where each candidate's campaign stands today in shared state (rows in AdKeys order).

    Money is integer micro-USD of spend (one impression at CPM p costs p * 1000 micro-USD). A campaign
    without a stored configuration is unmanaged: no budget, no cap, never paced."""

    managed: npt.NDArray[np.bool_]  # [C]
    budget_micros: npt.NDArray[np.int64]  # [C] daily budget; -1 = no budget limit
    committed_micros: npt.NDArray[np.int64]  # [C] spent today + held by open bid reservations
    freq_cap: npt.NDArray[np.int64]  # [C] impressions per user per UTC day; 0 = no cap
    impressions: npt.NDArray[np.int64]  # [C] this user's impressions of the campaign today
    now: float  # wall-clock instant (epoch seconds) the state was read at; its UTC day is "today"


@dataclass(frozen=True, slots=True)
class BidLookup:
    """Everything one bid reads from shared state, fetched in one round trip."""

    user: UserFeatures
    ads: AdFeatures
    campaigns: CampaignStates | None  # None: the state could not be read, campaigns go unlimited
    degraded: bool = False  # the backend failed or ran out of time: defaults and cached values were used


@dataclass(frozen=True, slots=True)
class Reservation:
    """A bid the gateway is about to return: hold its price against its campaign's daily budget."""

    bid_id: str
    campaign_id: str
    user_key: str | None
    price: float  # CPM in `currency`, exactly as the response states it
    currency: str
    rate: float  # units of `currency` per USD used for the price
    cost_micros: int  # what the impression costs in micro-USD at that price
    # Kept on the bid record for click/conversion calibration (docs/experiments.md).
    model_version: str = ""
    arm: str = ""
    pctr: float = 0.0
    pcvr: float = 0.0
    bid_type: str = ""


class ReserveOutcome(enum.IntEnum):
    RESERVED = 1
    BUDGET_EXHAUSTED = 2  # spend + open reservations + this price would pass the daily budget
    FREQUENCY_CAPPED = 3  # the user has seen the campaign its cap of times today


class BidStateStore(Protocol):
    """A store that also holds campaign state (budgets, spend, caps) shared by every replica.

    `deadline` is a `time.monotonic()` instant: no call waits past it. `lookup` never raises for an
    unreachable backend (defaults, cached values, `campaigns` None); `reserve` raises StoreError."""

    async def lookup(self, user_key: str | None, ads: AdKeys, deadline: float) -> BidLookup: ...

    async def reserve(self, reservations: Sequence[Reservation], deadline: float) -> list[ReserveOutcome]: ...

    def new_bid_id(self, campaign_id: str, *, signed_notices_only: bool = False) -> str:
        """A unique bid id for a winner of `campaign_id`: the store may route its win notice by it.
        `signed_notices_only`: a catalog bid, billed only through its signed notice URLs."""
        ...


@dataclass(frozen=True, slots=True)
class Scores:
    pctr: npt.NDArray[np.float32]  # [N] P(click | impression)
    pcvr: npt.NDArray[np.float32]  # [N] P(conversion | click)
    model_version: str


class Scorer(Protocol):
    """Scores N rows before `deadline` (a `time.monotonic()` instant).

    Raises gateway.errors.ScoringTimeout when the deadline passes and ScoringUnavailable when the model
    server cannot answer; never a third-party exception."""

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores: ...

    async def ready(self) -> bool: ...


class ImmediateScorer(Protocol):
    """Scores without I/O and without failing: the fallback when the Scorer cannot answer."""

    def score_now(self, dense: npt.NDArray[np.float32]) -> Scores: ...


@dataclass(frozen=True, slots=True)
class Retrieved:
    """Candidates a catalog found for a plain OpenRTB request (one without `ext.candidates`).

    Each candidate's `imp_ids` names the imps its creative fits, and `deal_id` the deal it bids into
    (None: open auction). `creatives[i]` is the catalog's creative behind candidate i: opaque to the data
    plane, handed back to the BidRenderer for the winners. `per_imp[j]` counts request.imp[j]'s matches
    before the top-K cut (what the retrieval metrics report)."""

    candidates: list[Candidate]
    creatives: Sequence[object]
    per_imp: list[int]
    catalog_version: str
    # The buyer seat each candidate bids for (None: the gateway's seat); bids are grouped by seat.
    seats: Sequence[str | None] = ()


class CandidateSource(Protocol):
    """Retrieval: the eligible creatives for a request, pre-ranked to the top K. CPU only, no I/O: it runs
    on the event loop and must cost microseconds. `now` is the wall-clock instant (epoch seconds) that
    decides flight dates and the hour of day."""

    def retrieve(self, request: BidRequest, now: float) -> Retrieved: ...


class BidRenderer(Protocol):
    """Completes a winning catalog bid with what an exchange needs: markup (adm), w/h, attr, mtype, and the
    signed nurl/burl/lurl notice URLs. `response_bidid` is the BidResponse.bidid (${AUCTION_BID_ID})."""

    def render(self, request: BidRequest, bid: Bid, creative: object, response_bidid: str) -> Bid: ...


def user_defaults() -> UserFeatures:
    """The anonymous/unknown user: missing-value buckets and population-mean dense features."""
    cat = np.array(
        [feature_spec.hash_field(name, feature_spec.MISSING) for name in USER_CAT_FIELDS], np.int64
    )
    dense = np.array([feature_spec.DEFAULT_USER_CTR, feature_spec.DEFAULT_USER_ACTIVITY], np.float32)
    return UserFeatures(cat=cat, dense=dense, known=False)


def ad_buckets_from_request(ads: AdKeys, c: int) -> tuple[int, int, int, int]:
    """Buckets of candidate c from the request's own keys, in AD_CAT_FIELDS order (for ads no store knows)."""
    return (
        feature_spec.hash_field("ad_id", ads.ad_ids[c]),
        feature_spec.hash_field("campaign_id", ads.campaign_ids[c]),
        feature_spec.hash_field("advertiser", ads.advertisers[c]),
        feature_spec.hash_field("ad_category", feature_spec.iab_tier1(ads.categories[c])),
    )


def ad_defaults(ads: AdKeys) -> AdFeatures:
    """Every candidate as an unknown ad: request-hashed buckets and population-mean priors."""
    n = len(ads.ad_ids)
    cat = np.array([ad_buckets_from_request(ads, c) for c in range(n)], dtype=np.int64).reshape(n, 4)
    dense = np.tile(np.array([feature_spec.DEFAULT_AD_CTR, feature_spec.DEFAULT_AD_CVR], np.float32), (n, 1))
    return AdFeatures(cat=cat, dense=dense, known=np.zeros(n, dtype=np.bool_))
