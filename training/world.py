"""The synthetic world: users, ads and publishers, with both observable attributes and latent truth.

Observable attributes are what the gateway's stores hold (and what `snapshots` writes); latent ones
(`bias`, `quality`, effects) only drive the ground-truth click and conversion probabilities in
`synthetic`. Observable noisy statistics (`ctr_hist`, `prior_ctr`, `prior_cvr`) are simulated from a
finite history, so the model sees the latent truth only through noise, like production priors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.core import feature_spec as fs

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

WORLD_SEED: Final = 20_240_601

AGES: Final = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
GENDERS: Final = ("M", "F", "U")
IAB_CATEGORIES: Final = tuple(f"IAB{i}" for i in range(1, 27))
# OpenRTB 2.6 device.devicetype: 1 mobile/tablet (generic), 2 personal computer, 4 phone, 5 tablet.
DEVICE_TYPES: Final = ("1", "2", "4", "5")
OSES: Final = ("ios", "android", "windows", "macos", "linux")
COUNTRIES: Final = ("USA", "GBR", "DEU", "FRA", "ESP", "ITA", "BRA", "MEX", "IND", "JPN", "CAN", "AUS")
SIZES: Final = ((300, 250), (320, 50), (728, 90), (300, 600), (160, 600), (320, 480))
POSITIONS: Final = tuple(str(p) for p in range(8))  # OpenRTB banner.pos 0..7

# Rounding of observable statistics: the snapshot stores these exact values, so training sees exactly
# what the gateway will read back from the stores (no float drift between the two paths).
STAT_DECIMALS: Final = 6

# Ground truth, on the logit scale. BASE_* are tuned so the population CTR is ~3% and CVR ~8%, matching
# feature_spec's defaults for unknown users and ads.
CLICK_BASE: Final = -4.45
CONV_BASE: Final = -2.85
AFFINITY_INTEREST1: Final = 1.0
AFFINITY_INTEREST2: Final = 0.5
CONTEXT_MATCH: Final = 0.25  # publisher category == ad category
POSITION_EFFECT: Final = np.array([0.0, 0.3, 0.0, -0.3, 0.2, -0.1, -0.2, 0.5])
SIZE_EFFECT: Final = np.array([0.0, -0.3, -0.2, 0.2, -0.1, 0.4])
DEVICE_EFFECT: Final = np.array([0.0, -0.2, 0.15, 0.05])
AGE_CVR_EFFECT: Final = np.array([-0.3, 0.1, 0.25, 0.15, 0.0, -0.2])
HOUR_AMPLITUDE: Final = 0.2  # click logit swing over the day, peaking in the evening
HOUR_PEAK: Final = 21.0


def hour_effect(hour: I64 | F64) -> F64:
    """Smooth diurnal click effect: a cosine peaking at HOUR_PEAK."""
    angle = 2.0 * np.pi * (np.asarray(hour, dtype=np.float64) - HOUR_PEAK) / 24.0
    return np.asarray(HOUR_AMPLITUDE * np.cos(angle), dtype=np.float64)


def sigmoid(x: F64) -> F64:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True, slots=True)
class Users:
    ids: list[str]
    age: I64  # index into AGES
    gender: I64  # index into GENDERS
    interest1: I64  # index into IAB_CATEGORIES
    interest2: I64
    device: I64  # home device, index into DEVICE_TYPES
    os: I64  # index into OSES
    country: I64  # index into COUNTRIES
    ctr_hist: F64  # observed, noisy
    activity: F64  # log1p(impressions in the last 30 days)
    popularity: F64  # share of traffic (sums to 1)
    bias: F64  # latent


@dataclass(frozen=True, slots=True)
class Ads:
    ids: list[str]
    campaign: I64  # index into campaign_ids
    advertiser: I64  # index into advertisers
    category: I64  # index into IAB_CATEGORIES
    prior_ctr: F64  # observed, noisy
    prior_cvr: F64  # observed, noisy
    popularity: F64
    quality: F64  # latent click quality
    cvr_quality: F64  # latent conversion quality
    campaign_ids: list[str]
    advertisers: list[str]
    advertiser_cvr: F64  # latent per-advertiser conversion effect


@dataclass(frozen=True, slots=True)
class Publishers:
    ids: list[str]
    is_app: npt.NDArray[np.bool_]
    name: list[str]  # app bundle or site domain: the `publisher` feature
    category: I64
    popularity: F64
    quality: F64  # latent
    # Placements, flattened; placement_pub maps each to its publisher.
    placement_pub: I64
    tagid: list[str]
    size: I64  # index into SIZES
    pos: I64  # index into POSITIONS
    placement_effect: F64  # latent, small


@dataclass(frozen=True, slots=True)
class World:
    users: Users
    ads: Ads
    publishers: Publishers
    os_effect: F64  # latent, per OSES
    country_effect: F64  # latent, per COUNTRIES


def _zipf_popularity(rng: np.random.Generator, n: int, offset: float, exponent: float) -> F64:
    """Zipf-ish traffic shares assigned to entities in random order."""
    weights = (np.arange(n, dtype=np.float64) + offset) ** -exponent
    shares = weights[rng.permutation(n)]
    return np.asarray(shares / shares.sum(), dtype=np.float64)


def _smoothed_rate(
    rng: np.random.Generator, trials: I64, p: F64, prior: float, strength: float
) -> tuple[F64, I64]:
    """A rate observed from `trials` Bernoulli(p) draws, shrunk toward `prior` like a production prior."""
    successes = rng.binomial(trials, p)
    rate = (successes + prior * strength) / (trials + strength)
    return np.asarray(np.round(rate, STAT_DECIMALS), dtype=np.float64), np.asarray(successes, dtype=np.int64)


def _two_interests(rng: np.random.Generator, n: int) -> tuple[I64, I64]:
    cat_weights = rng.dirichlet(np.full(len(IAB_CATEGORIES), 2.0))
    first = rng.choice(len(IAB_CATEGORIES), size=n, p=cat_weights)
    # A second, different interest: shift by 1..25 so it never equals the first.
    second = (first + rng.integers(1, len(IAB_CATEGORIES), size=n)) % len(IAB_CATEGORIES)
    return first.astype(np.int64), second.astype(np.int64)


def os_for_device(rng: np.random.Generator, device: I64) -> I64:
    """Mobile devices run ios/android, computers windows/macos/linux."""
    mobile = rng.choice(2, size=device.size, p=[0.45, 0.55])  # ios, android
    desktop = 2 + rng.choice(3, size=device.size, p=[0.7, 0.25, 0.05])
    is_pc = device == DEVICE_TYPES.index("2")
    return np.where(is_pc, desktop, mobile).astype(np.int64)


DEVICE_SHARES: Final = np.array([0.1, 0.25, 0.5, 0.15])


def _make_users(rng: np.random.Generator, n: int) -> Users:
    popularity = _zipf_popularity(rng, n, offset=20.0, exponent=0.8)
    interest1, interest2 = _two_interests(rng, n)
    device = rng.choice(len(DEVICE_TYPES), size=n, p=DEVICE_SHARES).astype(np.int64)
    bias = rng.normal(0.0, 0.3, size=n)
    # Heavy users (high traffic share) have long histories, hence precise ctr_hist.
    impressions = rng.poisson(popularity * 2_000_000) + 1
    hist_p = sigmoid(CLICK_BASE + 0.5 + bias)
    ctr_hist, _ = _smoothed_rate(rng, impressions, hist_p, prior=fs.DEFAULT_USER_CTR, strength=20.0)
    return Users(
        ids=[f"u{i:05d}" for i in range(n)],
        age=rng.choice(len(AGES), size=n, p=[0.14, 0.24, 0.22, 0.17, 0.13, 0.10]).astype(np.int64),
        gender=rng.choice(len(GENDERS), size=n, p=[0.48, 0.47, 0.05]).astype(np.int64),
        interest1=interest1,
        interest2=interest2,
        device=device,
        os=os_for_device(rng, device),
        country=rng.choice(len(COUNTRIES), size=n, p=rng.dirichlet(np.full(len(COUNTRIES), 1.5))).astype(
            np.int64
        ),
        ctr_hist=ctr_hist,
        activity=np.round(np.log1p(impressions.astype(np.float64)), STAT_DECIMALS),
        popularity=popularity,
        bias=bias,
    )


def _make_ads(rng: np.random.Generator, n: int, n_campaigns: int, n_advertisers: int) -> Ads:
    adv_category = rng.integers(0, len(IAB_CATEGORIES), size=n_advertisers)
    # Every advertiser runs at least one campaign; the rest go to random advertisers.
    campaign_adv = np.concatenate(
        [rng.permutation(n_advertisers), rng.integers(0, n_advertisers, size=n_campaigns - n_advertisers)]
    )
    off_category = rng.random(n_campaigns) < 0.2
    campaign_category = np.where(
        off_category, rng.integers(0, len(IAB_CATEGORIES), size=n_campaigns), adv_category[campaign_adv]
    )
    campaign = np.concatenate([np.arange(n_campaigns), rng.integers(0, n_campaigns, size=n - n_campaigns)])
    campaign = rng.permutation(campaign).astype(np.int64)
    advertiser = campaign_adv[campaign].astype(np.int64)
    quality = rng.normal(0.0, 0.5, size=n)
    cvr_quality = rng.normal(0.0, 0.4, size=n)
    advertiser_cvr = rng.normal(0.0, 0.4, size=n_advertisers)
    # Priors from a finite history: lognormal impression counts, clicks, then conversions of those clicks.
    impressions = np.maximum(rng.lognormal(np.log(3_000.0), 1.0, size=n).astype(np.int64), 10)
    prior_ctr, clicks = _smoothed_rate(
        rng, impressions, sigmoid(CLICK_BASE + 0.5 + quality), prior=fs.DEFAULT_AD_CTR, strength=100.0
    )
    prior_cvr, _ = _smoothed_rate(
        rng,
        clicks,
        sigmoid(CONV_BASE + 0.3 + advertiser_cvr[advertiser] + cvr_quality),
        prior=fs.DEFAULT_AD_CVR,
        strength=20.0,
    )
    return Ads(
        ids=[f"ad{i:05d}" for i in range(n)],
        campaign=campaign,
        advertiser=advertiser,
        category=campaign_category[campaign].astype(np.int64),
        prior_ctr=prior_ctr,
        prior_cvr=prior_cvr,
        popularity=np.asarray(rng.dirichlet(np.full(n, 2.0)), dtype=np.float64),
        quality=quality,
        cvr_quality=cvr_quality,
        campaign_ids=[f"c{i:04d}" for i in range(n_campaigns)],
        advertisers=[f"brand{i}.com" for i in range(n_advertisers)],
        advertiser_cvr=advertiser_cvr,
    )


_APP_WORDS: Final = ("game", "puzzle", "social", "weather", "music", "shop", "video", "fitness")
_SITE_WORDS: Final = ("news", "sports", "recipes", "travel", "tech", "finance", "autos", "health")


def _make_publishers(rng: np.random.Generator, n: int) -> Publishers:
    is_app = rng.random(n) < 0.6
    word = rng.integers(0, len(_APP_WORDS), size=n)
    names = [
        f"com.example.{_APP_WORDS[w]}{i}" if app else f"{_SITE_WORDS[w]}{i}.example"
        for i, (app, w) in enumerate(zip(is_app.tolist(), word.tolist(), strict=True))
    ]
    n_placements = rng.integers(2, 5, size=n)
    placement_pub = np.repeat(np.arange(n), n_placements).astype(np.int64)
    slot = np.concatenate([np.arange(k) for k in n_placements.tolist()])
    total = int(n_placements.sum())
    return Publishers(
        ids=[f"pub{i:04d}" for i in range(n)],
        is_app=is_app,
        name=names,
        category=rng.integers(0, len(IAB_CATEGORIES), size=n).astype(np.int64),
        popularity=_zipf_popularity(rng, n, offset=5.0, exponent=1.0),
        quality=rng.normal(0.0, 0.3, size=n),
        placement_pub=placement_pub,
        tagid=[f"pub{p:04d}-slot{s}" for p, s in zip(placement_pub.tolist(), slot.tolist(), strict=True)],
        size=rng.choice(len(SIZES), size=total, p=[0.35, 0.2, 0.15, 0.1, 0.05, 0.15]).astype(np.int64),
        pos=rng.choice(len(POSITIONS), size=total, p=[0.2, 0.3, 0.02, 0.2, 0.08, 0.08, 0.07, 0.05]).astype(
            np.int64
        ),
        placement_effect=rng.normal(0.0, 0.1, size=total),
    )


def make_world(
    seed: int = WORLD_SEED,
    *,
    n_users: int = 20_000,
    n_ads: int = 1_000,
    n_campaigns: int = 200,
    n_advertisers: int = 150,
    n_publishers: int = 300,
) -> World:
    """The entity tables; a pure function of its arguments (one numpy Generator, fixed draw order)."""
    rng = np.random.default_rng(seed)
    return World(
        users=_make_users(rng, n_users),
        ads=_make_ads(rng, n_ads, n_campaigns, n_advertisers),
        publishers=_make_publishers(rng, n_publishers),
        os_effect=rng.normal(0.0, 0.1, size=len(OSES)),
        country_effect=rng.normal(0.0, 0.1, size=len(COUNTRIES)),
    )
