"""The report's targets and its comparison with the previous run, from results documents."""

from __future__ import annotations

from typing import Any

from loadtests.bench.targets import changes, target_checks


def _document(*, cpu: float | None, rate: float, vs_kserve: float | None, added_p50: float) -> dict[str, Any]:
    best = (
        None if cpu is None else {"achieved_rate": rate, "cpu_us_per_bid": {"server": cpu, "triton": 400.0}}
    )
    return {
        "meta": {"started_at": "2026-11-30 10:14 UTC"},
        "ratios": {
            "gateway_vs_direct_throughput": 0.25,
            "gateway_vs_kserve_throughput": vs_kserve,
            "gateway_added_p50_ms_at_fixed": added_p50,
        },
        "arms": [
            {
                "name": "direct",
                "max_throughput_within_p99_bound": {"achieved_rate": 2800.0, "cpu_us_per_bid": {}},
            },
            {"name": "gateway", "max_throughput_within_p99_bound": best},
        ],
    }


def test_each_target_is_judged_against_its_bound() -> None:
    # server 299 + Triton 400 = 699 us; vs direct 0.25x (fixed in the document).
    checks = target_checks(_document(cpu=299.0, rate=900.0, vs_kserve=2.9, added_p50=0.9))
    assert [(c.measured, c.met) for c in checks] == [
        (299.0, True),
        (699.0, True),
        (0.25, False),
        (2.9, False),
        (0.9, False),
    ]
    checks = target_checks(_document(cpu=501.0, rate=900.0, vs_kserve=3.0, added_p50=0.8))
    assert [c.met for c in checks] == [False, False, False, True, True]


def test_a_target_whose_arm_did_not_run_is_not_judged() -> None:
    checks = target_checks(_document(cpu=None, rate=0.0, vs_kserve=None, added_p50=0.5))
    assert [c.met for c in checks] == [None, None, False, None, True]


def test_targets_follow_the_primary_arm() -> None:
    document = _document(cpu=299.0, rate=900.0, vs_kserve=3.0, added_p50=0.5)
    document["config"] = {"primary_arm": "gateway-http"}
    document["arms"].append(
        {
            "name": "gateway-http",
            "max_throughput_within_p99_bound": {
                "achieved_rate": 1200.0,
                "cpu_us_per_bid": {"server": 250.0, "triton": 300.0},
            },
        }
    )
    checks = target_checks(document)
    assert [c.measured for c in checks[:2]] == [250.0, 550.0]


def test_changes_pair_the_previous_numbers_with_this_runs() -> None:
    before = _document(cpu=993.0, rate=599.0, vs_kserve=3.49, added_p50=2.04)
    now = _document(cpu=500.0, rate=900.0, vs_kserve=None, added_p50=1.1)
    by_name = {c.name: (c.before, c.now) for c in changes(before, now)}
    assert by_name["gateway server CPU per bid at max throughput"] == (993.0, 500.0)
    assert by_name["gateway max throughput within the p99 bound"] == (599.0, 900.0)
    assert by_name["gateway / KServe throughput"] == (3.49, None)
    assert by_name["gateway p50 added over direct Triton"] == (2.04, 1.1)
