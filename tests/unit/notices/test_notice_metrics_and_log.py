"""Notice counters have bounded labels; the forged-notice log cannot be flooded."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from gateway.observability.metrics import NOTICE_KINDS, NOTICE_RESULTS, NoticeMetrics, loss_reason_label
from gateway.observability.rate_limited import RateLimitedLog


@pytest.mark.parametrize(
    ("code", "label"),
    [(0, "0"), (102, "102"), (213, "213"), (11, "unknown"), (150, "unknown"), (1000, "exchange_specific")],
)
def test_loss_reasons_map_to_bounded_labels(code: int, label: str) -> None:
    assert loss_reason_label(code) == label


def test_every_kind_and_result_is_exported_from_the_start() -> None:
    registry = CollectorRegistry()
    metrics = NoticeMetrics(registry)
    for kind in NOTICE_KINDS:
        for result in NOTICE_RESULTS:
            assert registry.get_sample_value("bidgw_notices_total", {"kind": kind, "result": result}) == 0
    metrics.count("bill", "forged")
    metrics.loss(102)
    metrics.loss(4242)
    assert registry.get_sample_value("bidgw_notices_total", {"kind": "bill", "result": "forged"}) == 1
    assert registry.get_sample_value("bidgw_notice_losses_total", {"reason": "102"}) == 1
    assert registry.get_sample_value("bidgw_notice_losses_total", {"reason": "exchange_specific"}) == 1


def test_a_flood_logs_a_burst_per_interval_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.flood"), burst=3, interval_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.flood"):
        written = [limited.warning("forged %s", i) for i in range(10)]
        assert written == [True] * 3 + [False] * 7
        assert limited.suppressed == 7
        now[0] = 60.0
        assert limited.warning("forged again")
    assert len(caplog.records) == 4
    assert caplog.records[-1].suppressed == 7  # type: ignore[attr-defined]
    assert limited.suppressed == 0
