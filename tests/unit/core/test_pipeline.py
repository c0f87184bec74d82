"""BidPipeline without servers: a store that knows nobody and a scorer with fixed outputs, around the real
columns, auction and response."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from gateway.core.currency import CurrencyTable
from gateway.core.eligibility import LossReason, decode_reasons
from gateway.core.pipeline import BidPipeline, PipelineConfig
from gateway.core.ports import AdFeatures, AdKeys, Scores, UserFeatures, ad_defaults, user_defaults
from gateway.openrtb import BidRequest, encode_response


class UnknownEverything:
    """A FeatureStore that holds nobody: every user and ad gets the defaults."""

    async def user_features(self, user_key: str | None) -> UserFeatures:
        return user_defaults()

    async def ad_features(self, ads: AdKeys) -> AdFeatures:
        return ad_defaults(ads)

    def ready(self) -> bool:
        return True


class FixedScorer:
    """Triton's output shape, float32 [N, 1]: candidate c gets pctr[c] and pCVR 0.5."""

    def __init__(self, pctr: list[float]) -> None:
        self.pctr = pctr

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores:
        n = len(cat_ids)
        return Scores(
            pctr=np.array(self.pctr, dtype=np.float32).reshape(n, 1),
            pcvr=np.full((n, 1), 0.5, dtype=np.float32),
            model_version="m1",
        )

    async def ready(self) -> bool:
        return True


def bid_pipeline(pctr: list[float]) -> BidPipeline:
    config = PipelineConfig(seat="s", default_tmax_s=0.1, network_margin_s=0.01, server_cap_s=0.2)
    return BidPipeline(
        UnknownEverything(), FixedScorer(pctr), CurrencyTable.default(), config, hour=lambda: 12
    )


def candidate(ad_id: str, advertiser: str, bid: float) -> dict[str, Any]:
    return {"id": ad_id, "campaign_id": f"c-{ad_id}", "advertiser": advertiser, "bid_type": "cpc", "bid": bid}


@pytest.mark.filterwarnings("error")  # e.g. numpy's deprecated float() of a [1]-shaped score row
async def test_one_imp_bid_carries_the_models_scores_and_the_second_price() -> None:
    body = {
        "id": "r1",
        "imp": [{"id": "1", "bidfloor": 0.5}],
        "ext": {"candidates": [candidate("a", "a.com", 1.0), candidate("b", "b.com", 1.0)]},
    }
    decision = await bid_pipeline([0.02, 0.03]).decide(msgspec.convert(body, BidRequest), time.monotonic())
    assert decision.outcome == "bid"
    assert decision.response.seatbid is not None
    [bid] = decision.response.seatbid[0].bid
    pctr_a, pctr_b = (float(np.float32(p)) for p in (0.02, 0.03))
    assert bid.adid == "b"
    assert bid.ext is not None
    assert (bid.ext.pctr, bid.ext.pcvr) == (pctr_b, 0.5)
    assert bid.ext.ecpm == round(1.0 * (1000.0 * pctr_b), 6)
    assert bid.price == round(1000.0 * pctr_a + 0.01, 4)  # the runner-up's eCPM plus 0.01
    assert decision.loss_codes is not None
    assert decode_reasons(decision.loss_codes) == [LossReason.LOST_AUCTION, None]
    assert msgspec.json.decode(encode_response(decision.response))["seatbid"][0]["bid"][0]["adid"] == "b"


async def test_two_imps_one_win_per_advertiser() -> None:
    body = {
        "id": "r2",
        "imp": [{"id": "1"}, {"id": "2"}],
        "ext": {
            "candidates": [
                candidate("a", "x.com", 3.0),
                candidate("b", "X.COM", 2.0),  # the same advertiser as a: held back from imp 2
                candidate("c", "y.com", 1.0),
            ]
        },
    }
    decision = await bid_pipeline([0.1, 0.1, 0.1]).decide(msgspec.convert(body, BidRequest), time.monotonic())
    assert decision.response.seatbid is not None
    assert [(bid.impid, bid.adid) for bid in decision.response.seatbid[0].bid] == [("1", "a"), ("2", "c")]
    assert decision.loss_codes is not None
    assert decode_reasons(decision.loss_codes) == [None, LossReason.ADVERTISER_ALREADY_WON, None]
