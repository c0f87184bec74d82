"""The model repository itself: both configs of every model agree, and agree with the feature contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.core import feature_spec
from gateway.local_triton import DEFAULT_MODEL_REPOSITORY

MODEL_DIRS = sorted(p.parent for p in DEFAULT_MODEL_REPOSITORY.glob("*/config.pbtxt"))


def load_config(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def test_repository_has_models() -> None:
    assert [d.name for d in MODEL_DIRS] == [feature_spec.MODEL_NAME]


@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=lambda p: p.name)
def test_gpu_and_cpu_configs_declare_identical_io_and_batching(model_dir: Path) -> None:
    gpu = load_config(model_dir / "config.pbtxt")
    cpu = load_config(model_dir / "configs" / "cpu.pbtxt")
    assert gpu.name == cpu.name == model_dir.name
    assert list(gpu.input) == list(cpu.input)
    assert list(gpu.output) == list(cpu.output)
    assert gpu.max_batch_size == cpu.max_batch_size
    assert gpu.dynamic_batching == cpu.dynamic_batching
    assert gpu.version_policy == cpu.version_policy
    assert gpu.backend == "onnxruntime"
    assert cpu.backend == "python"
    assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert [g.kind for g in cpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]


def test_ranker_matches_feature_contract() -> None:
    config = load_config(DEFAULT_MODEL_REPOSITORY / feature_spec.MODEL_NAME / "config.pbtxt")
    inputs = {i.name: (i.data_type, list(i.dims)) for i in config.input}
    assert inputs == {
        feature_spec.INPUT_CAT: (model_config_pb2.TYPE_INT64, [len(feature_spec.CATEGORICAL_FIELDS)]),
        feature_spec.INPUT_DENSE: (model_config_pb2.TYPE_FP32, [len(feature_spec.DENSE_FIELDS)]),
    }
    outputs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
    assert outputs == {
        feature_spec.OUTPUT_PCTR: (model_config_pb2.TYPE_FP32, [1]),
        feature_spec.OUTPUT_PCVR: (model_config_pb2.TYPE_FP32, [1]),
    }


def test_ranker_batching_and_queue_policy() -> None:
    config = load_config(DEFAULT_MODEL_REPOSITORY / feature_spec.MODEL_NAME / "config.pbtxt")
    assert config.max_batch_size >= 1024
    batching = config.dynamic_batching
    assert batching.max_queue_delay_microseconds > 0
    policy = batching.default_queue_policy
    # The gateway sends each bid's remaining budget as Triton's per-request timeout.
    assert policy.allow_timeout_override
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert policy.max_queue_size > 0


@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=lambda p: p.name)
def test_every_version_has_an_onnx_file_and_the_cpu_runner(model_dir: Path) -> None:
    versions = sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [v.name for v in versions] == ["1", "2"]
    for version in versions:
        assert (version / "model.onnx").stat().st_size > 0
        assert (version / "model.py").resolve() == (model_dir / "1" / "model.py").resolve()
