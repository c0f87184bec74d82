"""`python -m loadtests.bench --tiny`: the whole command in seconds, so it cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.local_triton import REPO_ROOT, LocalTriton

pytestmark = pytest.mark.integration

KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"


def test_tiny_bench_writes_results_report_and_plots(triton: LocalTriton, tmp_path: Path) -> None:
    # The KServe arm needs its own venv (make bench builds it); without it the other arms still run.
    both = "direct,http-floor,gateway,gateway-grpc"
    arms = f"{both},kserve" if KSERVE_PYTHON.exists() else both
    assert triton.pid is not None
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench",
            "--tiny",
            "--arms",
            arms,
            "--triton-grpc-url",
            triton.grpc_url,
            "--triton-pid",
            str(triton.pid),
            "--triton-http-url",
            triton.http_address,
            "--results",
            str(tmp_path / "bench.json"),
            "--report",
            str(tmp_path / "benchmarks.md"),
            "--img-dir",
            str(tmp_path / "img"),
        ],
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    document = json.loads((tmp_path / "bench.json").read_text())
    names = [arm["name"] for arm in document["arms"]]
    assert names == arms.split(",")
    for arm in document["arms"]:
        fixed = arm["fixed_rate"]
        assert fixed["bids"] > 0, arm
        assert fixed["errors"] == 0, arm
        assert set(fixed["cpu_us_per_bid"]) >= {"triton", "generator"}
    assert all(document["meta"]["answers_match_gateway"].values())
    assert "http-floor" not in document["meta"]["answers_match_gateway"]  # it runs no auction
    report = (tmp_path / "benchmarks.md").read_text()
    assert "Headline ratios" in report
    assert "## Targets" in report
    # Both transports bid the same: the same winners at the same prices for the same requests.
    assert document["meta"]["answers_match_gateway"]["gateway-grpc"] is True
    # The gateway arms say how many bids went into each Triton call; the others have no batcher.
    for arm in document["arms"]:
        merged = arm["fixed_rate"]["callers_per_call"]
        assert (merged is not None and merged >= 1.0) == arm["name"].startswith("gateway"), arm["name"]
    assert "Bids per Triton call" in report
    bests = {arm["name"]: arm["max_throughput_within_p99_bound"] for arm in document["arms"]}
    if bests["gateway"] and bests["gateway-grpc"]:
        assert document["ratios"]["http_vs_grpc_server_cpu_per_bid_at_max"] is not None
    gateway = next(arm for arm in document["arms"] if arm["name"] == "gateway")
    [paired] = gateway["paired_with_direct"]  # --tiny: one round
    assert paired["direct"]["bids"] > 0
    assert paired["gateway"]["bids"] > 0
    assert "## Latency added over direct Triton, paired" in report
    assert "the http-floor arm" in report
    assert "## Since the previous run" not in report  # nothing was there before this run
    assert (tmp_path / "img" / "bench_latency.png").stat().st_size > 0
    assert (tmp_path / "img" / "bench_cpu.png").stat().st_size > 0


def test_rewriting_the_report_keeps_the_retrieval_benchmarks_section(tmp_path: Path) -> None:
    from loadtests.bench.report import _kept_sections  # noqa: PLC0415 - the one private helper under test

    report = tmp_path / "benchmarks.md"
    assert _kept_sections(report) == ""
    section = "<!-- retrieval:start -->\n## Retrieval\n| 100,000 | 165.5 |\n<!-- retrieval:end -->"
    report.write_text(f"# old bench\n\nnumbers\n\n{section}\n\ntrailing\n")
    kept = _kept_sections(report)
    assert section in kept
    assert "old bench" not in kept
    assert "trailing" not in kept


def test_each_benchmark_rewrites_only_its_own_section_and_a_bench_run_keeps_both(tmp_path: Path) -> None:
    from loadtests.bench.report import (  # noqa: PLC0415 - the one private helper under test
        OVERLOAD_SECTION,
        RETRIEVAL_SECTION,
        _kept_sections,
        write_kept_section,
    )

    report = tmp_path / "benchmarks.md"
    report.write_text("# bench\n\nnumbers\n")
    write_kept_section(report, RETRIEVAL_SECTION, "## Retrieval\nv1\n")
    write_kept_section(report, OVERLOAD_SECTION, "## Overload\nv1\n")
    write_kept_section(report, RETRIEVAL_SECTION, "## Retrieval\nv2\n")  # replaced in place
    text = report.read_text()
    assert text.startswith("# bench\n\nnumbers\n")
    assert text.count("## Retrieval") == 1
    assert "v2" in text.split(OVERLOAD_SECTION[0])[0]
    assert "## Overload\nv1" in text
    kept = _kept_sections(report)
    assert "## Retrieval\nv2" in kept
    assert "## Overload\nv1" in kept
    assert "numbers" not in kept
