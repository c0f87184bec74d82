"""The processes a benchmark arm measures: CPU time from /proc, and the servers it starts.

CPU is read per process tree (user + system, every thread, every descendant), so Triton's python-backend
stubs count as Triton, and uvicorn's worker processes count as their server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from gateway.local_triton import REPO_ROOT, free_port

__all__ = ["Server", "process_cpu_s", "process_tree_cpu_s", "start_gateway", "start_kserve", "tree_cpu"]

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and every live descendant."""
    children: dict[int, list[int]] = {}
    own: dict[int, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process exited while we looked
            continue
        child = int(proc.name)
        own[child] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        children.setdefault(int(fields[1]), []).append(child)
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        total += own.get(current, 0.0)
        stack.extend(children.get(current, ()))
    return total


def process_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` alone (all its threads, no children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds per role. The generator is this very process, the parent of the servers it starts,
    so it counts alone; every other role counts with its descendants (stubs, uvicorn workers)."""
    return {
        role: process_cpu_s(pid) if role == "generator" else process_tree_cpu_s(pid)
        for role, pid in pids.items()
    }


@dataclass(slots=True)
class Server:
    """A server under test: its process, where it listens, and the path a bid is POSTed to."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    bid_path: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - loopback only
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def _serving(  # noqa: PLR0917 - private; one call per server kind
    name: str,
    command: list[str],
    env: Mapping[str, str],
    port: int,
    bid_path: str,
    ready_path: str,
    log_dir: Path,
    startup_timeout_s: float,
) -> Iterator[Server]:
    log_path = log_dir / f"{name}.log"
    log: IO[bytes] = log_path.open("wb")
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own group: the stop reaches uvicorn's workers too
    )
    server = Server(name, process, port, bid_path, log_path)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _http_ok(f"http://127.0.0.1:{port}{ready_path}"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not become ready (exit {process.poll()}); log tail:\n{server.log_tail()}"
                )
            time.sleep(0.1)
        yield server
    finally:
        _stop(process)
        log.close()


def start_gateway(
    triton_url: str,
    *,
    workers: int,
    log_dir: Path,
    startup_timeout_s: float = 60.0,
    extra_env: Mapping[str, str] | None = None,
) -> contextlib.AbstractContextManager[Server]:
    """`python -m gateway serve` with its defaults (micro-batcher and all), logging at warning;
    `triton_url`: Triton's endpoint for the gateway's protocol (HTTP unless `extra_env` says grpc);
    `extra_env`: BIDGW_* settings on top (an arm's variant)."""
    port = free_port()
    env = {
        **os.environ,
        "BIDGW_HOST": "127.0.0.1",
        "BIDGW_PORT": str(port),
        "BIDGW_WORKERS": str(workers),
        "BIDGW_TRITON_URL": triton_url,
        "BIDGW_LOG_LEVEL": "warning",
        "BIDGW_STORE_BACKEND": "embedded",
        **(extra_env or {}),
    }
    return _serving(
        f"gateway-w{workers}",
        [sys.executable, "-m", "gateway", "serve"],
        env,
        port,
        "/v1/bid",
        "/readyz",
        log_dir,
        startup_timeout_s,
    )


def start_http_floor(
    *, log_dir: Path, startup_timeout_s: float = 30.0
) -> contextlib.AbstractContextManager[Server]:
    """uvicorn serving `loadtests.http_floor` (no work per request), with the gateway's loop and parser."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "loadtests.http_floor:app",
        "--host=127.0.0.1",
        f"--port={port}",
        "--loop=uvloop",
        "--http=httptools",
        "--no-access-log",
        "--log-level=warning",
    ]
    return _serving(
        "http-floor", command, os.environ, port, "/v1/bid", "/healthz", log_dir, startup_timeout_s
    )


def start_kserve(
    python: Path,
    triton_grpc_url: str,
    *,
    log_dir: Path,
    quiet: bool = True,
    model_name: str = "ranker",
    startup_timeout_s: float = 90.0,
) -> contextlib.AbstractContextManager[Server]:
    """The KServe transformer (loadtests/kserve_transformer.py) from its own venv, 1 worker.

    `quiet` turns off KServe's per-request log lines (latency line, access log, timing trace) so the
    comparison is about the work, not the logging; the gateway also logs only a sample of bids."""
    port = free_port()
    command = [
        str(python),
        "-m",
        "loadtests.kserve_transformer",
        f"--http_port={port}",
        f"--model_name={model_name}",
        f"--predictor_host={triton_grpc_url}",
        "--predictor_protocol=grpc-v2",
        "--workers=1",
        "--enable_grpc=false",  # the transformer's own gRPC front end: unused here
    ]
    if quiet:
        config = log_dir / "kserve-logging.json"
        config.write_text(_QUIET_LOGGING)
        command += ["--enable_latency_logging=false", f"--log_config_file={config}"]
    return _serving(
        "kserve" if quiet else "kserve-default-logging",
        command,
        {**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        port,
        f"/v1/models/{model_name}:predict",
        f"/v1/models/{model_name}",
        log_dir,
        startup_timeout_s,
    )


_QUIET_LOGGING: Final = """{
  "version": 1,
  "disable_existing_loggers": false,
  "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
  "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
  "loggers": {
    "kserve": {"handlers": ["stderr"], "level": "WARNING", "propagate": false},
    "kserve.trace": {"handlers": ["stderr"], "level": "WARNING", "propagate": false},
    "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": false},
    "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": false}
  }
}
"""
