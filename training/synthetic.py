"""Impression, click and conversion logs drawn from the world's known ground truth, encoded for the model.

Each row is one impression: a user (Zipf traffic) on a publisher placement at an hour of day (diurnal)
shown one ad (30% targeted to the user's interests, else by ad popularity). The true click probability
is a logistic model of observable attributes plus latent effects (`world`); a conversion happens after a
click with its own logistic truth. Rows are then encoded through `gateway.core.feature_spec` exactly as
the gateway encodes a request: strings per field, each field's vocabulary hashed once, then gathered.

Some rows simulate the gaps the gateway meets in production, so the model learns the MISSING buckets and
default dense values instead of seeing them first in serving: a user-store miss (demographics missing,
default ctr_hist and activity) and a request without device.os, device.geo.country or banner.pos.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.core import feature_spec as fs
from training import world as w

F32 = npt.NDArray[np.float32]
I8 = npt.NDArray[np.int8]
BOOL = npt.NDArray[np.bool_]

TRAIN_SEED: Final = 1
HOLDOUT_SEED: Final = 2

TARGETED_SHARE: Final = 0.3  # impressions whose ad was picked for one of the user's interests
HOME_DEVICE_SHARE: Final = 0.85  # impressions on the user's home device
USER_MISS_RATE: Final = 0.02
OS_MISS_RATE: Final = 0.01
COUNTRY_MISS_RATE: Final = 0.01
POSITION_MISS_RATE: Final = 0.02
HOUR_TRAFFIC_PEAK: Final = 20.0


@dataclass(frozen=True, slots=True)
class Rows:
    """The raw impressions: entity indices into the world's tables, -1 where the request lacks a value."""

    user: w.I64
    user_known: BOOL  # False: a user-store miss
    ad: w.I64
    publisher: w.I64
    placement: w.I64
    device: w.I64
    os: w.I64  # -1: missing
    country: w.I64  # -1: missing
    position_known: BOOL
    hour: w.I64


@dataclass(frozen=True, slots=True)
class Logs:
    cat_ids: w.I64  # [N, len(CATEGORICAL_FIELDS)]
    dense: F32  # [N, len(DENSE_FIELDS)]
    click: I8  # [N]
    conversion: I8  # [N]; 1 only on clicked rows
    true_pctr: w.F64  # [N] ground-truth P(click | impression)
    true_pcvr: w.F64  # [N] ground-truth P(conversion | click)
    rows: Rows

    def __len__(self) -> int:
        return int(self.click.shape[0])


def _hour_shares() -> w.F64:
    weights = np.exp(0.6 * np.cos(2.0 * np.pi * (np.arange(24) - HOUR_TRAFFIC_PEAK) / 24.0))
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _pick_within_groups(
    rng: np.random.Generator, group: w.I64, group_start: w.I64, group_count: w.I64
) -> w.I64:
    """A uniform member of each row's group, members laid out contiguously from group_start."""
    offset = np.floor(rng.random(group.size) * group_count[group]).astype(np.int64)
    return np.asarray(group_start[group] + offset, dtype=np.int64)


def _pick_ads(rng: np.random.Generator, world: w.World, user: w.I64) -> w.I64:
    ads, users = world.ads, world.users
    n = user.size
    by_popularity = rng.choice(len(ads.ids), size=n, p=ads.popularity)
    interest = np.where(rng.random(n) < 0.7, users.interest1[user], users.interest2[user])
    order = np.argsort(ads.category, kind="stable")
    count = np.bincount(ads.category, minlength=len(w.IAB_CATEGORIES))
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    targeted_ad = order[_pick_within_groups(rng, interest, start, np.maximum(count, 1))]
    # A category with no ads cannot be targeted: those rows keep the popularity pick.
    targeted = (rng.random(n) < TARGETED_SHARE) & (count[interest] > 0)
    return np.where(targeted, targeted_ad, by_popularity).astype(np.int64)


def sample_rows(rng: np.random.Generator, world: w.World, n: int) -> Rows:
    users, pubs = world.users, world.publishers
    user = rng.choice(len(users.ids), size=n, p=users.popularity).astype(np.int64)
    publisher = rng.choice(len(pubs.ids), size=n, p=pubs.popularity).astype(np.int64)
    per_pub = np.bincount(pubs.placement_pub, minlength=len(pubs.ids))
    placement = _pick_within_groups(rng, publisher, np.concatenate([[0], np.cumsum(per_pub)[:-1]]), per_pub)
    hour = rng.choice(24, size=n, p=_hour_shares()).astype(np.int64)
    away = rng.random(n) >= HOME_DEVICE_SHARE
    device = np.where(away, rng.choice(len(w.DEVICE_TYPES), size=n, p=w.DEVICE_SHARES), users.device[user])
    os = np.where(device == users.device[user], users.os[user], w.os_for_device(rng, device))
    ad = _pick_ads(rng, world, user)
    return Rows(
        user=user,
        user_known=rng.random(n) >= USER_MISS_RATE,
        ad=ad,
        publisher=publisher,
        placement=placement,
        device=device.astype(np.int64),
        os=np.where(rng.random(n) < OS_MISS_RATE, -1, os).astype(np.int64),
        country=np.where(rng.random(n) < COUNTRY_MISS_RATE, -1, users.country[user]).astype(np.int64),
        position_known=rng.random(n) >= POSITION_MISS_RATE,
        hour=hour,
    )


def affinity(world: w.World, rows: Rows) -> w.F64:
    """Ad category vs the user's interests: the truth's strongest user x ad interaction."""
    ad_category = world.ads.category[rows.ad]
    return np.asarray(
        w.AFFINITY_INTEREST1 * (ad_category == world.users.interest1[rows.user])
        + w.AFFINITY_INTEREST2 * (ad_category == world.users.interest2[rows.user]),
        dtype=np.float64,
    )


def true_probabilities(world: w.World, rows: Rows) -> tuple[w.F64, w.F64]:
    """Ground truth (P(click | impression), P(conversion | click)); independent of what the request lacks."""
    users, ads, pubs = world.users, world.ads, world.publishers
    user_os = np.where(rows.os >= 0, rows.os, users.os[rows.user])
    aff = affinity(world, rows)
    click_logit = (
        w.CLICK_BASE
        + ads.quality[rows.ad]
        + pubs.quality[rows.publisher]
        + pubs.placement_effect[rows.placement]
        + w.POSITION_EFFECT[pubs.pos[rows.placement]]
        + w.SIZE_EFFECT[pubs.size[rows.placement]]
        + w.DEVICE_EFFECT[rows.device]
        + world.os_effect[user_os]
        + world.country_effect[users.country[rows.user]]
        + w.hour_effect(rows.hour)
        + aff
        + w.CONTEXT_MATCH * (ads.category[rows.ad] == pubs.category[rows.publisher])
        + users.bias[rows.user]
    )
    conv_logit = (
        w.CONV_BASE
        + ads.advertiser_cvr[ads.advertiser[rows.ad]]
        + ads.cvr_quality[rows.ad]
        + w.AGE_CVR_EFFECT[users.age[rows.user]]
        + 0.4 * (aff > 0)
    )
    return w.sigmoid(click_logit), w.sigmoid(conv_logit)


def _gather(field: str, vocabulary: list[str] | tuple[str, ...], index: w.I64) -> w.I64:
    """Buckets of `vocabulary[index]` per row, hashing each distinct string once; index -1 = MISSING."""
    buckets = fs.hash_vocabulary(field, [*vocabulary, fs.MISSING])
    return np.asarray(buckets[np.where(index < 0, len(vocabulary), index)], dtype=np.int64)


def encode(world: w.World, rows: Rows) -> tuple[w.I64, F32]:
    """(cat_ids, dense) as the gateway builds them from the stores and the request."""
    users, ads, pubs = world.users, world.ads, world.publishers
    known_user = np.where(rows.user_known, rows.user, -1)

    def user_attr(values: w.I64) -> w.I64:
        return np.where(rows.user_known, values[rows.user], -1)

    sizes = [fs.ad_size(width, height) for width, height in w.SIZES]
    columns = {
        # An id the user store does not know is MISSING: its hash would otherwise land on (and share) the
        # embedding of some trained user; MISSING is one learned "unknown user" vector.
        "user_id": _gather("user_id", users.ids, known_user),
        "user_age": _gather("user_age", w.AGES, user_attr(users.age)),
        "user_gender": _gather("user_gender", w.GENDERS, user_attr(users.gender)),
        "user_interest1": _gather("user_interest1", w.IAB_CATEGORIES, user_attr(users.interest1)),
        "user_interest2": _gather("user_interest2", w.IAB_CATEGORIES, user_attr(users.interest2)),
        "ad_id": _gather("ad_id", ads.ids, rows.ad),
        "campaign_id": _gather("campaign_id", ads.campaign_ids, ads.campaign[rows.ad]),
        "advertiser": _gather("advertiser", ads.advertisers, ads.advertiser[rows.ad]),
        "ad_category": _gather("ad_category", w.IAB_CATEGORIES, ads.category[rows.ad]),
        "publisher": _gather("publisher", pubs.name, rows.publisher),
        "pub_category": _gather("pub_category", w.IAB_CATEGORIES, pubs.category[rows.publisher]),
        "device_type": _gather("device_type", w.DEVICE_TYPES, rows.device),
        "os": _gather("os", w.OSES, rows.os),
        "country": _gather("country", w.COUNTRIES, rows.country),
        "tagid": _gather("tagid", pubs.tagid, rows.placement),
        "ad_size": _gather("ad_size", sizes, pubs.size[rows.placement]),
        "position": _gather(
            "position", w.POSITIONS, np.where(rows.position_known, pubs.pos[rows.placement], -1)
        ),
        "hour": np.array([fs.hour_bucket(h) for h in range(24)], dtype=np.int64)[rows.hour],
    }
    cat_ids = np.stack([columns[field.name] for field in fs.CATEGORICAL_FIELDS], axis=1)

    cycle = np.array([fs.hour_cycle(h) for h in range(24)], dtype=np.float64)[rows.hour]
    dense_columns = {
        "user_ctr_hist": np.where(rows.user_known, users.ctr_hist[rows.user], fs.DEFAULT_USER_CTR),
        "user_activity": np.where(rows.user_known, users.activity[rows.user], fs.DEFAULT_USER_ACTIVITY),
        "ad_prior_ctr": ads.prior_ctr[rows.ad],
        "ad_prior_cvr": ads.prior_cvr[rows.ad],
        "hour_sin": cycle[:, 0],
        "hour_cos": cycle[:, 1],
    }
    dense = np.stack([dense_columns[name] for name in fs.DENSE_FIELDS], axis=1).astype(np.float32)
    return cat_ids, dense


def generate_logs(world: w.World, n_rows: int, seed: int) -> Logs:
    """`n_rows` impressions; a pure function of (world, n_rows, seed)."""
    rng = np.random.default_rng(seed)
    rows = sample_rows(rng, world, n_rows)
    true_pctr, true_pcvr = true_probabilities(world, rows)
    click = rng.random(n_rows) < true_pctr
    conversion = click & (rng.random(n_rows) < true_pcvr)
    cat_ids, dense = encode(world, rows)
    return Logs(
        cat_ids=cat_ids,
        dense=dense,
        click=click.astype(np.int8),
        conversion=conversion.astype(np.int8),
        true_pctr=true_pctr,
        true_pcvr=true_pcvr,
        rows=rows,
    )
