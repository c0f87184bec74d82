"""Calibration counters: the three monotonic log-loss parts add up to the direct log loss."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry

from gateway.observability.calibration import CalibrationMetrics
from gateway.stores.attribution import ModelAttribution, Prediction, attribution_of


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_log_loss_from_the_counters_equals_the_direct_sum_and_shadow_counts_apart() -> None:
    registry = CollectorRegistry()
    metrics = CalibrationMetrics(registry)
    rng = random.Random(7)
    direct = 0.0
    for _ in range(500):
        p = rng.uniform(0.001, 0.9)
        attribution = ModelAttribution(
            "e/control", "CPC", Prediction("1", p, 0.1), Prediction("2", p / 2, 0.2)
        )
        metrics.on_impression(attribution, 1000)
        clicked = rng.random() < p
        if clicked:
            metrics.on_click(attribution, shadow_counted=False)
        direct += -math.log(p) if clicked else -math.log(1 - p)
    live = {"version": "1", "arm": "e/control", "role": "live"}
    from_counters = (
        value(registry, "bidgw_model_pctr_nll_base_total", **live)
        + value(registry, "bidgw_model_pctr_nll_event_total", **live)
        - value(registry, "bidgw_model_pctr_nll_event_base_total", **live)
    )
    assert math.isclose(from_counters, direct, rel_tol=1e-9)
    assert value(registry, "bidgw_model_impressions_total", **live) == 500
    assert value(registry, "bidgw_model_spend_micros_total", **live) == 500_000
    shadow = {"version": "2", "arm": "e/control", "role": "shadow"}
    assert value(registry, "bidgw_model_impressions_total", **shadow) == 500
    assert value(registry, "bidgw_model_clicks_total", **shadow) == 0  # the win did not see a shadow


def test_attribution_is_read_from_a_bid_record() -> None:
    record = {b"mv": b"2", b"ar": b"e/candidate", b"pc": b"0.02", b"pv": b"0.1", b"bt": b"CPA"}
    found = attribution_of(record)
    assert found == ModelAttribution("e/candidate", "CPA", Prediction("2", 0.02, 0.1))
    assert attribution_of({b"c": b"x"}) is None
    assert attribution_of({**record, b"pc": b"nan?"}) is None
    # A broken model's scores parse as floats but must not reach the calibration sums.
    assert attribution_of({**record, b"pc": b"nan"}) is None
    assert attribution_of({**record, b"pv": b"inf"}) is None
    assert attribution_of({**record, b"sv": b"3", b"sc": b"nan", b"sp": b"0.1"}) is None
