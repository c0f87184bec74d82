"""The gateway as its own process (`python -m gateway serve`, configured by BIDGW_* variables).

For tests that need what a thread cannot give: its own interpreter (no GIL shared with the load
generator), its resident memory, and real signals (SIGTERM reaches only a process's main thread).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

from gateway.config import REPO_ROOT
from gateway.local_triton import free_port


@dataclass(slots=True)
class GatewayProcess:
    process: subprocess.Popen[bytes]
    url: str
    # Every log line (stdout and stderr together) with the time.monotonic() it was read.
    lines: list[tuple[float, str]] = field(default_factory=list)
    _new_line: threading.Condition = field(default_factory=threading.Condition)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mib(self) -> float:
        for line in open(f"/proc/{self.pid}/status").read().splitlines():  # noqa: SIM115
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def wait_for_line(self, fragment: str, timeout_s: float) -> float:
        """When the first log line containing `fragment` was read; fails after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._new_line:
            while True:
                for at, line in self.lines:
                    if fragment in line:
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no log line with {fragment!r} within {timeout_s}s:\n{self.log()}")
                self._new_line.wait(left)

    def log(self) -> str:
        with self._new_line:
            return "\n".join(line for _, line in self.lines)

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with self._new_line:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))
                self._new_line.notify_all()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def gateway_process(env: dict[str, str], startup_timeout_s: float = 60.0) -> Iterator[GatewayProcess]:
    """Yields once /healthz answers; on exit SIGTERMs the process if it still runs (SIGKILL after 15 s)."""
    port = free_port()
    full_env = {
        **os.environ,
        "BIDGW_HOST": "127.0.0.1",
        "BIDGW_PORT": str(port),
        "BIDGW_WORKERS": "1",
        "BIDGW_LOG_LEVEL": "info",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        cwd=REPO_ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    gateway = GatewayProcess(process, f"http://127.0.0.1:{port}")
    assert process.stdout is not None
    reader = threading.Thread(target=gateway._read, args=(process.stdout,), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _healthy(gateway.url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start (exit {process.poll()}):\n{gateway.log()}")
            time.sleep(0.05)
        yield gateway
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=5)
