"""The test-only slow ranker (tests/fixtures/slow_ranker), copied and configured per test.

The model sleeps `sleep_ms` per execute and answers constant scores; the copy's config sets the sleep, the
instance count and whether a queue policy (per-request timeouts, REJECT) is in force.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.config import REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "slow_ranker"
MODEL = "ranker"


def slow_model_repository(
    into: Path,
    *,
    sleep_ms: float,
    instances: int = 1,
    default_timeout_us: int = 1_000_000,
    queue_policy: bool = True,
) -> Path:
    """A model repository under `into` serving the slow ranker with these settings (both config files)."""
    repository = into / "slow_ranker"
    shutil.copytree(FIXTURE, repository, ignore=shutil.ignore_patterns("__pycache__"))
    model_dir = repository / MODEL
    config = model_config_pb2.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    config.parameters["sleep_ms"].string_value = str(sleep_ms)
    config.instance_group[0].count = instances
    if queue_policy:
        config.dynamic_batching.default_queue_policy.default_timeout_microseconds = default_timeout_us
    else:
        # Without a queue policy Triton ignores per-request timeouts and keeps payload prefetching on,
        # which avoids Triton 2.51's stalled-batcher wake-up (see triton_models/ranker/configs/cpu.pbtxt).
        config.dynamic_batching.ClearField("default_queue_policy")
    text = text_format.MessageToString(config)
    for path in (model_dir / "config.pbtxt", model_dir / "configs" / "cpu.pbtxt"):
        path.write_text(text)
    return repository
