"""The chart's notice settings: signing keys mounted from a Secret, never the built-in dev key."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import pytest

from gateway.config import Settings
from gateway.notices.setup import notice_keyring
from tests.deploy.support import Renderer, one


def test_keys_come_from_a_mounted_secret_and_the_dev_key_is_off(render: Renderer) -> None:
    objects = render({})
    data = one(objects, "ConfigMap", "gateway")["data"]
    spec = one(objects, "Deployment", "gateway")["spec"]["template"]["spec"]
    [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "notice-keys"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "notice-keys"]
    assert data["BIDGW_NOTICE_KEYS_DIR"] == mount["mountPath"]
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"].endswith("-gateway-notice-keys")
    assert data["BIDGW_NOTICE_ALLOW_DEV_KEY"] == "false"
    assert data["BIDGW_NOTICE_BASE_URL"].startswith("http://")
    assert "BIDGW_NOTICE_ACTIVE_KEY" not in data


def test_a_named_secret_active_key_and_billing_kind_are_passed_on(render: Renderer, tmp_path: Path) -> None:
    values = {
        "notices": {
            "baseUrl": "https://bid.example.com",
            "keysSecret": {"name": "rtb-keys"},
            "activeKey": "k2",
            "billOn": "nurl",
            "ttlSeconds": 240,
        }
    }
    objects = render(values)
    data = one(objects, "ConfigMap", "gateway")["data"]
    spec = one(objects, "Deployment", "gateway")["spec"]["template"]["spec"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "notice-keys"]
    assert volume["secret"]["secretName"] == "rtb-keys"
    # The rendered settings, with the Secret's files where the pod mounts them, start a gateway keyring.
    (tmp_path / "k1").write_text("a" * 40)
    (tmp_path / "k2").write_text("b" * 40)
    settings = Settings(
        notice_base_url=data["BIDGW_NOTICE_BASE_URL"],
        notice_keys_dir=tmp_path,
        notice_allow_dev_key=data["BIDGW_NOTICE_ALLOW_DEV_KEY"] == "true",
        notice_active_key=data["BIDGW_NOTICE_ACTIVE_KEY"],
        bill_on=data["BIDGW_BILL_ON"],
        notice_ttl_s=int(data["BIDGW_NOTICE_TTL_S"]),
    )
    assert notice_keyring(settings).active == "k2"
    assert settings.bill_on == "nurl"


@pytest.mark.parametrize(
    "notices",
    [{"billOn": "lurl"}, {"baseUrl": "ftp://x"}, {"activeKey": "bad key"}, {"keysSecret": {"nme": "x"}}],
)
def test_schema_rejects_bad_notice_values(chart: helm.Chart, notices: dict[str, object]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"notices": notices})
