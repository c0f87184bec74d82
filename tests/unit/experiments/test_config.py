"""Experiment configuration: what is accepted, and that every refusal names its problem."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.experiments.config import decode_experiment, single_arm


def doc(**overrides: Any) -> bytes:
    base: dict[str, Any] = {
        "name": "ranker-v2",
        "salt": "s1",
        "arms": [
            {"name": "control", "version": "1", "weight": 90},
            {"name": "candidate", "version": "2", "weight": 10},
        ],
        "shadow": {"version": "2", "sample": 0.25},
    }
    base.update(overrides)
    return json.dumps(base).encode()


def test_versions_without_traffic_need_no_model() -> None:
    rollback = decode_experiment(
        doc(
            arms=[
                {"name": "control", "version": "1", "weight": 100},
                {"name": "candidate", "version": "2", "weight": 0},
            ],
            shadow={"version": "3", "sample": 0},
        )
    )
    assert rollback.versions == {"1"}


def test_a_valid_document_lists_its_versions() -> None:
    config = decode_experiment(doc())
    assert [a.weight for a in config.arms] == [90, 10]
    assert config.versions == {"1", "2"}
    assert config.shadow is not None
    assert config.shadow.sample == 0.25


def test_fractional_weights_to_two_decimals_are_accepted() -> None:
    arms = [{"name": "c", "version": "1", "weight": 99.5}, {"name": "t", "version": "2", "weight": 0.5}]
    assert decode_experiment(doc(arms=arms)).arms[1].weight == 0.5


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        (
            [{"name": "c", "version": "1", "weight": 90}, {"name": "t", "version": "2", "weight": 5}],
            "sum to 100, got 95",
        ),
        (
            [{"name": "c", "version": "1", "weight": 110}, {"name": "t", "version": "2", "weight": -10}],
            "weight",
        ),
        (
            [{"name": "c", "version": "1", "weight": 50}, {"name": "c", "version": "2", "weight": 50}],
            "unique",
        ),
        (
            [{"name": "c", "version": "1", "weight": 99.995}, {"name": "t", "version": "2", "weight": 0.005}],
            "two decimals",
        ),
        ([], "arms"),
    ],
)
def test_bad_arms_are_refused_naming_the_problem(arms: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as raised:
        decode_experiment(doc(arms=arms))
    assert raised.value.code == "invalid_experiment"


@pytest.mark.parametrize(
    "raw",
    [b"{", doc(salt=""), doc(extra=1), doc(shadow={"version": "2", "sample": 1.5}), doc(name="a b")],
)
def test_malformed_documents_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_experiment(raw)


def test_single_arm_puts_everything_on_one_version() -> None:
    config = single_arm("1")
    assert [(a.name, a.version, a.weight) for a in config.arms] == [("default", "1", 100.0)]
