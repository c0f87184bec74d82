"""The catalog settings as operators set them: environment strings, and the combinations refused at start."""

from __future__ import annotations

import pydantic
import pytest

from gateway.config import Settings


@pytest.mark.parametrize(("raw", "status"), [("204", 204), ("200", 200)])
def test_plain_nobid_status_reads_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, status: int
) -> None:
    monkeypatch.setenv("BIDGW_PLAIN_NOBID_STATUS", raw)
    assert Settings().plain_nobid_status == status


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"plain_nobid_status": 201}, "plain_nobid_status must be 204"),
        ({"catalog_source": "redis"}, "catalog_source=redis needs store_backend=redis"),
        ({"retrieval_top_k": 300, "max_candidates": 200}, "retrieval_top_k must be <= max_candidates"),
    ],
)
def test_inconsistent_catalog_settings_are_refused_naming_them(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        Settings(**fields)  # type: ignore[arg-type]
