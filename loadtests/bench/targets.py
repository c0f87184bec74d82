"""The benchmark's targets, and what changed since the previous committed run, read from results JSON.

Both work on the results document `report.write_json` writes (and commits), so the report can say, from
the numbers alone, which targets this run met and how the gateway moved since the run before it.

Targets (this 2-core machine, 50 candidates per bid):
  gateway server CPU per bid at max throughput   <= 300 us
  gateway throughput within the p99 bound        >= 3x the KServe transformer's
  gateway p50 added over direct Triton           <= 1 ms at the fixed rate
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

Document = dict[str, Any]

MAX_GATEWAY_CPU_US: Final = 300.0
MIN_THROUGHPUT_VS_KSERVE: Final = 3.0
MAX_ADDED_P50_MS: Final = 1.0


@dataclass(frozen=True, slots=True)
class TargetCheck:
    name: str
    target: str
    measured: float | None
    unit: str
    met: bool | None  # None: not measured in this run (an arm left out)


@dataclass(frozen=True, slots=True)
class Change:
    name: str
    unit: str
    before: float | None
    now: float | None


def _arm(document: Document, name: str) -> Document | None:
    return next((arm for arm in document.get("arms", []) if arm["name"] == name), None)


def gateway_cpu_at_max(document: Document) -> float | None:
    arm = _arm(document, "gateway")
    best = arm["max_throughput_within_p99_bound"] if arm else None
    value = best["cpu_us_per_bid"].get("server") if best else None
    return float(value) if value is not None else None


def gateway_max_throughput(document: Document) -> float | None:
    arm = _arm(document, "gateway")
    best = arm["max_throughput_within_p99_bound"] if arm else None
    return float(best["achieved_rate"]) if best else None


def fixed_rate_p50(document: Document, arm_name: str) -> float | None:
    """An arm's p50 at the fixed rate (ms), None when the arm did not run."""
    arm = _arm(document, arm_name)
    fixed = arm["fixed_rate"] if arm else None
    return float(fixed["p50_ms"]) if fixed else None


def _ratio(key: str) -> Callable[[Document], float | None]:
    def read(document: Document) -> float | None:
        value = document.get("ratios", {}).get(key)
        return float(value) if value is not None else None

    return read


def target_checks(document: Document) -> list[TargetCheck]:
    cpu = gateway_cpu_at_max(document)
    vs_kserve = _ratio("gateway_vs_kserve_throughput")(document)
    added_p50 = _ratio("gateway_added_p50_ms_at_fixed")(document)
    return [
        TargetCheck(
            "gateway server CPU per bid at max throughput",
            f"<= {MAX_GATEWAY_CPU_US:g} us",
            cpu,
            " us",
            None if cpu is None else cpu <= MAX_GATEWAY_CPU_US,
        ),
        TargetCheck(
            "gateway / KServe throughput within the p99 bound",
            f">= {MIN_THROUGHPUT_VS_KSERVE:g}x",
            vs_kserve,
            "x",
            None if vs_kserve is None else vs_kserve >= MIN_THROUGHPUT_VS_KSERVE,
        ),
        TargetCheck(
            "gateway p50 added over direct Triton at the fixed rate",
            f"<= {MAX_ADDED_P50_MS:g} ms",
            added_p50,
            " ms",
            None if added_p50 is None else added_p50 <= MAX_ADDED_P50_MS,
        ),
    ]


_TRACKED: Final[tuple[tuple[str, str, Callable[[Document], float | None]], ...]] = (
    ("gateway server CPU per bid at max throughput", " us", gateway_cpu_at_max),
    ("gateway max throughput within the p99 bound", " bids/s", gateway_max_throughput),
    ("gateway / direct Triton throughput", "x", _ratio("gateway_vs_direct_throughput")),
    ("gateway / KServe throughput", "x", _ratio("gateway_vs_kserve_throughput")),
    ("gateway p50 added over direct Triton", " ms", _ratio("gateway_added_p50_ms_at_fixed")),
)


def changes(previous: Document, now: Document) -> list[Change]:
    """The tracked numbers in the previous results and in this run (None where a run lacks one)."""
    return [Change(name, unit, read(previous), read(now)) for name, unit, read in _TRACKED]
