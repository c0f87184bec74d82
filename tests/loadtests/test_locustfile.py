"""The locustfile, headless for a few seconds against the real stack: every bid must pass its rules."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

from gateway.local_triton import REPO_ROOT, LocalTriton
from tests.integration.gateway_process import gateway_process

pytestmark = pytest.mark.integration


# locust needs geventhttpclient >= 2.0.11 and the pytriton wheel's tritonclient[http] pins <= 2.0.2, so
# locust lives in a venv of its own (`make test` and `make loadtest` build it).
LOCUST = REPO_ROOT / ".venv-locust" / "bin" / "locust"


def test_locustfile_runs_headless_without_failures(triton: LocalTriton, tmp_path: Path) -> None:
    assert LOCUST.exists(), f"{LOCUST} is missing: `make .stamps/locust` builds it"
    with gateway_process({"BIDGW_TRITON_URL": triton.http_address, "BIDGW_LOG_LEVEL": "warning"}) as gateway:
        result = subprocess.run(
            [
                str(LOCUST),
                "-f",
                str(REPO_ROOT / "loadtests" / "locustfile.py"),
                "--headless",
                "--host",
                gateway.url,
                "--users",
                "4",
                "--spawn-rate",
                "4",
                "--run-time",
                "4s",
                "--bid-rate",
                "10",
                "--csv",
                str(tmp_path / "locust"),
                "--only-summary",
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},  # the locustfile imports loadtests.workload
            check=False,
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    with (tmp_path / "locust_stats.csv").open() as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    assert int(rows["bid"]["Request Count"]) > 10
    assert int(rows["Aggregated"]["Failure Count"]) == 0
