"""The Helm chart, checked by Helm itself and by the schemas of what it renders (no cluster needed).

What a real cluster still has to show (see docs/deploy.md): scheduling on GPU nodes, Workload Identity
access to gs://, the NetworkPolicy enforced by the CNI, prometheus-adapter/KEDA serving the queue metric.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.config import Settings
from gateway.scoring.targets import parse_target
from tests.deploy.support import (
    CI_VALUES,
    RULES_FILE,
    Manifest,
    Renderer,
    ci_values,
    find,
    npm_modules,
    one,
)

CI_NAMES = [path.name.removesuffix("-values.yaml") for path in CI_VALUES]
# The oldest GKE minor still in regular support and a recent one.
KUBE_VERSIONS = ["1.30.0", "1.33.0"]
CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/")
STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)


def is_crd(obj: Manifest) -> bool:
    return str(obj["apiVersion"]).startswith(CRD_GROUPS)


def pod_spec(deployment: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def service(objects: list[Manifest], component: str) -> Manifest:
    """The component's ClusterIP Service (Triton also has a headless one, for the gateway's own balancing)."""
    [found] = [svc for svc in find(objects, "Service", component) if svc["spec"].get("clusterIP") != "None"]
    return found


def container(deployment: Manifest) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(deployment)["containers"]
    assert len(containers) == 1
    return containers[0]


def volumes_by_name(deployment: Manifest) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in pod_spec(deployment).get("volumes", [])}


def test_ci_value_sets_are_the_four_documented() -> None:
    assert set(CI_NAMES) == {"default", "gpu-gcs-hpa", "monitoring", "minimal"}


# --- Helm's own checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CI_NAMES)
def test_lint_strict_passes(chart_dir: Path, name: str) -> None:
    report = helm.lint(chart_dir, ci_values(name), strict=True, namespace="ads")
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert report["errors"] == []
    assert problems == []


@pytest.mark.parametrize("name", CI_NAMES)
def test_renders_with_standard_labels(render: Renderer, name: str) -> None:
    objects = render.ci(name)
    assert find(objects, "Deployment", "gateway"), "every value set deploys the gateway"
    for obj in objects:
        labels = obj["metadata"]["labels"]
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert obj["metadata"]["namespace"] == "ads"


@pytest.mark.parametrize(
    ("values", "offender"),
    [
        ({"gatewy": {"replicas": 3}}, "gatewy"),
        ({"gateway": {"replicaz": 3}}, "replicaz"),
        ({"gateway": {"config": {"worker": 4}}}, "worker"),
        ({"triton": {"gpu": {"countt": 1}}}, "countt"),
        ({"triton": {"modelRepository": {"gcs": {"url": "gs://b/m"}}}}, "url"),
        ({"monitoring": {"serviceMonitor": {"enabeld": True}}}, "enabeld"),
        ({"networkPolicy": {"prometheus": {"namespaceSelectr": {}}}}, "namespaceSelectr"),
        ({"gateway": {"extraConfig": {"TRITON_URL": "x:8001"}}}, "TRITON_URL"),
    ],
)
def test_schema_rejects_typos(chart: helm.Chart, values: dict[str, Any], offender: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=offender):
        chart.render(values, name="bidgw", namespace="ads")


@pytest.mark.parametrize(
    "values",
    [
        {"gateway": {"config": {"logLevel": "verbose"}}},
        {"gateway": {"config": {"workers": 0}}},
        {"triton": {"modelRepository": {"source": "s3"}}},
        {"triton": {"modelRepository": {"gcs": {"uri": "https://storage.googleapis.com/b"}}}},
        {"triton": {"autoscaling": {"mode": "vpa"}}},
        {"triton": {"extraArgs": ["--model-control-mode=explicit", "oops"]}},
    ],
)
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


def test_extra_bidgw_settings_pass_through(render: Renderer) -> None:
    objects = render({"gateway": {"extraConfig": {"BIDGW_CURRENCY_RATES": '{"USD":1,"EUR":0.92}'}}})
    data = one(objects, "ConfigMap", "gateway")["data"]
    assert data["BIDGW_CURRENCY_RATES"] == '{"USD":1,"EUR":0.92}'


# --- schemas of the rendered objects ----------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", CI_NAMES)
def test_objects_validate_against_kubernetes_schemas(render: Renderer, name: str, kube_version: str) -> None:
    for obj in render.ci(name):
        if is_crd(obj):
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} (k8s {kube_version}): {exc.message}")


def run_crd_validator(objects: list[Manifest]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: custom resources cannot be checked against their models")
    script = Path(__file__).with_name("validate_crds.mjs")
    proc = subprocess.run(
        [node, str(script), str(npm_modules())],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    return results


def test_custom_resources_validate_with_their_models(render: Renderer) -> None:
    crds = [obj for name in CI_NAMES for obj in render.ci(name) if is_crd(obj)]
    kinds = {obj["kind"] for obj in crds}
    assert kinds == {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
    failures = [result for result in run_crd_validator(crds) if result["error"] is not None]
    assert failures == []


def test_custom_resource_validator_rejects_invalid_objects(render: Renderer) -> None:
    """The models really validate: a broken ScaledObject and a rule without expr are reported."""
    scaled = one(render.ci("monitoring"), "ScaledObject")
    broken_scaled = json.loads(json.dumps(scaled))
    broken_scaled["spec"]["minReplicaCount"] = "one"
    rule = one(render.ci("monitoring"), "PrometheusRule")
    broken_rule = json.loads(json.dumps(rule))
    del broken_rule["spec"]["groups"][0]["rules"][0]["expr"]
    results = run_crd_validator([broken_scaled, broken_rule])
    assert all(result["error"] for result in results), results


def test_custom_resources_are_gated_on_values(render: Renderer) -> None:
    """Helm cannot see the cluster's CRDs offline, so the defaults render none of them."""
    assert [obj["kind"] for obj in render.ci("default") if is_crd(obj)] == []
    assert [obj["kind"] for obj in render.ci("minimal") if is_crd(obj)] == []


# --- monitoring --------------------------------------------------------------------------------------


def test_prometheus_rule_is_the_rules_file(render: Renderer, chart_dir: Path) -> None:
    rule = one(render.ci("monitoring"), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((chart_dir / "rules" / RULES_FILE.name).read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_rule_passes_promtool(render: Renderer, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(one(render.ci("monitoring"), "PrometheusRule")["spec"]))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_service_monitors_scrape_both_tiers(render: Renderer) -> None:
    objects = render.ci("monitoring")
    gateway = one(objects, "ServiceMonitor", "gateway")
    triton = one(objects, "ServiceMonitor", "triton")
    assert gateway["spec"]["endpoints"][0]["port"] == "http"
    assert triton["spec"]["endpoints"][0]["port"] == "metrics"
    # The alert rules select these job names: a ServiceMonitor that left the default (the Service's name)
    # would make BidGatewayTritonAbsent fire in every cluster.
    assert gateway["spec"]["endpoints"][0]["relabelings"] == [
        {"targetLabel": "job", "replacement": "bid-gateway"}
    ]
    assert triton["spec"]["endpoints"][0]["relabelings"] == [{"targetLabel": "job", "replacement": "triton"}]
    for monitor in (gateway, triton):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        scraped = service(objects, monitor["metadata"]["labels"]["app.kubernetes.io/component"])
        assert monitor["spec"]["selector"]["matchLabels"].items() <= scraped["metadata"]["labels"].items()
        # Every Service the monitor selects that has its port is scraped: exactly one, or pods twice.
        selected = [
            svc
            for svc in find(objects, "Service")
            if monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
            and any(port["name"] == monitor["spec"]["endpoints"][0]["port"] for port in svc["spec"]["ports"])
        ]
        assert selected == [scraped]


def test_dashboards_ship_as_labelled_configmaps(render: Renderer, chart_dir: Path) -> None:
    files = sorted((chart_dir / "dashboards").glob("*.json"))
    maps = [cm for cm in find(render.ci("monitoring"), "ConfigMap", "monitoring")]
    assert len(maps) == len(files) >= 2
    by_key = {key: value for cm in maps for key, value in cm["data"].items()}
    for path in files:
        assert json.loads(by_key[path.name]) == json.loads(path.read_text())
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "bid-gateway"
    assert find(render.ci("minimal"), "ConfigMap", "monitoring") == []


# --- security and termination ------------------------------------------------------------------------


@pytest.mark.parametrize("name", CI_NAMES)
def test_restricted_security_context_everywhere(render: Renderer, name: str) -> None:
    for deployment in find(render.ci(name), "Deployment"):
        pod = pod_spec(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for ctr in pod["containers"]:
            sc = ctr["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["runAsNonRoot"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            # A read-only root needs a writable /tmp, and it must be an emptyDir.
            mounts = {mount["mountPath"]: mount["name"] for mount in ctr["volumeMounts"]}
            assert "emptyDir" in volumes_by_name(deployment)[mounts["/tmp"]]


def test_gateway_probes_config_and_graceful_termination(render: Renderer) -> None:
    objects = render.ci("default")
    gateway = one(objects, "Deployment", "gateway")
    ctr = container(gateway)
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ctr["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert ctr["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    # The app turns unready on SIGTERM and waits by itself; a preStop sleep would only add to the wait.
    assert "lifecycle" not in ctr
    config = one(objects, "ConfigMap", "gateway")
    assert ctr["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    data = config["data"]
    drain, grace = float(data["BIDGW_DRAIN_DELAY_S"]), float(data["BIDGW_SHUTDOWN_GRACE_S"])
    assert pod_spec(gateway)["terminationGracePeriodSeconds"] > math.ceil(drain + grace)
    assert data["BIDGW_HOST"] == "0.0.0.0"
    headless = next(
        svc for svc in find(objects, "Service", "triton") if svc["spec"].get("clusterIP") == "None"
    )
    namespace = headless["metadata"]["namespace"]
    assert data["BIDGW_TRITON_URL"] == (
        f"dns:///{headless['metadata']['name']}.{namespace}.svc.cluster.local:8000"
    )
    assert "replicas" not in gateway["spec"], "the HPA owns the replica count"


@pytest.mark.parametrize("name", CI_NAMES)
def test_configmap_sets_only_real_settings(render: Renderer, name: str) -> None:
    """Every BIDGW_* key the chart writes is a field of gateway.config.Settings, and the values parse."""
    data: dict[str, str] = one(render.ci(name), "ConfigMap", "gateway")["data"]
    fields = {f"BIDGW_{field.upper()}" for field in Settings.model_fields}
    assert set(data) <= fields, set(data) - fields
    settings = Settings.model_validate(
        {key.removeprefix("BIDGW_").lower(): value for key, value in data.items()}
    )
    assert settings.workers >= 1


def test_termination_grace_follows_the_drain_settings(render: Renderer) -> None:
    gateway = one(render.ci("gpu-gcs-hpa"), "Deployment", "gateway")
    # drain 10 s + grace 15 s + 5 s margin.
    assert pod_spec(gateway)["terminationGracePeriodSeconds"] == 30


# --- Triton --------------------------------------------------------------------------------------------


def test_triton_gpu_shm_probes_and_service(render: Renderer) -> None:
    objects = render.ci("default")
    triton = one(objects, "Deployment", "triton")
    pod, ctr = pod_spec(triton), container(triton)
    assert ctr["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "cloud.google.com/gke-accelerator" in pod["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    mounts = {mount["mountPath"]: mount["name"] for mount in ctr["volumeMounts"]}
    shm = volumes_by_name(triton)[mounts["/dev/shm"]]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert ctr["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert "--model-control-mode=none" in ctr["args"]
    assert not any(arg.startswith("--model-config-name") for arg in ctr["args"])
    # The ClusterIP Service carries gRPC and metrics; inference over HTTP goes through the headless one.
    assert sorted(port["port"] for port in service(objects, "triton")["spec"]["ports"]) == [8001, 8002]
    assert pod["topologySpreadConstraints"]


def test_triton_cpu_variant_drops_the_gpu(render: Renderer) -> None:
    triton = one(render({"triton": {"gpu": {"enabled": False}}}), "Deployment", "triton")
    pod, ctr = pod_spec(triton), container(triton)
    assert "--model-config-name=cpu" in ctr["args"]
    assert "--allow-gpu-metrics=false" in ctr["args"]
    assert "nvidia.com/gpu" not in ctr["resources"].get("limits", {})
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod


def test_triton_model_repository_from_pvc_by_default(render: Renderer) -> None:
    triton = one(render.ci("default"), "Deployment", "triton")
    ctr = container(triton)
    assert "--model-repository=/models" in ctr["args"]
    models = volumes_by_name(triton)["models"]
    assert models["persistentVolumeClaim"] == {"claimName": "bid-gateway-models", "readOnly": True}
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in ctr["volumeMounts"]


def test_triton_gcs_repository_with_workload_identity(render: Renderer) -> None:
    objects = render.ci("gpu-gcs-hpa")
    triton = one(objects, "Deployment", "triton")
    ctr = container(triton)
    assert "--model-repository=gs://example-project-bid-gateway-models/triton_models" in ctr["args"]
    assert "models" not in volumes_by_name(triton)
    account = one(objects, "ServiceAccount", "triton")
    assert pod_spec(triton)["serviceAccountName"] == account["metadata"]["name"]
    assert (
        account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        == "triton-models@example-project.iam.gserviceaccount.com"
    )


def test_gcs_source_needs_a_gs_uri(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="gs://"):
        chart.render({"triton": {"modelRepository": {"source": "gcs"}}}, name="bidgw", namespace="ads")


def test_autoscalers(render: Renderer) -> None:
    hpa_objects = render.ci("gpu-gcs-hpa")
    gateway_hpa = one(hpa_objects, "HorizontalPodAutoscaler", "gateway")
    assert {metric["type"] for metric in gateway_hpa["spec"]["metrics"]} == {"Resource", "Pods"}
    triton_hpa = one(hpa_objects, "HorizontalPodAutoscaler", "triton")
    assert triton_hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "triton_queue_time_per_request_us"
    assert triton_hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "1500"
    assert "replicas" not in one(hpa_objects, "Deployment", "triton")["spec"]

    scaled = one(render.ci("monitoring"), "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert "nv_inference_queue_duration_us" in trigger["metadata"]["query"]
    assert "nv_inference_request_success" in trigger["metadata"]["query"]
    assert (
        scaled["spec"]["scaleTargetRef"]["name"]
        == one(render.ci("monitoring"), "Deployment", "triton")["metadata"]["name"]
    )


# --- NetworkPolicy -------------------------------------------------------------------------------------


def test_only_gateway_pods_reach_triton_inference(render: Renderer) -> None:
    objects = render.ci("default")
    gateway_labels = one(objects, "Deployment", "gateway")["spec"]["selector"]["matchLabels"]
    triton_labels = one(objects, "Deployment", "triton")["spec"]["selector"]["matchLabels"]
    policy = one(objects, "NetworkPolicy", "triton")
    assert policy["spec"]["podSelector"]["matchLabels"] == triton_labels
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    allowed = {port["port"]: rule["from"] for rule in rules for port in rule["ports"]}
    assert set(allowed) == {8000, 8001, 8002}
    # Inference on either protocol from this release's gateways only; model control stays off.
    assert allowed[8000] == allowed[8001] == [{"podSelector": {"matchLabels": gateway_labels}}]
    assert "--model-control-mode=none" in container(one(objects, "Deployment", "triton"))["args"]
    assert allowed[8002] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_gateway_ingress_on_http_only(render: Renderer) -> None:
    policy = one(render.ci("default"), "NetworkPolicy", "gateway")
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 8000, "protocol": "TCP"}]}]


# --- everything off --------------------------------------------------------------------------------


def test_minimal_renders_only_the_gateway(render: Renderer) -> None:
    objects = render.ci("minimal")
    assert sorted(obj["kind"] for obj in objects) == ["ConfigMap", "Deployment", "Service"]
    gateway = one(objects, "Deployment", "gateway")
    assert gateway["spec"]["replicas"] == 1
    assert pod_spec(gateway)["serviceAccountName"] == "default"
    assert "topologySpreadConstraints" not in pod_spec(gateway)
    data = one(objects, "ConfigMap", "gateway")["data"]
    assert data["BIDGW_TRITON_URL"] == "triton.inference.svc.cluster.local:8001"
    assert data["BIDGW_TRITON_PROTOCOL"] == "grpc"


def test_external_triton_needs_a_url(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="tritonUrl"):
        chart.render({"triton": {"enabled": False}}, name="bidgw", namespace="ads")


# --- The Triton fleet (issue: many gateways over many Triton pods) ---------------------------------------


def test_gateway_reaches_every_triton_pod_through_the_headless_service(render: Renderer) -> None:
    objects = render.ci("default")
    triton = one(objects, "Deployment", "triton")
    [headless] = [svc for svc in find(objects, "Service", "triton") if svc["spec"].get("clusterIP") == "None"]
    spec = headless["spec"]
    # One A record per ready pod of this Deployment, on the inference ports only (metrics stay on the
    # ClusterIP Service, so no pod is scraped twice).
    assert spec["selector"].items() <= triton["spec"]["template"]["metadata"]["labels"].items()
    assert spec["publishNotReadyAddresses"] is False
    assert spec["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
        {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
    ]
    data = one(objects, "ConfigMap", "gateway")["data"]
    # The gateway's own parser takes the rendered target as a name to re-resolve, on the configured period.
    settings = Settings(
        triton_url=data["BIDGW_TRITON_URL"],
        triton_protocol=data["BIDGW_TRITON_PROTOCOL"],
        triton_resolve_interval_s=data["BIDGW_TRITON_RESOLVE_INTERVAL_S"],
    )
    target = parse_target(settings.triton_url)
    assert target.name is not None
    assert (
        target.name.host
        == f"{headless['metadata']['name']}.{headless['metadata']['namespace']}.svc.cluster.local"
    )
    # The default protocol is HTTP/REST (measured cheaper per call): Triton's HTTP port.
    assert settings.triton_protocol == "http"
    assert target.name.port == 8000
    assert 0 < settings.triton_resolve_interval_s <= 30


def test_triton_caps_grpc_connection_age_for_plain_grpc_clients(render: Renderer) -> None:
    args = container(one(render.ci("default"), "Deployment", "triton"))["args"]
    assert "--grpc-max-connection-age=300000" in args
    assert "--grpc-max-connection-age-grace=10000" in args
    values = ci_values("default")
    values.setdefault("triton", {})["grpc"] = {
        "maxConnectionAgeSeconds": 0,
        "maxConnectionAgeGraceSeconds": 0,
    }
    args = container(one(render(values), "Deployment", "triton"))["args"]
    assert not any(arg.startswith("--grpc-max-connection-age") for arg in args)


def test_cluster_domain_protocol_and_an_explicit_target_are_honoured(render: Renderer) -> None:
    values = ci_values("default")
    values["clusterDomain"] = "corp.internal"
    data = one(render(values), "ConfigMap", "gateway")["data"]
    assert data["BIDGW_TRITON_URL"].endswith(".svc.corp.internal:8000")
    values["gateway"] = {**values.get("gateway", {}), "config": {"tritonProtocol": "grpc"}}
    data = one(render(values), "ConfigMap", "gateway")["data"]
    assert data["BIDGW_TRITON_URL"].endswith(".svc.corp.internal:8001")
    assert data["BIDGW_TRITON_PROTOCOL"] == "grpc"
    values["gateway"] = {
        **values.get("gateway", {}),
        "config": {"tritonUrl": "ipv4:10.0.0.1:8001,10.0.0.2:8001"},
    }
    data = one(render(values), "ConfigMap", "gateway")["data"]
    assert data["BIDGW_TRITON_URL"] == "ipv4:10.0.0.1:8001,10.0.0.2:8001"


def test_gateway_readiness_probe_outlasts_a_model_check(render: Renderer) -> None:
    # With onScoringFailure=nobid /readyz asks Triton (up to 1 s per server, in parallel).
    probe = container(one(render.ci("default"), "Deployment", "gateway"))["readinessProbe"]
    assert probe["timeoutSeconds"] >= 2


def test_an_experiment_ships_as_a_watched_configmap_the_gateway_accepts(render: Renderer) -> None:
    from gateway.experiments.config import decode_experiment  # noqa: PLC0415 - only this test needs it

    experiment = {
        "name": "ranker-v2",
        "salt": "2024-06-01",
        "arms": [
            {"name": "control", "version": "1", "weight": 90},
            {"name": "candidate", "version": "2", "weight": 10},
        ],
        "shadow": {"version": "2", "sample": 0.1},
    }
    objects = render({"gateway": {"experiment": experiment}})
    mounted = one(objects, "ConfigMap", "experiment")
    config = decode_experiment(mounted["data"]["experiment.json"].encode())
    assert [(a.version, a.weight) for a in config.arms] == [("1", 90), ("2", 10)]
    path = one(objects, "ConfigMap", "gateway")["data"]["BIDGW_EXPERIMENT_PATH"]
    deployment = one(objects, "Deployment", "gateway")
    mount = next(m for m in container(deployment)["volumeMounts"] if m["name"] == "experiment")
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates: no reload
    assert path == f"{mount['mountPath']}/experiment.json"
    assert volumes_by_name(deployment)["experiment"]["configMap"]["name"] == mounted["metadata"]["name"]
    assert not find(render({}), "ConfigMap", "experiment")
