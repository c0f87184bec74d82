"""The notice signing keys: key id -> secret, one active key that signs, at most one previous key that
still verifies (rotation without refusing the notices of bids made just before it).

Keys come from `BIDGW_NOTICE_KEYS` (JSON: {"kid": "secret"}) and/or `notice_keys_dir`, a directory with
one file per key, named by its key id: exactly how a Kubernetes Secret mounted as a volume looks. Every
worker and replica must hold the same keys (any of them may receive the notice of another's bid), which
is why there is no random per-process key: without configured keys the gateway either refuses to start or,
where `notice_allow_dev_key` allows it (`make run`), signs with a fixed, public, INSECURE dev key.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

MIN_SECRET_BYTES: Final = 32  # HMAC-SHA256's own output size: a shorter key is weaker than the MAC
MAX_KEYS: Final = 2  # the active key and the one it replaced
KEY_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")  # travels in every URL; a file name too
DEV_KEY_ID: Final = "dev-insecure"
# Public by construction (it is in the source): URLs signed with it prove nothing. Same in every process,
# so several local workers verify each other's URLs.
_DEV_SECRET: Final = hashlib.sha256(b"bid-gateway notice dev key: INSECURE, never in production").digest()


class KeyringError(ValueError):
    """The configured keys cannot be used; the message names the key and the problem."""


@dataclass(frozen=True, slots=True)
class NoticeKeyring:
    secrets: Mapping[str, bytes]
    active: str
    insecure: bool = False  # signed with the built-in dev key

    def __post_init__(self) -> None:
        if not self.secrets:
            raise KeyringError("notice keys: none configured")
        if len(self.secrets) > MAX_KEYS:
            raise KeyringError(
                f"notice keys: {len(self.secrets)} configured; at most {MAX_KEYS} (the active key and the "
                "previous one, during a rotation)"
            )
        for kid, secret in self.secrets.items():
            check_key(kid, secret, allow_short=self.insecure)
        if self.active not in self.secrets:
            raise KeyringError(
                f"notice_active_key {self.active!r} is not among the keys {sorted(self.secrets)}"
            )

    def secret(self, kid: str) -> bytes | None:
        return self.secrets.get(kid)

    @property
    def active_secret(self) -> bytes:
        return self.secrets[self.active]

    @classmethod
    def development(cls) -> NoticeKeyring:
        return cls({DEV_KEY_ID: _DEV_SECRET}, DEV_KEY_ID, insecure=True)


def check_key(kid: str, secret: bytes, *, allow_short: bool = False) -> None:
    if not KEY_ID_PATTERN.match(kid):
        raise KeyringError(f"notice key id {kid!r}: 1-32 characters of A-Z a-z 0-9 _ . -")
    if not allow_short and len(secret) < MIN_SECRET_BYTES:
        raise KeyringError(f"notice key {kid!r}: {len(secret)} bytes, at least {MIN_SECRET_BYTES} needed")


def read_keys_dir(directory: Path) -> dict[str, bytes]:
    """One key per regular file (name = key id, content = secret, surrounding whitespace stripped: a
    `kubectl create secret --from-file` of an editor-saved file ends in a newline). Kubernetes' own
    entries (`..data`, the `..<timestamp>` directory) start with a dot and are skipped."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise KeyringError(f"notice_keys_dir {directory}: {exc.strerror or exc}") from exc
    keys: dict[str, bytes] = {}
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        try:
            keys[entry.name] = entry.read_bytes().strip()
        except OSError as exc:
            raise KeyringError(f"notice key file {entry.name}: {exc.strerror or exc}") from exc
    return keys


def build_keyring(
    env_keys: Mapping[str, str],
    keys_dir: Path | None,
    active: str | None,
    *,
    allow_dev_key: bool,
) -> NoticeKeyring:
    """The keyring from both sources (a key id in both must have the same secret). No keys at all: the
    insecure dev key where allowed (logged at warning), else KeyringError."""
    secrets = {kid: value.encode() for kid, value in env_keys.items()}
    if keys_dir is not None:
        for kid, secret in read_keys_dir(keys_dir).items():
            if kid in secrets and secrets[kid] != secret:
                raise KeyringError(
                    f"notice key {kid!r} differs between BIDGW_NOTICE_KEYS and notice_keys_dir"
                )
            secrets[kid] = secret
    if not secrets:
        if not allow_dev_key:
            raise KeyringError(
                "no notice keys: set BIDGW_NOTICE_KEYS or notice_keys_dir (a mounted Secret), or "
                "notice_allow_dev_key=true for local development only"
            )
        log.warning(
            "notice URLs are signed with the built-in INSECURE dev key %r: anyone can forge them; "
            "configure notice keys before taking real traffic (docs/notices.md)",
            DEV_KEY_ID,
        )
        return NoticeKeyring.development()
    if active is None:
        if len(secrets) != 1:
            raise KeyringError(f"notice_active_key must name the signing key among {sorted(secrets)}")
        active = next(iter(secrets))
    return NoticeKeyring(secrets, active)
