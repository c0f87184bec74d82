"""Deploy-test fixtures: the chart loaded by Helm's own engine (helm-python-sdk), rendered per value set."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import helm_python as helm
import pytest

from tests.deploy.support import CHART_DIR, DASHBOARDS_DIR, RULES_FILE, Renderer


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart; where the observability issue's dashboards or rules file is not in the repo yet,
    the copy gets a minimal stand-in so the templates that load them are exercised (never the repo itself)."""
    copy = tmp_path_factory.mktemp("chart") / "bid-gateway"
    shutil.copytree(CHART_DIR, copy)
    if not list(DASHBOARDS_DIR.glob("*.json")):
        (copy / "dashboards").mkdir(exist_ok=True)
        for uid in ("gateway-overview", "triton"):
            (copy / "dashboards" / f"{uid}.json").write_text(f'{{"uid": "bidgw-{uid}", "title": "{uid}"}}\n')
    if not RULES_FILE.exists():
        (copy / "rules").mkdir(exist_ok=True)
        (copy / "rules" / RULES_FILE.name).write_text(
            "groups:\n"
            "  - name: placeholder\n"
            "    rules:\n"
            "      - alert: GatewayDown\n"
            "        expr: up{job='gateway'} == 0\n"
            "        for: 1m\n"
            "        labels: {severity: page}\n"
            "        annotations: {summary: 'gateway {{ $labels.instance }} is down'}\n"
        )
    return copy


@pytest.fixture(scope="session")
def chart(chart_dir: Path) -> Iterator[helm.Chart]:
    with helm.Chart.load(chart_dir) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm.Chart) -> Renderer:
    return Renderer(chart)
