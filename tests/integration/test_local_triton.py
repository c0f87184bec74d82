"""The local Triton launcher: fails fast with one clear line, and never leaves a server behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import LocalTritonError
from gateway.local_triton import (
    DEFAULT_MODEL_REPOSITORY,
    LocalTriton,
    TritonPorts,
    ensure_ports_free,
    free_ports,
)
from tests.conftest import REPO_ROOT
from tests.integration.processes import pids_with_argument, wait_until_gone

pytestmark = pytest.mark.integration


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_port_in_use_is_one_clear_error(listener: int) -> None:
    ports = free_ports()
    taken = TritonPorts(http=ports.http, grpc=listener, metrics=ports.metrics)
    with pytest.raises(LocalTritonError, match=rf"^port {listener} \(grpc\) is already in use$"):
        LocalTriton(taken).start()
    assert pids_with_argument(f"--grpc-port={listener}") == []


def test_missing_wheel_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytriton", None)
    with pytest.raises(LocalTritonError, match="nvidia-pytriton wheel is not installed"):
        LocalTriton(free_ports()).start()


def test_model_that_fails_to_load_quotes_tritons_error(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repository, symlinks=True)
    (repository / "ranker" / "2" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(LocalTritonError) as failure:
        LocalTriton(free_ports(), model_repository=repository).start()
    message = str(failure.value)
    assert message.startswith("tritonserver exited early (code 1): ")
    assert "failed to load 'ranker' version 2" in message
    assert "\n" not in message
    assert wait_until_gone(str(repository), timeout_s=10) == []


def start_cli(ports: TritonPorts) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "gateway", "triton",
            f"--http-port={ports.http}", f"--grpc-port={ports.grpc}", f"--metrics-port={ports.metrics}",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def read_until_ready(process: subprocess.Popen[str], timeout_s: float) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if "Ctrl-C stops it" in line:
            return lines
    process.kill()
    pytest.fail("launcher never said ready:\n" + "\n".join(lines))


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_serves_until_signalled_then_leaves_nothing(stop_signal: signal.Signals) -> None:
    ports = free_ports()
    process = start_cli(ports)
    lines = read_until_ready(process, timeout_s=180)
    output = "\n".join(lines)
    assert f"gRPC    127.0.0.1:{ports.grpc}" in output
    assert f"HTTP    http://127.0.0.1:{ports.http}" in output
    assert f"metrics http://127.0.0.1:{ports.metrics}/metrics" in output
    assert pids_with_argument(f"--grpc-port={ports.grpc}") != []
    process.send_signal(stop_signal)
    assert process.wait(timeout=30) == 0
    assert wait_until_gone(f"--grpc-port={ports.grpc}", timeout_s=5) == []


def test_server_dies_with_a_killed_launcher() -> None:
    ports = free_ports()
    process = start_cli(ports)
    read_until_ready(process, timeout_s=180)
    os.kill(process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    process.wait(timeout=10)
    # PR_SET_PDEATHSIG (SIGKILL): the kernel kills Triton even though the launcher ran no cleanup, and
    # nothing drains while holding the ports: a new launcher can take them at once.
    freed_after_s = None
    while time.monotonic() - killed_at < 10:
        try:
            ensure_ports_free(ports)
        except LocalTritonError:
            time.sleep(0.05)
            continue
        freed_after_s = time.monotonic() - killed_at
        break
    assert freed_after_s is not None, "ports still held 10 s after the launcher was killed"
    assert freed_after_s <= 2.0, f"ports held {freed_after_s:.2f} s after the launcher was killed"
    assert wait_until_gone(f"--grpc-port={ports.grpc}", timeout_s=2) == []
    print(f"\nMEASURED: ports free {freed_after_s * 1000:.0f} ms after SIGKILL of the launcher")
