"""Sticky arm assignment: the split matches the weights, a user keeps its arm, growth keeps members."""

from __future__ import annotations

import json
from collections import Counter

from gateway.experiments.assignment import ArmAssigner, bucket_of
from gateway.experiments.config import ExperimentConfig, decode_experiment


def config(control: float, candidate: float, salt: str = "s1") -> ExperimentConfig:
    arms = [
        {"name": "control", "version": "1", "weight": control},
        {"name": "candidate", "version": "2", "weight": candidate},
    ]
    return decode_experiment(json.dumps({"name": "e", "salt": salt, "arms": arms}).encode())


def test_the_split_follows_the_weights_within_sampling_error() -> None:
    assigner = ArmAssigner.build(config(90, 10))
    n = 100_000
    counts = Counter(assigner.assign(f"user-{i}", "req").name for i in range(n))
    # binomial sd at p = 0.1, n = 1e5: 0.095 points; 4 sd
    assert abs(counts["candidate"] / n - 0.10) < 0.004


def test_a_user_keeps_its_arm_and_the_request_id_does_not_matter() -> None:
    assigner = ArmAssigner.build(config(50, 50))
    for i in range(200):
        arms = {assigner.assign(f"u{i}", f"request-{j}").name for j in range(5)}
        assert len(arms) == 1


def test_anonymous_requests_are_assigned_by_request_id() -> None:
    assigner = ArmAssigner.build(config(50, 50))
    arms = Counter(assigner.assign(None, f"request-{j}").name for j in range(2000))
    assert 800 < arms["candidate"] < 1200


def test_growing_the_candidate_keeps_its_users_and_a_new_salt_reshuffles() -> None:
    small, large = ArmAssigner.build(config(90, 10)), ArmAssigner.build(config(50, 50))
    users = [f"user-{i}" for i in range(5000)]
    first = {u for u in users if small.assign(u, "r").name == "candidate"}
    assert first
    assert all(large.assign(u, "r").name == "candidate" for u in first)
    resalted = ArmAssigner.build(config(90, 10, salt="s2"))
    moved = {u for u in users if resalted.assign(u, "r").name == "candidate"}
    assert len(first & moved) < len(first) / 2


def test_buckets_are_stable_across_processes() -> None:
    # xxh3, not Python's salted hash(): this value must never change, or every user changes arm.
    assert bucket_of("s1", "user-1") == bucket_of("s1", "user-1")
    assert 0 <= bucket_of("s1", "user-1") < 10_000
    assert bucket_of("s1", "user-1") != bucket_of("s2", "user-1") or bucket_of("s1", "u2") != bucket_of(
        "s2", "u2"
    )


def test_a_zero_weight_arm_gets_no_traffic() -> None:
    assigner = ArmAssigner.build(config(100, 0))
    assert {assigner.assign(f"u{i}", "r").name for i in range(500)} == {"control"}
