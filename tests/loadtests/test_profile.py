"""`make profile`: the stage attribution of sampled stacks, and the whole command in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.local_triton import REPO_ROOT, LocalTriton
from loadtests.profile import GATEWAY_STAGES, OTHER, StackProfile, stage_of

SITE = "/venv/lib/python3.11/site-packages"


@pytest.mark.parametrize(
    ("stack", "stage"),
    [
        # The leaf-most gateway frame decides, whatever library runs under it.
        (["run (uvloop/__init__.py:1)", "decide (gateway/core/pipeline.py:9)",
          "run (gateway/core/auction.py:3)", f"argsort ({SITE}/numpy/core/fromnumeric.py:1)"], "auction"),
        (["decide (gateway/core/pipeline.py:9)", "score (gateway/scoring/batcher.py:1)",
          "create_task (asyncio/tasks.py:1)"], "scoring: micro-batcher"),
        (["score (gateway/scoring/triton.py:1)", f"infer ({SITE}/tritonclient/grpc/aio/__init__.py:1)"],
         "scoring: Triton client"),
        (["decide (gateway/core/pipeline.py:9)", "_no_bid (gateway/core/pipeline.py:400)"],
         "pipeline (stage glue)"),
        # No gateway frame: the library's stage.
        ([f"data_received ({SITE}/uvicorn/protocols/http/httptools_impl.py:1)"], "HTTP (uvicorn, httptools)"),
        ([f"_invoke ({SITE}/grpc/aio/_call.py:595)"], "scoring: Triton client"),
        (["run_forever (asyncio/base_events.py:1)"], "event loop"),
        (["mystery (somewhere.py:1)"], OTHER),
    ],
)  # fmt: skip
def test_a_stack_goes_to_the_stage_of_its_leaf_most_known_frame(stack: list[str], stage: str) -> None:
    assert stage_of(stack) == stage


def test_collapsed_stacks_are_counted_per_stage_and_leaf() -> None:
    text = "\n".join(
        [
            "thread (0x1);run (uvloop/x.py:1);decode_bid_request (gateway/api/decode.py:73) 30",
            "thread (0x1);run (uvloop/x.py:1);run (gateway/core/auction.py:3);argsort (numpy/x.py:1) 10",
            "thread (0x1);run (uvloop/x.py:1);run (gateway/core/auction.py:3);argsort (numpy/x.py:1) 5",
            "garbage line without a count",
            "",
        ]
    )
    profile = StackProfile.parse(text)
    assert profile.samples == 45
    assert profile.per_stage == {"decode": 30, "auction": 15}
    assert profile.per_leaf["argsort (numpy/x.py:1)"] == 15


@pytest.mark.integration
@pytest.mark.slow
def test_make_profile_writes_a_flamegraph_and_a_stage_table(triton: LocalTriton, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "loadtests.profile", "--rate", "60", "--seconds", "2", "--warmup", "0.5",
            "--triton-url", triton.http_address, "--out", str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    svg = (tmp_path / "profile.svg").read_text()
    assert svg.lstrip().startswith("<?xml")
    assert "<svg" in svg
    assert str(REPO_ROOT) not in svg  # no machine paths in a committed flamegraph
    summary = json.loads((tmp_path / "profile.json").read_text())
    assert summary["bids"] >= 60
    assert summary["errors"] == 0
    assert summary["samples"] > 0
    stages = summary["stages_us_per_bid"]
    # A short run samples few stacks: some gateway stage, not every one, must show.
    assert set(stages) & {stage for stage, _ in GATEWAY_STAGES}
    assert sum(stages.values()) == pytest.approx(summary["process_cpu_us_per_bid"], rel=0.01)
    table = (tmp_path / "profile.md").read_text()
    # Every stage the summary has gets its row (which stages a 2 s run samples varies: once in CI no
    # "decode" sample was taken).
    for stage in stages:
        assert f"| {stage} |" in table, stage
    assert "profile.svg" in table
    # No machine paths in a committed report.
    assert str(REPO_ROOT) not in table
    assert "site-packages" not in table
