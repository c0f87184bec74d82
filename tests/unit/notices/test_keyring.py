"""Notice keys: from the environment and a mounted Secret directory, validated, with a marked dev key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.notices.keyring import DEV_KEY_ID, KeyringError, NoticeKeyring, build_keyring
from gateway.notices.setup import notice_keyring

SECRET = "s" * 32


def secret_dir(tmp_path: Path, **keys: str) -> Path:
    """Lay out a directory as kubelet mounts a Secret: files behind ..data symlinks, plus dot entries."""
    data = tmp_path / "..2026_01_01"
    data.mkdir()
    for kid, value in keys.items():
        (data / kid).write_text(value + "\n")
        (tmp_path / kid).symlink_to(data / kid)
    (tmp_path / "..data").symlink_to(data)
    return tmp_path


def test_keys_from_a_mounted_secret_directory(tmp_path: Path) -> None:
    keyring = build_keyring({}, secret_dir(tmp_path, k1=SECRET), None, allow_dev_key=False)
    assert keyring.active == "k1"
    assert keyring.secret("k1") == SECRET.encode(), "the trailing newline is stripped"
    assert not keyring.insecure


def test_env_and_directory_merge_and_two_keys_need_an_active_one(tmp_path: Path) -> None:
    directory = secret_dir(tmp_path, old=SECRET)
    with pytest.raises(KeyringError, match="notice_active_key"):
        build_keyring({"new": "n" * 32}, directory, None, allow_dev_key=False)
    keyring = build_keyring({"new": "n" * 32}, directory, "new", allow_dev_key=False)
    assert set(keyring.secrets) == {"old", "new"}
    assert keyring.active_secret == b"n" * 32


def test_the_same_key_id_with_two_secrets_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="differs"):
        build_keyring({"k1": "x" * 32}, secret_dir(tmp_path, k1=SECRET), None, allow_dev_key=False)


def test_more_than_two_keys_is_refused() -> None:
    with pytest.raises(KeyringError, match="at most 2"):
        NoticeKeyring({"a": b"a" * 32, "b": b"b" * 32, "c": b"c" * 32}, "a")


@pytest.mark.parametrize(
    ("keys", "message"),
    [({"k1": "short"}, "at least 32"), ({"bad id!": SECRET}, "key id"), ({"": SECRET}, "key id")],
)
def test_a_weak_key_or_a_bad_key_id_is_refused(keys: dict[str, str], message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        build_keyring(keys, None, None, allow_dev_key=False)


def test_an_active_key_that_is_not_configured_is_refused() -> None:
    with pytest.raises(KeyringError, match="not among"):
        build_keyring({"k1": SECRET}, None, "k2", allow_dev_key=False)


def test_without_keys_start_fails_unless_the_dev_key_is_allowed(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(KeyringError, match="no notice keys"):
        build_keyring({}, None, None, allow_dev_key=False)
    with caplog.at_level(logging.WARNING):
        keyring = build_keyring({}, None, None, allow_dev_key=True)
    assert keyring.insecure
    assert keyring.active == DEV_KEY_ID
    assert "INSECURE" in caplog.text
    assert build_keyring({}, None, None, allow_dev_key=True).active_secret == keyring.active_secret, (
        "every process derives the same dev key, so workers verify each other's URLs"
    )


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="notice_keys_dir"):
        build_keyring({}, tmp_path / "absent", None, allow_dev_key=True)


def test_settings_validate_env_keys_and_build_the_keyring() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        Settings(notice_keys={"k1": "short"})
    settings = Settings(notice_keys={"k1": SECRET}, notice_allow_dev_key=False)
    assert notice_keyring(settings).active == "k1"
    assert SECRET not in repr(settings), "secrets never appear in a settings dump"


def test_notice_ttl_may_not_outlive_an_unwon_bids_record() -> None:
    # A billing notice that verifies must find its bid record, which lives bid_ttl_s until won.
    with pytest.raises(ValueError, match="notice_ttl_s must be <= bid_ttl_s"):
        Settings(notice_ttl_s=600, bid_ttl_s=300)
    assert Settings(notice_ttl_s=600, bid_ttl_s=600).notice_ttl_s == 600
