"""`python -m gateway <command>`: the operator's entry points.

serve   the gateway (uvicorn, uvloop + httptools) against the Triton at BIDGW_TRITON_URL
triton  a local CPU Triton on triton_models/ until Ctrl-C
run     both: a local Triton, then the gateway pointed at it; Ctrl-C stops both (`make run`)
seed-redis  load the snapshots (and campaign budgets/caps) into Redis for store_backend=redis
seed-catalog  validate a campaign catalog file and store it (and its budgets/caps) in Redis
migrate-redis  move campaign state from the layout before hash tags to today's (one-shot, idempotent)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from gateway.errors import LocalTritonError
from gateway.local_triton import (
    DEFAULT_MODEL_REPOSITORY,
    LocalTriton,
    TritonPorts,
    first_error_line,
)

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger("gateway.cli")


def _add_triton_args(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(f"--{prefix}http-port", type=int, default=8100)
    parser.add_argument(f"--{prefix}grpc-port", type=int, default=8101)
    parser.add_argument(f"--{prefix}metrics-port", type=int, default=8102)
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--config-name", default="cpu", help="configs/<name>.pbtxt per model ('' = GPU)")
    parser.add_argument("--startup-timeout", type=float, default=180.0)


def _add_serve_args(parser: argparse.ArgumentParser) -> None:
    # Defaults come from Settings (BIDGW_HOST, BIDGW_PORT, BIDGW_WORKERS); flags override them.
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--workers", type=int)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve_args(commands.add_parser("serve", help="run the gateway"))
    _add_triton_args(commands.add_parser("triton", help="run a local CPU Triton until Ctrl-C"))
    run = commands.add_parser("run", help="a local Triton and the gateway on it, until Ctrl-C")
    _add_serve_args(run)
    _add_triton_args(run, prefix="triton-")
    from gateway.stores import migrate, seed  # noqa: PLC0415 - redis only for the commands that use it

    seed.add_arguments(
        commands.add_parser("seed-redis", help="load the snapshots (and campaigns) into Redis")
    )
    from gateway.catalog import redis_catalog  # noqa: PLC0415

    redis_catalog.add_arguments(
        commands.add_parser("seed-catalog", help="validate a catalog and store it in Redis (docs/catalog.md)")
    )
    migrate.add_arguments(
        commands.add_parser(
            "migrate-redis", help="move campaign state to the hash-tagged layout (idempotent; docs/redis.md)"
        )
    )
    return parser


class _StopRequested:
    """Turns SIGINT/SIGTERM into a flag the main loop polls, so cleanup runs in one place.

    A plain attribute, not a threading.Event: the handler runs on the main thread between bytecodes, and
    Event.set() there can deadlock on the lock the interrupted Event.wait() holds (seen here)."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True

    def wait(self, timeout_s: float) -> bool:
        """Sleep `timeout_s` unless a stop was already requested; True once one was."""
        if not self.requested:
            time.sleep(timeout_s)
        return self.requested


def _local_triton(args: argparse.Namespace, ports: TritonPorts) -> LocalTriton:
    return LocalTriton(
        ports,
        model_repository=args.model_repository,
        config_name=args.config_name,
        startup_timeout_s=args.startup_timeout,
    )


def _announce(server: LocalTriton, started: float) -> None:
    log.info("Triton ready in %.1fs (pid %s)", time.monotonic() - started, server.pid)
    log.info("  HTTP    %s", server.http_url)
    log.info("  gRPC    %s", server.grpc_url)
    log.info("  metrics %s", server.metrics_url)
    log.info("  log     %s", server.log_path)


def run_triton(args: argparse.Namespace) -> int:
    stop = _StopRequested()
    ports = TritonPorts(http=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port)
    started = time.monotonic()
    with _local_triton(args, ports) as server:
        _announce(server, started)
        log.info("Ctrl-C stops it")
        while not stop.wait(0.5):
            if not server.is_running():
                log.error("tritonserver exited unexpectedly: %s", first_error_line(server.read_log()))
                return 1
    log.info("Triton stopped")
    return 0


def serve(args: argparse.Namespace) -> int:
    from gateway.config import Settings  # noqa: PLC0415
    from gateway.observability.logging import logging_config  # noqa: PLC0415

    # Flags reach every uvicorn worker process through the environment the workers' Settings() read.
    for name in ("host", "port", "workers"):
        if getattr(args, name) is not None:
            os.environ[f"BIDGW_{name.upper()}"] = str(getattr(args, name))
    settings = Settings()
    with _metrics_dir(settings) as multiproc_dir:
        if multiproc_dir is not None:
            # Workers are spawned after this, so prometheus_client picks multiprocess mode at their import.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
            settings = Settings()
        return _run_uvicorn(settings, logging_config(settings.log_level, settings.log_format))


@contextlib.contextmanager
def _metrics_dir(settings: Settings) -> Iterator[Path | None]:
    """Several workers share metrics through files: the configured dir (cleared of a previous run's
    files) or a temporary one, removed afterwards. One worker keeps them in memory."""
    from gateway.observability.metrics import prepare_multiprocess_dir  # noqa: PLC0415

    if settings.prometheus_multiproc_dir is not None:
        prepare_multiprocess_dir(settings.prometheus_multiproc_dir)
        yield settings.prometheus_multiproc_dir
    elif settings.workers > 1:
        with tempfile.TemporaryDirectory(prefix="bidgw-metrics-") as directory:
            yield Path(directory)
    else:
        yield None


def _run_uvicorn(settings: Settings, log_config: dict[str, Any]) -> int:
    import uvicorn  # noqa: PLC0415 - only this command needs the server

    log.info(
        "gateway on http://%s:%d (Triton %s, %d worker(s))",
        settings.host,
        settings.port,
        settings.triton_url,
        settings.workers,
    )
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,  # one structured line per bid comes from the app, not uvicorn's access log
        log_config=log_config,
        # Typed int by uvicorn but handed to asyncio.wait_for, which takes fractions of a second too.
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
    )
    return 0


def run_stack(args: argparse.Namespace) -> int:
    ports = TritonPorts(
        http=args.triton_http_port, grpc=args.triton_grpc_port, metrics=args.triton_metrics_port
    )
    started = time.monotonic()
    with _local_triton(args, ports) as server:
        _announce(server, started)
        from gateway.config import Settings  # noqa: PLC0415 - settings are read once the stack is up

        # The endpoint of the protocol the gateway will speak (BIDGW_TRITON_PROTOCOL, http by default).
        grpc = Settings().triton_protocol == "grpc"
        os.environ["BIDGW_TRITON_URL"] = server.grpc_url if grpc else server.http_address
        # uvicorn handles Ctrl-C/SIGTERM and returns; leaving the block then stops Triton.
        return serve(args)


def seed_redis(args: argparse.Namespace) -> int:
    from gateway.stores import seed  # noqa: PLC0415

    return seed.command(args)


def seed_catalog(args: argparse.Namespace) -> int:
    from gateway.catalog import redis_catalog  # noqa: PLC0415

    return redis_catalog.command(args)


def migrate_redis(args: argparse.Namespace) -> int:
    from gateway.stores import migrate  # noqa: PLC0415

    return migrate.command(args)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    commands = {
        "serve": serve,
        "triton": run_triton,
        "run": run_stack,
        "seed-redis": seed_redis,
        "seed-catalog": seed_catalog,
        "migrate-redis": migrate_redis,
    }
    try:
        return commands[args.command](args)
    except LocalTritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, after a clean shutdown
        return 130
