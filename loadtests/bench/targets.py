"""The benchmark's targets, and what changed since the previous committed run, read from results JSON.

Both work on the results document `report.write_json` writes (and commits), so the report can say, from
the numbers alone, which targets this run met and how the gateway moved since the run before it.

Targets (this 2-core machine, 50 candidates per bid), for the primary gateway arm (the default transport):
  gateway server CPU per bid at max throughput   <= 300 us
  gateway + Triton CPU per bid at max throughput <= 900 us
  gateway throughput within the p99 bound        >= 0.6x direct Triton's, >= 3x the KServe transformer's
  gateway p50 added over direct Triton           <= 0.8 ms at the fixed rate (paired rounds)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

Document = dict[str, Any]

MAX_GATEWAY_CPU_US: Final = 300.0
MAX_GATEWAY_PLUS_TRITON_CPU_US: Final = 900.0
MIN_THROUGHPUT_VS_DIRECT: Final = 0.6
MIN_THROUGHPUT_VS_KSERVE: Final = 3.0
MAX_ADDED_P50_MS: Final = 0.8


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


def primary_arm(document: Document) -> str:
    """The gateway arm the targets are about (results written before it was configurable: "gateway")."""
    return str(document.get("config", {}).get("primary_arm", "gateway"))


def _cpu_at_max(document: Document, *roles: str) -> float | None:
    arm = _arm(document, primary_arm(document))
    best = arm["max_throughput_within_p99_bound"] if arm else None
    values = [best["cpu_us_per_bid"].get(role) for role in roles] if best else [None]
    known = [float(v) for v in values if v is not None]
    return sum(known) if len(known) == len(values) else None


def gateway_cpu_at_max(document: Document) -> float | None:
    return _cpu_at_max(document, "server")


def gateway_and_triton_cpu_at_max(document: Document) -> float | None:
    return _cpu_at_max(document, "server", "triton")


def gateway_max_throughput(document: Document) -> float | None:
    arm = _arm(document, primary_arm(document))
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
    both = gateway_and_triton_cpu_at_max(document)
    vs_direct = _ratio("gateway_vs_direct_throughput")(document)
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
            "gateway + Triton CPU per bid at max throughput",
            f"<= {MAX_GATEWAY_PLUS_TRITON_CPU_US:g} us",
            both,
            " us",
            None if both is None else both <= MAX_GATEWAY_PLUS_TRITON_CPU_US,
        ),
        TargetCheck(
            "gateway / direct Triton throughput within the p99 bound",
            f">= {MIN_THROUGHPUT_VS_DIRECT:g}x",
            vs_direct,
            "x",
            None if vs_direct is None else vs_direct >= MIN_THROUGHPUT_VS_DIRECT,
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
