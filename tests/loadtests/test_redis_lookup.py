"""`python -m loadtests.redis_lookup`, the warm-lookup measurement of docs/redis.md, end to end against a
real redis-server it starts itself: it must keep running and report what the docs quote."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from gateway.config import REPO_ROOT
from tests.integration.redis_server import require_redis_server


@pytest.mark.integration
def test_the_lookup_measurement_runs_and_reports_percentiles() -> None:
    require_redis_server()
    command = [sys.executable, "-m", "loadtests.redis_lookup", "--warmup", "20", "--rounds", "200"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary = re.search(
        r"warm lookup, 50 candidates / 50 campaigns, 200 lookups: p50 (\d+) us, p90 (\d+) us, p99 (\d+) us",
        done.stdout,
    )
    assert summary, done.stdout
    p50, p90, p99 = (int(value) for value in summary.groups())
    assert 0 < p50 <= p90 <= p99
    assert re.search(r"client CPU per lookup \d+ us; round-trip floor \(PING\) \d+ us p50", done.stdout)
