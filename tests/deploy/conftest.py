"""Deploy-test fixtures: the chart loaded by Helm's own engine (helm-python-sdk), rendered per value set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import helm_python as helm
import pytest

from tests.deploy.support import CHART_DIR, DASHBOARDS_DIR, RULES_FILE, Renderer


@pytest.fixture(scope="session")
def chart_dir() -> Path:
    """The chart as committed, dashboards and alert rules included (Helm loads them with .Files)."""
    assert list(DASHBOARDS_DIR.glob("*.json")), f"no dashboards under {DASHBOARDS_DIR}"
    assert RULES_FILE.is_file(), f"{RULES_FILE} is missing"
    return CHART_DIR


@pytest.fixture(scope="session")
def chart(chart_dir: Path) -> Iterator[helm.Chart]:
    with helm.Chart.load(chart_dir) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm.Chart) -> Renderer:
    return Renderer(chart)
