"""A real Triton 2.51 on this host, from the `nvidia-pytriton` wheel, for `make run` and the test fixtures.

The wheel ships `tritonserver`, the python backend and a backend stub per Python version, but starting
the python backend outside NVIDIA's container needs three things (measured, see DESIGN.md):
  * the stub for the running interpreter copied next to `libtriton_python.so` (a private backend dir here,
    so the installed wheel is never modified);
  * the interpreter's LIBDIR and the wheel's `nvidia_pytriton.libs` first on LD_LIBRARY_PATH, else the stub
    binds the system libpython and dies on `_thread.RLock`;
  * the venv's `bin/` first on PATH, so the stub imports the venv's onnxruntime.
Everything else is plain Triton: `--model-config-name=cpu` selects `configs/cpu.pbtxt`.

Failures end in one `LocalTritonError` line (wheel missing, port taken, model failed to load quoting
Triton's own line, early exit), and the server's whole process group is killed on every exit path.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from gateway.errors import LocalTritonError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "triton_models"
PR_SET_PDEATHSIG = 1
# Triton's error lines start with E and a date, e.g. "E1130 09:01:02.123 123 model_lifecycle.cc:..] ...".
_ERROR_LINE = re.compile(r"^E\d{4} .*?\] (?P<message>.*)$")


@dataclass(frozen=True, slots=True)
class TritonPorts:
    http: int
    grpc: int
    metrics: int

    def named(self) -> dict[str, int]:
        return {"http": self.http, "grpc": self.grpc, "metrics": self.metrics}


@dataclass(frozen=True, slots=True)
class TritonWheel:
    """Where the pytriton wheel keeps what a python-backend Triton needs."""

    server_binary: Path
    python_backend: Path
    backend_stub: Path
    libs: Path

    @classmethod
    def locate(cls) -> TritonWheel:
        try:
            import pytriton  # noqa: PLC0415 - optional extra; only this launcher needs it
        except ImportError as exc:
            raise LocalTritonError(
                "the nvidia-pytriton wheel is not installed: pip install -e '.[triton]' (make install does)"
            ) from exc
        package = Path(pytriton.__file__).parent
        server = package / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        wheel = cls(
            server_binary=server / "bin" / "tritonserver",
            python_backend=server / "backends" / "python",
            backend_stub=server / "python_backend_stubs" / version / "triton_python_backend_stub",
            libs=package.parent / "nvidia_pytriton.libs",
        )
        for path in (wheel.server_binary, wheel.python_backend, wheel.backend_stub, wheel.libs):
            if not path.exists():
                raise LocalTritonError(f"the nvidia-pytriton wheel lacks {path.name} for Python {version}")
        return wheel


@dataclass(frozen=True, slots=True)
class ModelVersion:
    name: str
    version: str


def discover_models(repository: Path) -> list[ModelVersion]:
    """Every model version on disk: what Triton must report ready before the launcher says so."""
    found = [
        ModelVersion(model_dir.name, version_dir.name)
        for model_dir in sorted(repository.iterdir())
        if (model_dir / "config.pbtxt").is_file()
        for version_dir in sorted(model_dir.iterdir())
        if version_dir.is_dir() and version_dir.name.isdigit()
    ]
    if not found:
        raise LocalTritonError(f"no model versions under {repository}")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports() -> TritonPorts:
    return TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())


def ensure_ports_free(ports: TritonPorts, host: str = "0.0.0.0") -> None:  # noqa: S104 - as Triton binds
    for role, port in ports.named().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # Like Triton itself: a port left in TIME_WAIT is free; only a live listener is "in use".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise LocalTritonError(f"port {port} ({role}) is already in use") from exc


def _die_with_parent() -> None:
    """Runs in the child before exec: if the launcher dies (even SIGKILL), the kernel kills Triton.

    SIGKILL, not SIGTERM: a launcher that died without its own cleanup has nobody left waiting for a
    graceful drain, and a SIGTERMed Triton drains for up to its exit timeout while holding its ports, so
    an immediate restart failed with "port in use". Its backend stubs notice their parent is gone and
    exit by themselves; they hold no port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def first_error_line(log_text: str) -> str | None:
    """Triton's own explanation of a failed start: the first 'failed to load' line, else the first E line."""
    errors = [m.group("message") for line in log_text.splitlines() if (m := _ERROR_LINE.match(line))]
    chosen = next((m for m in errors if "failed to load" in m), errors[0] if errors else None)
    # Python-backend errors embed the stub's traceback as literal "\\n"s; the first line says it all.
    return chosen.split("\\n", 1)[0] if chosen else None


class LocalTriton:
    """`with LocalTriton(ports) as triton:` a ready Triton; stopped (process group and all) on exit.

    Start it from a thread that outlives it: the kernel sends the parent-death signal when the *thread*
    that started the server exits, so a server started from a pool thread dies when that thread does."""

    def __init__(
        self,
        ports: TritonPorts,
        *,
        model_repository: Path = DEFAULT_MODEL_REPOSITORY,
        config_name: str = "cpu",
        startup_timeout_s: float = 120.0,
        extra_args: tuple[str, ...] = (),
        log_to: Path | None = None,
        host: str | None = None,
    ) -> None:
        """`host`: bind every endpoint to this address only (several servers on one port, each on its own
        loopback address, behind one DNS name); None binds every interface and is reached on 127.0.0.1."""
        self.ports = ports
        self.host = host
        self.model_repository = model_repository.resolve()
        self.config_name = config_name
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = extra_args
        self._log_path = log_to
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return self.host or "127.0.0.1"

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://{self.address}:{self.ports.http}"

    @property
    def http_address(self) -> str:
        """host:port of the HTTP/REST endpoint: what the gateway dials on its default protocol."""
        return f"{self.address}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.ports.metrics}/metrics"

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            raise LocalTritonError("Triton has not been started")
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        wheel = TritonWheel.locate()
        models = discover_models(self.model_repository)
        ensure_ports_free(self.ports, *([self.host] if self.host else []))
        self._workdir = Path(tempfile.mkdtemp(prefix="bidgw-triton-"))
        try:
            backends = self._private_backend_dir(wheel, self._workdir)
            if self._log_path is None:
                self._log_path = self._workdir / "tritonserver.log"
            self._log_file = self._log_path.open("wb")
            command = [
                str(wheel.server_binary),
                f"--model-repository={self.model_repository}",
                f"--model-config-name={self.config_name}",
                f"--backend-directory={backends}",
                f"--http-port={self.ports.http}",
                f"--grpc-port={self.ports.grpc}",
                f"--metrics-port={self.ports.metrics}",
                "--allow-metrics=true",
                "--exit-on-error=true",
                *(
                    [f"--{kind}-address={self.host}" for kind in ("http", "grpc", "metrics")]
                    if self.host
                    else []
                ),
                *self.extra_args,
            ]
            log.info("starting %s", " ".join(command))
            self._process = subprocess.Popen(
                command,
                env=self._server_env(wheel),
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: stop() reaches the backend stubs too
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, async-signal-safe enough
            )
            self._wait_ready(models)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process is not None:
            # Stubs outlive a SIGKILLed server unless their group is reaped as well.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def kill(self) -> None:
        """SIGKILL the server (fault tests); `stop()` still reaps the group afterwards."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def read_log(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    @staticmethod
    def _private_backend_dir(wheel: TritonWheel, workdir: Path) -> Path:
        backends = workdir / "backends"
        python_backend = backends / "python"
        python_backend.mkdir(parents=True)
        for item in wheel.python_backend.iterdir():
            if item.is_file():
                (python_backend / item.name).symlink_to(item)
        shutil.copy2(wheel.backend_stub, python_backend / wheel.backend_stub.name)
        return backends

    @staticmethod
    def _server_env(wheel: TritonWheel) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, str(wheel.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join((venv_bin, env.get("PATH", "")))
        return env

    def _wait_ready(self, models: list[ModelVersion]) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        pending = [f"/v2/models/{m.name}/versions/{m.version}/ready" for m in models]
        pending.insert(0, "/v2/health/ready")
        while pending:
            if self._process is None:
                raise LocalTritonError("tritonserver was stopped during start-up")
            code = self._process.poll()
            if code is not None:
                reason = first_error_line(self.read_log()) or "no error line in its log"
                raise LocalTritonError(f"tritonserver exited early (code {code}): {reason}")
            if time.monotonic() > deadline:
                reason = first_error_line(self.read_log()) or f"{pending[0]} still not ready"
                raise LocalTritonError(
                    f"tritonserver not ready after {self.startup_timeout_s:.0f}s: {reason}"
                )
            if self._http_ok(pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.2)

    def _http_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=1.0) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False
