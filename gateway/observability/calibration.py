"""Live model calibration: counters per model version, experiment arm and role (live or shadow).

Fed by the event routes (win = impression, click, conversion) from the model attribution on the bid
record, never by the bid path. Prometheus computes every ratio over a window (recording rules in the
chart), so replicas and workers simply add up:

  pCTR calibration  = increase(predicted_clicks) / increase(clicks)        (1.0 is calibrated)
  pCVR calibration  = increase(predicted_conversions) / increase(conversions)
  normalized entropy (He et al., ADKDD 2014) = mean log loss / entropy of the observed rate, where the
  log loss sum is  nll_base + nll_event - nll_event_base  (each a monotonic counter; see below).

Log loss over impressions, y = 1 for a click: sum -[y ln p + (1 - y) ln(1 - p)]
  = sum over impressions of -ln(1 - p)  +  sum over clicks of (-ln p) - (-ln(1 - p)).
Counting the first at the win and the two others at the click keeps every counter non-decreasing (a
Prometheus counter may not go down), with no need to know at win time whether a click will follow. The
same holds for pCVR over clicks and conversions.

Labels are bounded by configuration: versions and arms an operator configured (`role` is live or shadow).
"""

from __future__ import annotations

import math
from typing import Final

from prometheus_client import CollectorRegistry, Counter

from gateway.stores.attribution import ModelAttribution, Prediction

__all__ = ["CalibrationMetrics", "neg_log"]

_LABELS: Final = ["version", "arm", "role"]
_P_FLOOR: Final = 1e-6  # a prediction of exactly 0 or 1 would make one event's log loss infinite


def neg_log(p: float) -> float:
    """-ln(p), p clipped into [1e-6, 1 - 1e-6]."""
    return -math.log(min(max(p, _P_FLOOR), 1.0 - _P_FLOOR))


class CalibrationMetrics:
    """The calibration counters, registered on `registry`; `on_*` take what a notice found on the record."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: list[str] = _LABELS) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.impressions = counter("bidgw_model_impressions", "Won impressions (win notices) by model")
        self.clicks = counter("bidgw_model_clicks", "Clicks on won impressions by model")
        self.conversions = counter("bidgw_model_conversions", "Conversions after a click by model")
        self.predicted_clicks = counter(
            "bidgw_model_predicted_clicks", "Sum of pCTR over won impressions (expected clicks)"
        )
        self.predicted_conversions = counter(
            "bidgw_model_predicted_conversions", "Sum of pCVR over clicks (expected conversions)"
        )
        self.pctr_nll_base = counter(
            "bidgw_model_pctr_nll_base", "Sum of -ln(1 - pCTR) over won impressions (log loss, part 1 of 3)"
        )
        self.pctr_nll_event = counter(
            "bidgw_model_pctr_nll_event", "Sum of -ln(pCTR) over clicks (part 2 of 3)"
        )
        self.pctr_nll_event_base = counter(
            "bidgw_model_pctr_nll_event_base", "Sum of -ln(1 - pCTR) over clicks (part 3 of 3, subtracted)"
        )
        self.pcvr_nll_base = counter(
            "bidgw_model_pcvr_nll_base", "Sum of -ln(1 - pCVR) over clicks (log loss, part 1 of 3)"
        )
        self.pcvr_nll_event = counter(
            "bidgw_model_pcvr_nll_event", "Sum of -ln(pCVR) over conversions (part 2 of 3)"
        )
        self.pcvr_nll_event_base = counter(
            "bidgw_model_pcvr_nll_event_base",
            "Sum of -ln(1 - pCVR) over conversions (part 3 of 3, subtracted)",
        )
        self.spend_micros = counter(
            "bidgw_model_spend_micros", "Spend (micro-USD) of won impressions by the live model and arm"
        )
        self.events = Counter(
            "bidgw_feedback_events",
            "Click and conversion notices by kind and outcome (recorded, duplicate, unknown_bid, not_won, "
            "not_clicked)",
            ["kind", "outcome"],
            registry=registry,
        )

    def _predictions(self, attribution: ModelAttribution, shadow: bool) -> list[tuple[Prediction, str]]:
        found = [(attribution.live, "live")]
        if shadow and attribution.shadow is not None:
            found.append((attribution.shadow, "shadow"))
        return found

    def on_impression(self, attribution: ModelAttribution, cost_micros: int) -> None:
        """A win notice: the live model's impression, and the shadow's when the record carries one."""
        self.spend_micros.labels(attribution.live.version, attribution.arm, "live").inc(cost_micros)
        for prediction, role in self._predictions(attribution, shadow=True):
            labels = (prediction.version, attribution.arm, role)
            self.impressions.labels(*labels).inc()
            self.predicted_clicks.labels(*labels).inc(prediction.pctr)
            self.pctr_nll_base.labels(*labels).inc(neg_log(1.0 - prediction.pctr))

    def on_click(self, attribution: ModelAttribution, shadow_counted: bool) -> None:
        for prediction, role in self._predictions(attribution, shadow_counted):
            labels = (prediction.version, attribution.arm, role)
            self.clicks.labels(*labels).inc()
            self.pctr_nll_event.labels(*labels).inc(neg_log(prediction.pctr))
            self.pctr_nll_event_base.labels(*labels).inc(neg_log(1.0 - prediction.pctr))
            self.predicted_conversions.labels(*labels).inc(prediction.pcvr)
            self.pcvr_nll_base.labels(*labels).inc(neg_log(1.0 - prediction.pcvr))

    def on_conversion(self, attribution: ModelAttribution, shadow_counted: bool) -> None:
        for prediction, role in self._predictions(attribution, shadow_counted):
            labels = (prediction.version, attribution.arm, role)
            self.conversions.labels(*labels).inc()
            self.pcvr_nll_event.labels(*labels).inc(neg_log(prediction.pcvr))
            self.pcvr_nll_event_base.labels(*labels).inc(neg_log(1.0 - prediction.pcvr))
