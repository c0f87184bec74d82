"""The notice keyring and signer a gateway builds from its settings (once, at start)."""

from __future__ import annotations

from gateway.config import Settings
from gateway.notices.keyring import NoticeKeyring, build_keyring
from gateway.notices.signing import NoticeSigner

__all__ = ["notice_keyring", "notice_signer"]


def notice_keyring(settings: Settings) -> NoticeKeyring:
    """Raises KeyringError (a ValueError naming the key and the problem) for unusable keys."""
    return build_keyring(
        {kid: secret.get_secret_value() for kid, secret in settings.notice_keys.items()},
        settings.notice_keys_dir,
        settings.notice_active_key,
        allow_dev_key=settings.notice_allow_dev_key,
    )


def notice_signer(settings: Settings, keyring: NoticeKeyring) -> NoticeSigner:
    return NoticeSigner(keyring, settings.notice_base_url)
