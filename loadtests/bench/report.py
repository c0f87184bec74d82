"""The benchmark's outputs: results JSON, the ratios, docs/benchmarks.md and its plots (matplotlib)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt

from gateway.local_triton import REPO_ROOT
from loadtests.bench.runner import ArmResult, BenchConfig, StepResult
from loadtests.bench.targets import changes, fixed_rate_p50, target_checks

__all__ = ["ratios", "write_json", "write_markdown", "write_plots"]

_COLOURS = {
    "direct": "#4c72b0",
    "http-floor": "#937860",
    "gateway": "#55a868",
    "gateway-grpc": "#64b5cd",
    "gateway-fixed": "#ccb974",
    "gateway-w2": "#8172b2",
    "kserve": "#c44e52",
    "kserve-default-logging": "#dd8452",
}
_ROLES = ("server", "triton", "generator")
# Written by `make profile` (loadtests/profile.py) beside the bench's results; the report links it.
PROFILE = REPO_ROOT / "loadtests" / "results" / "profile.md"
PROFILE_NAME = "profile.md"


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _best_rate(arm: ArmResult | None) -> float | None:
    return arm.best.achieved_rate if arm and arm.best else None


def _cpu(step: StepResult | None, role: str) -> float | None:
    return step.cpu_us_per_bid.get(role) if step else None


def ratios(arms: Sequence[ArmResult], primary: str = "gateway") -> dict[str, float | None]:
    """The headline: throughput within the p99 bound and CPU per bid, the primary gateway arm against the
    others (and the HTTP transport against gRPC when both ran)."""
    by = {a.name: a for a in arms}
    gateway, direct, kserve = by.get(primary), by.get("direct"), by.get("kserve")
    grpc, http = by.get("gateway-grpc"), by.get("gateway")
    out: dict[str, float | None] = {
        "gateway_vs_direct_throughput": _ratio(_best_rate(gateway), _best_rate(direct)),
        "gateway_vs_kserve_throughput": _ratio(_best_rate(gateway), _best_rate(kserve)),
        "kserve_vs_gateway_server_cpu_per_bid_at_max": _ratio(
            _cpu(kserve.best if kserve else None, "server"), _cpu(gateway.best if gateway else None, "server")
        ),
        "kserve_vs_gateway_server_cpu_per_bid_at_fixed": _ratio(
            _cpu(kserve.fixed if kserve else None, "server"),
            _cpu(gateway.fixed if gateway else None, "server"),
        ),
        "http_vs_grpc_server_cpu_per_bid_at_max": _ratio(
            _cpu(http.best if http else None, "server"), _cpu(grpc.best if grpc else None, "server")
        ),
        "http_vs_grpc_throughput": _ratio(_best_rate(http), _best_rate(grpc)),
    }
    if gateway and gateway.paired:
        # The median of paired differences: each round's direct and gateway runs are seconds apart.
        out["gateway_added_p50_ms_at_fixed"] = round(
            float(np.median([g.p50_ms - d.p50_ms for d, g in gateway.paired])), 2
        )
        out["gateway_added_p99_ms_at_fixed"] = round(
            float(np.median([g.p99_ms - d.p99_ms for d, g in gateway.paired])), 2
        )
    elif gateway and direct and gateway.fixed and direct.fixed:
        out["gateway_added_p50_ms_at_fixed"] = round(gateway.fixed.p50_ms - direct.fixed.p50_ms, 2)
        out["gateway_added_p99_ms_at_fixed"] = round(gateway.fixed.p99_ms - direct.fixed.p99_ms, 2)
    return out


def _arm_json(arm: ArmResult) -> dict[str, Any]:
    def step(s: StepResult | None) -> dict[str, Any] | None:
        if s is None:
            return None
        return {**dataclasses.asdict(s), "box_cpu_us_per_bid": round(s.box_cpu_us_per_bid, 1)}

    return {
        "name": arm.name,
        "description": arm.description,
        "max_throughput_within_p99_bound": step(arm.best),
        "fixed_rate": step(arm.fixed),
        "steps": [step(s) for s in arm.steps],
        "paired_with_direct": [{"direct": step(d), "gateway": step(g)} for d, g in arm.paired],
        "note": arm.note,
    }


def _repo_relative(path: Path) -> str | None:
    resolved = path.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else None


def write_json(
    path: Path, arms: Sequence[ArmResult], config: BenchConfig, meta: dict[str, Any]
) -> dict[str, Any]:
    # Paths relative to the repository (or dropped when outside it): the results are committed, and a
    # path of the machine that ran the bench means nothing to the next reader.
    config_json = {
        k: _repo_relative(v) if isinstance(v, Path) else v
        for k, v in dataclasses.asdict(config).items()
        if not isinstance(v, Path) or _repo_relative(v) is not None
    }
    document = {
        "meta": meta,
        "config": config_json,
        "ratios": ratios(arms, config.primary_arm),
        "arms": [_arm_json(a) for a in arms],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return document


def write_plots(img_dir: Path, arms: Sequence[ArmResult], config: BenchConfig) -> dict[str, Path]:
    img_dir.mkdir(parents=True, exist_ok=True)
    latency = img_dir / "bench_latency.png"
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for arm in arms:
        steps = [s for s in arm.steps if s.bids]
        colour = _COLOURS.get(arm.name, "black")
        rates = [s.offered_rate for s in steps]
        ax.plot(rates, [s.p99_ms for s in steps], "o-", color=colour, label=f"{arm.name} p99")
        ax.plot(rates, [s.p50_ms for s in steps], "s--", color=colour, alpha=0.7, label=f"{arm.name} p50")
    ax.axhline(
        config.p99_bound_ms, color="grey", linestyle=":", label=f"p99 bound {config.p99_bound_ms:g} ms"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (bids/s, open loop, Poisson)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency percentiles vs offered load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(latency, dpi=110)
    plt.close(fig)

    cpu = img_dir / "bench_cpu.png"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for ax, which in zip(axes, ("best", "fixed"), strict=True):
        names = [a.name for a in arms]
        bottoms = [0.0] * len(arms)
        for role, shade in zip(_ROLES, ("#55a868", "#4c72b0", "#bbbbbb"), strict=True):
            values = [
                (getattr(a, which).cpu_us_per_bid.get(role, 0.0) if getattr(a, which) else 0.0) for a in arms
            ]
            ax.bar(names, values, bottom=bottoms, color=shade, label=role)
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        title = (
            "at max throughput within the p99 bound"
            if which == "best"
            else (f"at the fixed rate {config.fixed_rate:g}/s")
        )
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("CPU microseconds per bid")
    axes[0].legend()
    fig.suptitle("CPU per bid by process")
    fig.tight_layout()
    fig.savefig(cpu, dpi=110)
    plt.close(fig)
    return {"latency": latency, "cpu": cpu}


def _fmt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.2f}{unit}"


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _paired_gateway(arms: Sequence[ArmResult]) -> ArmResult | None:
    return next((a for a in arms if a.paired), None)


def _paired_note(arms: Sequence[ArmResult]) -> str:
    gateway = _paired_gateway(arms)
    if gateway is None:
        return " (two separate runs: see the fixed-rate table)"
    return f" (median of {len(gateway.paired)} paired rounds, below)"


def _paired_section(arms: Sequence[ArmResult], config: BenchConfig) -> list[str]:
    gateway = _paired_gateway(arms)
    if gateway is None:
        return []
    return [
        "## Latency added over direct Triton, paired",
        "",
        f"Direct Triton and the gateway alternate at {config.fixed_rate:g} bids/s, {config.fixed_s:g} s "
        "each, the same arrival seed within a round; the headline is the median of the per-round "
        "differences. Separate runs minutes apart differ here by as much as the difference itself.",
        "",
        "| round | direct p50 ms | gateway p50 ms | added p50 ms | direct p99 ms | gateway p99 ms "
        "| added p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {i} | {d.p50_ms:.2f} | {g.p50_ms:.2f} | {g.p50_ms - d.p50_ms:.2f} | {d.p99_ms:.2f} | "
            f"{g.p99_ms:.2f} | {g.p99_ms - d.p99_ms:.2f} |"
            for i, (d, g) in enumerate(gateway.paired, start=1)
        ),
        "",
    ]


def _targets_section(document: dict[str, Any]) -> list[str]:
    verdicts = {True: "met", False: "**not met**", None: "not measured"}
    return [
        "## Targets",
        "",
        "| target | bound | this run | verdict |",
        "| --- | ---: | ---: | --- |",
        *(
            f"| {c.name} | {c.target} | {_fmt(c.measured, c.unit)} | {verdicts[c.met]} |"
            for c in target_checks(document)
        ),
        "",
        *_floor_note(document),
    ]


def _floor_note(document: dict[str, Any]) -> list[str]:
    floor, direct = fixed_rate_p50(document, "http-floor"), fixed_rate_p50(document, "direct")
    if floor is None:
        return []
    return [
        f"For scale: the http-floor arm, one HTTP round trip to uvicorn with no work behind it, has a p50 "
        f"of {floor:.2f} ms at the fixed rate (direct Triton: {_fmt(direct, ' ms')}). Any HTTP gateway in "
        "Python pays that hop on this machine before it does any work.",
        "",
    ]


def _changes_section(previous: dict[str, Any] | None, document: dict[str, Any]) -> list[str]:
    if previous is None:
        return []
    when = previous.get("meta", {}).get("started_at", "unknown date")
    return [
        "## Since the previous run",
        "",
        f"Against the results this run replaced ({when}); same machine class, so the noise above applies.",
        "",
        "| number | before | now |",
        "| --- | ---: | ---: |",
        *(
            f"| {c.name} | {_fmt(c.before, c.unit)} | {_fmt(c.now, c.unit)} |"
            for c in changes(previous, document)
        ),
        "",
    ]


def _row(arm: ArmResult, step: StepResult | None) -> str:
    if step is None:
        return f"| {arm.name} | did not pass at the first rate | | | | | | |"
    cpu = step.cpu_us_per_bid
    return (
        f"| {arm.name} | {step.achieved_rate:,.0f} | {step.p50_ms:.2f} | {step.p99_ms:.2f} | "
        f"{_us(cpu.get('server'))} | {_us(cpu.get('triton'))} | {_us(cpu.get('generator'))} | "
        f"{_us(cpu.get('server', 0.0) + cpu.get('triton', 0.0))} |"
    )


def write_markdown(  # noqa: PLR0917 - one caller, every input named
    path: Path,
    document: dict[str, Any],
    arms: Sequence[ArmResult],
    config: BenchConfig,
    plots: dict[str, Path],
    json_path: Path,
    previous: dict[str, Any] | None = None,
) -> None:
    """`previous`: the results document this run replaces, for a section on what changed since."""
    meta, r = document["meta"], document["ratios"]
    header = (
        "| system | bids/s | p50 ms | p99 ms | server CPU us/bid | Triton CPU us/bid | generator CPU us/bid "
        "| server + Triton us/bid |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    rel = os.path.relpath
    lines = [
        "# Benchmarks: bid-gateway vs direct Triton vs a KServe transformer",
        "",
        "Written by `make bench` (`python -m loadtests.bench`); do not edit by hand. Raw numbers: "
        f"[`{rel(json_path, path.parent)}`]({rel(json_path, path.parent)}).",
        "",
        f"Machine: {meta['cpus']} CPUs ({meta['cpu_model']}), Python {meta['python']}, "
        f"{meta['started_at']}. Triton {meta['triton']} (CPU, python backend + onnxruntime), model "
        f"`ranker` version {config.model_version}, started once for all arms. Workload: "
        f"{meta['workload']}. One open-loop generator (Poisson arrivals, latency from the scheduled "
        "instant, raw HTTP/1.1 keep-alive over asyncio) drives the HTTP arms; the direct arm is an "
        "async tritonclient loop with the same arrival process. Triton, the server under test and the "
        "generator share the machine's cores, so absolute numbers are noisy; the ratios are the result.",
        "",
        "## Headline ratios",
        "",
        f"- gateway / direct Triton, throughput within p99 <= {config.p99_bound_ms:g} ms: "
        f"**{_fmt(r.get('gateway_vs_direct_throughput'), 'x')}**",
        f"- gateway / KServe transformer, throughput within the p99 bound: "
        f"**{_fmt(r.get('gateway_vs_kserve_throughput'), 'x')}**",
        f"- KServe / gateway, server CPU per bid at max throughput: "
        f"**{_fmt(r.get('kserve_vs_gateway_server_cpu_per_bid_at_max'), 'x')}**; at the fixed rate: "
        f"**{_fmt(r.get('kserve_vs_gateway_server_cpu_per_bid_at_fixed'), 'x')}**",
        f"- gateway latency added over direct Triton at {config.fixed_rate:g}/s: p50 "
        f"**{_fmt(r.get('gateway_added_p50_ms_at_fixed'), ' ms')}**, p99 "
        f"{_fmt(r.get('gateway_added_p99_ms_at_fixed'), ' ms')}"
        f"{_paired_note(arms)}",
        "",
        *_targets_section(document),
        *_paired_section(arms, config),
        *_changes_section(previous, document),
        f"## Max throughput with p99 <= {config.p99_bound_ms:g} ms",
        "",
        "The highest passing step of a ladder of offered rates (x"
        f"{config.growth:g} per {config.step_s:g} s step, then {config.refine} bisection steps; a step "
        f"fails on p99 over the bound, more than {config.max_error_rate:.0%} errors or an undrained "
        "backlog"
        + (
            "; a failing step is measured once more, and its rate fails only when both tries do: both are "
            "listed under Every step"
            if config.retry_failed_steps
            else ""
        )
        + (
            f"; an arm that fails the first rung is stepped down (/{config.growth:g}), up to "
            f"{config.steps_down} times"
            if config.steps_down
            else ""
        )
        + "). CPU is process time (user + system, all threads and child processes) per successful "
        "bid during that step.",
        "",
        header,
        *(_row(a, a.best) for a in arms),
        "",
        f"## At a fixed offered rate of {config.fixed_rate:g} bids/s ({config.fixed_s:g} s)",
        "",
        header,
        *(_row(a, a.fixed) for a in arms),
        "",
        "Where the gateway's CPU goes per bid: the latest `make profile`, "
        f"[{PROFILE_NAME}]({rel(PROFILE, path.parent)}) (a table per stage) and its "
        f"[flamegraph]({rel(PROFILE.with_suffix('.svg'), path.parent)}).",
        "",
        "## Plots",
        "",
        f"![latency vs offered load]({rel(plots['latency'], path.parent)})",
        "",
        f"![CPU per bid]({rel(plots['cpu'], path.parent)})",
        "",
        "## The arms",
        "",
        *(f"- **{a.name}**: {a.description}" for a in arms),
        "",
        "The KServe transformer (`loadtests/kserve_transformer.py`) runs the gateway's own `BidPipeline` "
        "(feature assembly via `gateway.core.features` and the embedded store, the auction) split at "
        "its scoring step across `Model.preprocess` / KServe's gRPC-v2 `predict` / `Model.postprocess`; "
        "its answers are checked identical to the gateway's before the measurement. It skips the "
        "gateway's cross-field request checks, metrics, circuit breaker and fallback, each of which "
        "favours it. It runs from its own venv (`.venv-kserve`: kserve pins protobuf 6).",
        "",
        "## Every step",
        "",
        "Bids per Triton call: the gateway's micro-batcher merging concurrent bids into one request "
        "(from its own `/metrics` around each step).",
        "",
        "| system | offered/s | achieved/s | p50 ms | p90 ms | p99 ms | errors | server us/bid | bids per "
        "Triton call | pass |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
        *(
            f"| {a.name} | {s.offered_rate:,.0f} | {s.achieved_rate:,.0f} | {s.p50_ms:.2f} | "
            f"{s.p90_ms:.2f} | {s.p99_ms:.2f} | {s.errors + s.unfinished} | "
            f"{_us(s.cpu_us_per_bid.get('server'))} | {_fmt(s.callers_per_call)} | "
            f"{'yes' if s.passed else 'no'} |"
            for a in arms
            for s in a.steps
        ),
        "",
        "Reproduce: `make bench` (a few minutes; `python -m loadtests.bench --help` for the knobs, "
        "`--tiny` for a seconds-long smoke run).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + _kept_sections(path))


# Sections other benchmarks own in the same document (`make bench-retrieval`, `python -m
# loadtests.overload`): each writes its own with `write_kept_section`; a bench run carries them over.
RETRIEVAL_SECTION: Final = ("<!-- retrieval:start -->", "<!-- retrieval:end -->")
OVERLOAD_SECTION: Final = ("<!-- overload:start -->", "<!-- overload:end -->")
_KEPT_SECTIONS: Final = (RETRIEVAL_SECTION, OVERLOAD_SECTION)


def write_kept_section(report: Path, markers: tuple[str, str], section: str) -> None:
    """Replace the section between `markers` in `report` (docs/benchmarks.md), or append it."""
    start, end = markers
    block = f"{start}\n{section}{end}\n"
    text = report.read_text() if report.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    report.write_text(text)


def _kept_sections(path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    kept = []
    for start, end in _KEPT_SECTIONS:
        if start in text and end in text:
            kept.append(start + text.split(start, 1)[1].split(end, 1)[0] + end + "\n")
    return "".join(f"\n{block}" for block in kept)
