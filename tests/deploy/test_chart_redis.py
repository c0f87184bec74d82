"""The chart's Redis values: one server or a Redis Cluster (Memorystore for Redis Cluster), rendered into
settings the gateway itself accepts, and bad values refused by the schema or the template."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from gateway.config import Settings
from gateway.stores.shards import parse_redis_url
from tests.deploy.support import Renderer, one


def redis_env(render: Renderer, redis: dict[str, Any]) -> dict[str, Any]:
    objects = render({"redis": redis})
    [container] = one(objects, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def settings_from(env: dict[str, Any]) -> Settings:
    """What the pod's Settings() reads: the chart's env over its ConfigMap (only plain values here)."""
    return Settings.model_validate({key.removeprefix("BIDGW_").lower(): value for key, value in env.items()})


def test_redis_is_off_by_default(render: Renderer) -> None:
    assert redis_env(render, {}) == {}


def test_a_memorystore_cluster_endpoint_becomes_a_cluster_url(render: Renderer) -> None:
    env = redis_env(
        render, {"enabled": True, "mode": "cluster", "endpoint": "10.128.0.7:6379", "winReplicas": 1}
    )
    assert env["BIDGW_STORE_BACKEND"] == "redis"
    assert env["BIDGW_REDIS_URL"] == "redis+cluster://10.128.0.7:6379"
    settings = settings_from(env)
    assert (settings.store_backend, settings.redis_win_replicas) == ("redis", 1)
    target = parse_redis_url(settings.redis_url)
    assert target.cluster
    assert target.seeds == (("10.128.0.7", 6379),)
    tls = redis_env(render, {"enabled": True, "mode": "cluster", "endpoint": "a:6379,b:6379", "tls": True})
    assert tls["BIDGW_REDIS_URL"] == "rediss+cluster://a:6379,b:6379"
    assert parse_redis_url(tls["BIDGW_REDIS_URL"]).tls


def test_a_standalone_endpoint_and_a_url_from_a_secret(render: Renderer) -> None:
    env = redis_env(render, {"enabled": True, "endpoint": "redis.ads.svc:6379", "db": 2, "timeoutMs": 8})
    assert env["BIDGW_REDIS_URL"] == "redis://redis.ads.svc:6379/2"
    settings = settings_from(env)
    assert (settings.redis_timeout_ms, settings.redis_win_replicas) == (8.0, 0)
    secret = redis_env(render, {"enabled": True, "urlSecret": {"name": "redis-auth", "key": "url"}})
    assert secret["BIDGW_REDIS_URL"] == {"secretKeyRef": {"name": "redis-auth", "key": "url"}}


@pytest.mark.parametrize(
    ("redis", "says"),
    [
        ({"enabled": True}, "needs redis.endpoint"),
        ({"enabled": True, "mode": "cluster", "endpoint": "a:6379", "db": 1}, "database 0"),
    ],
)
def test_the_template_refuses_incomplete_values(chart: helm.Chart, redis: dict[str, Any], says: str) -> None:
    with pytest.raises(helm.HelmError, match=says):
        chart.render({"redis": redis}, name="bidgw", namespace="ads")


@pytest.mark.parametrize(
    "redis",
    [
        {"mode": "sentinel"},
        {"endpoint": "redis://10.0.0.1:6379"},
        {"endpoint": "10.0.0.1"},
        {"winReplicas": -1},
        {"timeoutMs": 0},
        {"urlSecret": {"name": "x", "ky": "url"}},
        {"enabeld": True},
    ],
)
def test_the_schema_refuses_bad_values(chart: helm.Chart, redis: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"redis": redis})
