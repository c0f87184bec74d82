"""What one bid costs Redis, measured end to end: `python -m loadtests.redis_cost`.

Starts a real `redis-server` on a free loopback port (or takes `--redis-url` of a throwaway one), seeds it
the operator's way (`python -m gateway seed-redis`, every snapshot campaign managed with a budget that
never runs out, so each winner takes the full hold path), starts the real gateway
(`python -m gateway serve`, `BIDGW_STORE_BACKEND=redis`) and POSTs realistic 50-candidate bids to
/v1/bid over loopback. Only the public surfaces are used (CLI, HTTP, Redis's own INFO and SLOWLOG), so
this keeps measuring whatever the store does inside, single node or hash-tagged Lua per shard.

Triton is deliberately unreachable (a closed port) with `BIDGW_ON_SCORING_FAILURE=priors`: a bid's Redis
traffic depends on its candidates and winners, not on where the scores came from, and leaving Triton out
keeps this quick and runnable anywhere redis-server is.

Per bid, over a measured pass after a warm-up pass (the worker's ad/config cache warm, as in steady state):
  round_trips     read events Redis processed (total_reads_processed): a request, or a whole pipeline,
                  arrives in one read unless it exceeds Redis's 16 KiB read buffer
  calls           top-level commands the gateway sent (SLOWLOG at threshold 0 logs every command; those
                  a Lua script ran carry the address "?:0" and are left out)
  commands        everything Redis executed, script-internal calls included (total_commands_processed)
  bytes in / out  total_net_input_bytes / total_net_output_bytes, minus this probe's own traffic
  redis CPU       used_cpu_user + used_cpu_sys of redis-server, and the commands' own execution time
  memory          used_memory growth: bid records and holds that live for bid_ttl_s
Also the HTTP bytes of a bid (request as sent, response as served) and, unless --no-cpu-compare, the
gateway's own CPU per bid with the Redis store against the embedded one under the same load: the
client-side cost of talking to Redis, which the benchmark (embedded store) does not include.

Writes loadtests/results/redis_cost.json, which `python -m loadtests.capacity` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httpx

from gateway.local_triton import free_port
from loadtests.bench.processes import process_tree_cpu_s, start_gateway
from loadtests.workload import DEFAULT_SNAPSHOTS, Workload, WorkloadConfig

__all__ = ["RedisCost", "distinct_campaigns_per_bid", "main", "measure"]

log = logging.getLogger("loadtests.redis_cost")

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_OUT: Final = REPO_ROOT / "loadtests" / "results" / "redis_cost.json"
CANDIDATES: Final = 50
PROBE_NAME: Final = "bidgw-redis-cost-probe"
# Commands only this probe sends; they are left out of the gateway's per-command counts.
PROBE_COMMANDS: Final = frozenset(
    {"info", "slowlog|get", "slowlog|reset", "client|setname", "config|set", "config|get", "auth", "select"}
)
# Big enough to hold every top-level command of a run (a bid sends a few); checked after the run.
SLOWLOG_MAX_LEN: Final = 1_000_000
# Redis keeps at most 32 arguments of a slowlog entry; the last one then says how many were cut.
_MORE_ARGS: Final = re.compile(rb"^\.\.\. \((\d+) more arguments\)$")
# Everything the measured pass may take on a starved 2-core box before it is called stuck.
_RUN_TIMEOUT_S: Final = 300.0

RespValue = bytes | int | list["RespValue"] | None


class RespError(Exception):
    """Redis answered an error, or the probe connection broke."""


class _Probe:
    """A minimal RESP2 client on one socket that counts its own bytes, so they can be taken out of
    Redis's traffic counters exactly (redis-py does not expose the bytes it moves)."""

    def __init__(self, host: str, port: int, *, password: str | None = None, db: int = 0) -> None:
        self._sock = socket.create_connection((host, port), timeout=30)
        self._buffer = b""
        self.sent = 0
        self.received = 0
        if password:
            self.call("AUTH", password)
        if db:
            self.call("SELECT", str(db))
        self.call("CLIENT", "SETNAME", PROBE_NAME)

    def close(self) -> None:
        self._sock.close()

    def call(self, *args: str) -> RespValue:
        payload = b"".join(
            [f"*{len(args)}\r\n".encode()] + [b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args]
        )
        self._sock.sendall(payload)
        self.sent += len(payload)
        return self._read()

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _exact(self, size: int) -> bytes:
        while len(self._buffer) < size + 2:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size + 2 :]
        return data

    def _fill(self) -> None:
        chunk = self._sock.recv(1 << 16)
        if not chunk:
            raise RespError("redis closed the probe connection")
        self.received += len(chunk)
        self._buffer += chunk

    def _read(self) -> RespValue:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read() for _ in range(count)]
        raise RespError(f"unexpected RESP reply {line[:40]!r}")

    def info(self, section: str) -> dict[str, str]:
        raw = self.call("INFO", section)
        if not isinstance(raw, bytes):
            raise RespError(f"INFO {section} answered {type(raw).__name__}")
        fields: dict[str, str] = {}
        for line in raw.decode().splitlines():
            if line and not line.startswith("#") and ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value
        return fields


def _commandstats(fields: Mapping[str, str]) -> dict[str, tuple[int, int]]:
    """cmdstat_<name>: calls=..,usec=.. -> {name: (calls, usec)}; script calls are counted here too."""
    stats: dict[str, tuple[int, int]] = {}
    for key, value in fields.items():
        if key.startswith("cmdstat_"):
            parts = dict(item.split("=", 1) for item in value.split(","))
            stats[key.removeprefix("cmdstat_")] = (int(parts["calls"]), int(parts["usec"]))
    return stats


@dataclass(frozen=True, slots=True)
class _Snapshot:
    commands: int
    net_in: int
    reads: int  # read events: one per round trip (a pipeline arrives in one read)
    net_out: int
    cpu_s: float
    commandstats: dict[str, tuple[int, int]]

    @classmethod
    def take(cls, probe: _Probe) -> _Snapshot:
        fields = probe.info("all")
        return cls(
            commands=int(fields["total_commands_processed"]),
            net_in=int(fields["total_net_input_bytes"]),
            reads=int(fields["total_reads_processed"]),
            net_out=int(fields["total_net_output_bytes"]),
            cpu_s=float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"]),
            commandstats=_commandstats(fields),
        )


@dataclass(frozen=True, slots=True)
class _SlowEntry:
    command: str
    argc: int
    duration_us: int  # the command's execution, as commandstats counts it (a script's includes its calls)
    from_script: bool  # run by a Lua script (Redis logs those too, with the fake client's address "?:0")
    from_probe: bool
    args: tuple[bytes, ...]  # as logged: at most 32, the last one then saying how many more there were


def _slowlog(probe: _Probe) -> list[_SlowEntry]:
    """Every logged command: [id, time, usec, args, addr, name] entries."""
    raw = probe.call("SLOWLOG", "GET", "-1")
    entries: list[_SlowEntry] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, list) or len(item) < 4 or not isinstance(item[3], list):
            continue
        address = item[4] if len(item) > 4 and isinstance(item[4], bytes) else b""
        name = item[5] if len(item) > 5 else b""
        args = [a for a in item[3] if isinstance(a, bytes)]
        if not args:
            continue
        argc = len(args)
        if (cut := _MORE_ARGS.match(args[-1])) is not None:
            argc = len(args) - 1 + int(cut.group(1))
        duration = item[2] if isinstance(item[2], int) else 0
        entries.append(
            _SlowEntry(
                command=args[0].decode().lower(),
                argc=argc,
                duration_us=duration,
                from_script=address.startswith(b"?"),
                from_probe=name == PROBE_NAME.encode(),
                args=tuple(args),
            )
        )
    return entries


# ------------------------------------------------------------------------------------------ processes


@contextlib.contextmanager
def _redis_server() -> Iterator[str]:
    """A throwaway redis-server on loopback (no persistence), the way the integration tests start one."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: `make system-deps` installs it")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bidgw-redis-cost-"))
    command = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--logfile", str(workdir / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _Probe("127.0.0.1", port).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {workdir / 'redis.log'}") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _gateway(env: Mapping[str, str], workdir: Path) -> Iterator[tuple[str, int]]:
    """`python -m gateway serve` (one worker) on a free loopback port, as the bench starts it: (base URL,
    pid). Ready without Triton: fallback scoring keeps a replica ready (gateway/api/routes.py)."""
    # Nothing listens there: every bid scores on priors, which leaves its Redis traffic unchanged.
    with start_gateway(f"127.0.0.1:{free_port()}", workers=1, log_dir=workdir, extra_env=env) as server:
        yield f"http://127.0.0.1:{server.port}", server.pid


def _seed(redis_url: str, snapshots: Path, workdir: Path) -> None:
    """The operator's command; every snapshot campaign gets a budget and cap no bid here can exhaust, so
    every winner runs the full hold script instead of the unmanaged shortcut."""
    with gzip.open(snapshots / "ads.jsonl.gz", "rt", encoding="utf-8") as lines:
        campaigns = sorted({json.loads(line)["campaign_id"] for line in lines})
    specs = workdir / "campaigns.jsonl"
    specs.write_text(
        "".join(
            json.dumps({"campaign_id": cid, "daily_budget_usd": 1e9, "freq_cap": 1_000_000}) + "\n"
            for cid in campaigns
        )
    )
    command = [
        sys.executable, "-m", "gateway", "seed-redis",
        "--redis-url", redis_url, "--snapshots", str(snapshots), "--campaigns", str(specs),
    ]  # fmt: skip
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)


# ------------------------------------------------------------------------------------------------ load


@dataclass(slots=True)
class _Tally:
    bids: int = 0
    errors: int = 0
    winners: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    wall_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.bids / self.wall_s if self.wall_s > 0 else 0.0


def _header_bytes(headers: httpx.Headers) -> int:
    # "name: value\r\n" per header; the request or status line is left out (a few bytes either way).
    return sum(len(name) + len(value) + 4 for name, value in headers.raw)


async def _drive(base_url: str, bodies: Sequence[bytes], count: int, concurrency: int) -> _Tally:
    """`count` bids cycling over `bodies`, `concurrency` at a time (closed loop, bounded)."""
    tally = _Tally()
    cursor = iter(range(count))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0) as client:

        async def worker() -> None:
            for n in cursor:
                body = bodies[n % len(bodies)]
                response = await client.post(
                    "/v1/bid", content=body, headers={"content-type": "application/json"}
                )
                tally.bids += 1
                tally.statuses[response.status_code] += 1
                tally.request_bytes += len(body) + _header_bytes(response.request.headers)
                tally.response_bytes += len(response.content) + _header_bytes(response.headers)
                if response.status_code == 200:
                    answer = response.json()
                    tally.winners += sum(len(seat.get("bid", [])) for seat in answer.get("seatbid", []))
                elif response.status_code != 204:
                    tally.errors += 1

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), _RUN_TIMEOUT_S)
        tally.wall_s = time.monotonic() - started
    return tally


# --------------------------------------------------------------------------------------------- measure


@dataclass(frozen=True, slots=True)
class RedisCost:
    """Per-bid figures of one run; `as_json` is the results file."""

    meta: dict[str, object]
    per_bid: dict[str, object]
    gateway_cpu_us_per_bid: dict[str, float] | None

    def as_json(self) -> dict[str, object]:
        return {
            "meta": self.meta,
            "per_bid": self.per_bid,
            "gateway_cpu_us_per_bid": self.gateway_cpu_us_per_bid,
        }


def _gateway_env(backend: str, redis_url: str) -> dict[str, str]:
    return {
        "BIDGW_STORE_BACKEND": backend,
        "BIDGW_REDIS_URL": redis_url,
        "BIDGW_ON_SCORING_FAILURE": "priors",
        # The load client, gateway and Redis share this box's cores: a roomier cap than production's
        # 10 ms keeps a starved event loop from turning into failed lookups that send nothing.
        "BIDGW_REDIS_TIMEOUT_MS": "100",
    }


@dataclass(frozen=True, slots=True)
class _RedisPass:
    per_bid: dict[str, object]
    redis_version: str
    statuses: dict[int, int]
    gateway_cpu_us: float
    rate: float


def _redis_pass(
    redis_url: str, bodies: Sequence[bytes], *, bids: int, concurrency: int, workdir: Path
) -> _RedisPass:
    parts = urlsplit(redis_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    db = int(parts.path.strip("/") or 0)
    probe = _Probe(host, port, password=parts.password, db=db)
    try:
        version = probe.info("server").get("redis_version", "?")
        previous = {
            name: probe.call("CONFIG", "GET", name) for name in ("slowlog-log-slower-than", "slowlog-max-len")
        }
        probe.call("CONFIG", "SET", "slowlog-log-slower-than", "0")
        probe.call("CONFIG", "SET", "slowlog-max-len", str(SLOWLOG_MAX_LEN))
        try:
            with _gateway(_gateway_env("redis", redis_url), workdir) as (url, pid):
                # Warm-up: opens the pool's connections and fills the worker's ad/config cache.
                asyncio.run(_drive(url, bodies, len(bodies), concurrency))
                # The probe's own traffic between the two snapshots, measured with nothing else running.
                calibration = _probe_overhead(probe)
                memory_before = int(probe.info("memory")["used_memory"])
                before = _Snapshot.take(probe)
                probe.call("SLOWLOG", "RESET")
                cpu_before = process_tree_cpu_s(pid)
                tally = asyncio.run(_drive(url, bodies, bids, concurrency))
                gateway_cpu_s = process_tree_cpu_s(pid) - cpu_before
                after = _Snapshot.take(probe)
                # Read before the gateway stops, so its shutdown cannot add entries.
                entries = [entry for entry in _slowlog(probe) if not entry.from_probe]
                probe.call("SLOWLOG", "RESET")  # its entries are memory too
                memory_after = int(probe.info("memory")["used_memory"])
            mget_isolated_us = _replay_mget(
                probe, [e for e in entries if e.command == "mget" and not e.from_script]
            )
        finally:
            for name, reply in previous.items():
                if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], bytes):
                    probe.call("CONFIG", "SET", name, reply[1].decode())
    finally:
        probe.close()
    if len(entries) >= SLOWLOG_MAX_LEN:
        raise RuntimeError("the slowlog overflowed: fewer bids per run")
    if tally.errors:
        raise RuntimeError(f"{tally.errors} of {tally.bids} bids failed: {dict(tally.statuses)}")

    n = tally.bids
    gateway_sent = [entry for entry in entries if not entry.from_script]
    top_level = Counter(entry.command for entry in gateway_sent)
    exec_us: Counter[str] = Counter()
    durations: dict[str, list[int]] = {}
    for entry in gateway_sent:
        exec_us[entry.command] += entry.duration_us
        durations.setdefault(_call_kind(entry), []).append(entry.duration_us)
    # The median call: this shared box preempts Redis mid-command now and then, which the mean carries.
    median_us = {kind: statistics.median(values) for kind, values in durations.items()}
    mgets = [entry.argc - 1 for entry in gateway_sent if entry.command == "mget"]
    gateway_calls = {
        name: calls - before.commandstats.get(name, (0, 0))[0]
        for name, (calls, _) in after.commandstats.items()
        if name not in PROBE_COMMANDS
    }
    probe_commands = sum(
        calls - before.commandstats.get(name, (0, 0))[0]
        for name, (calls, _) in after.commandstats.items()
        if name in PROBE_COMMANDS
    )
    per_bid: dict[str, object] = {
        "round_trips": round((after.reads - before.reads - calibration[2]) / n, 3),
        "calls": round(sum(top_level.values()) / n, 3),
        "calls_by_command": {name: round(c / n, 3) for name, c in sorted(top_level.items())},
        "commands_incl_script_calls": round((after.commands - before.commands - probe_commands) / n, 3),
        "commands_by_name": {
            name: round(calls / n, 3) for name, calls in sorted(gateway_calls.items()) if calls > 0
        },
        "mget_keys": round(sum(mgets) / len(mgets), 1) if mgets else 0.0,
        "bytes_in": round((after.net_in - before.net_in - calibration[0]) / n, 1),
        "bytes_out": round((after.net_out - before.net_out - calibration[1]) / n, 1),
        "redis_cpu_us": round((after.cpu_s - before.cpu_s) * 1e6 / n, 2),
        # Summing commandstats would count a script's calls twice (in the script and on their own).
        "redis_exec_us": round(sum(exec_us.values()) / n, 2),
        "redis_exec_us_by_command": {name: round(us / n, 2) for name, us in sorted(exec_us.items())},
        "redis_exec_us_median": round(sum(statistics.median(v) * len(v) for v in durations.values()) / n, 2),
        "median_call_us_by_command": {name: float(us) for name, us in sorted(median_us.items())},
        # The same multi-key read replayed by the probe alone, after the load: what it costs Redis when
        # nothing else competes for its core and caches (None when the store sent no MGET).
        "mget_isolated_median_us": mget_isolated_us,
        "memory_bytes": round((memory_after - memory_before) / n, 1),
        "winners": round(tally.winners / n, 3),
        "http_request_bytes": round(tally.request_bytes / n, 1),
        "http_response_bytes": round(tally.response_bytes / n, 1),
    }
    return _RedisPass(per_bid, version, dict(tally.statuses), gateway_cpu_s * 1e6 / n, tally.rate)


def _call_kind(entry: _SlowEntry) -> str:
    """The command, and for a script call which script: a read and a hold script cost differently."""
    if entry.command in {"evalsha", "evalsha_ro", "fcall", "fcall_ro"} and len(entry.args) > 1:
        return f"{entry.command}:{entry.args[1].decode(errors='replace')[:12]}"
    return entry.command


def _replay_mget(probe: _Probe, mgets: Sequence[_SlowEntry], repeats: int = 300) -> float | None:
    """Median execution of an MGET as wide as the gateway's, over keys the gateway really read (the
    slowlog keeps the first 31 of each), replayed back to back by the probe alone."""
    pool = sorted({key for entry in mgets for key in entry.args[1:] if not _MORE_ARGS.match(key)})
    if not pool:
        return None
    width = round(statistics.fmean(entry.argc - 1 for entry in mgets))
    rng = random.Random(0)
    keys = [rng.choice(pool).decode() for _ in range(width)]
    probe.call("SLOWLOG", "RESET")
    for _ in range(repeats):
        probe.call("MGET", *keys)
    replayed = [e.duration_us for e in _slowlog(probe) if e.from_probe and e.command == "mget"]
    probe.call("SLOWLOG", "RESET")
    return float(statistics.median(replayed)) if replayed else None


def _probe_overhead(probe: _Probe) -> tuple[int, int, int]:
    """Redis-side bytes in/out that the probe's own snapshot sequence adds, measured on an idle moment:
    the `before` INFO's reply, SLOWLOG RESET, and the `after` INFO's request (bytes in, out, reads)."""
    first = _Snapshot.take(probe)
    probe.call("SLOWLOG", "RESET")
    second = _Snapshot.take(probe)
    return second.net_in - first.net_in, second.net_out - first.net_out, second.reads - first.reads


def _embedded_cpu_us(
    bodies: Sequence[bytes], *, bids: int, concurrency: int, workdir: Path
) -> tuple[float, float]:
    """(gateway CPU us per bid, bids/s) on the embedded store under the same closed loop."""
    with _gateway(_gateway_env("embedded", "redis://127.0.0.1:1/0"), workdir) as (url, pid):
        asyncio.run(_drive(url, bodies, len(bodies), concurrency))
        cpu_before = process_tree_cpu_s(pid)
        tally = asyncio.run(_drive(url, bodies, bids, concurrency))
        return (process_tree_cpu_s(pid) - cpu_before) * 1e6 / tally.bids, tally.rate


def distinct_campaigns_per_bid(bodies: Sequence[bytes]) -> float:
    """Mean distinct candidate campaigns per request: how many campaign key groups one bid reads (what a
    sharded layout fans out over)."""
    counts = [len({c["campaign_id"] for c in json.loads(body)["ext"]["candidates"]}) for body in bodies]
    return round(sum(counts) / len(counts), 2)


def measure(
    *,
    bids: int,
    distinct: int,
    concurrency: int,
    seed: int,
    redis_url: str | None,
    cpu_compare: bool,
    snapshots: Path = DEFAULT_SNAPSHOTS,
) -> RedisCost:
    workload = Workload.load(WorkloadConfig.fixed(CANDIDATES), snapshots)
    bodies = [json.dumps(r, separators=(",", ":")).encode() for r in workload.requests(distinct, seed)]
    started = datetime.now(UTC)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bidgw-redis-cost-")))
        url = redis_url or stack.enter_context(_redis_server())
        _seed(url, snapshots, workdir)
        found = _redis_pass(url, bodies, bids=bids, concurrency=concurrency, workdir=workdir)
        embedded_cpu = (
            _embedded_cpu_us(bodies, bids=bids, concurrency=concurrency, workdir=workdir)
            if cpu_compare
            else None
        )
    meta: dict[str, object] = {
        "measured_at": started.strftime("%Y-%m-%d %H:%M UTC"),
        "distinct_campaigns_per_bid": distinct_campaigns_per_bid(bodies),
        "redis_version": found.redis_version,
        "bids": bids,
        "statuses": {str(code): count for code, count in sorted(found.statuses.items())},
        "cpus": os.cpu_count(),
        "candidates": CANDIDATES,
        "distinct_requests": len(bodies),
        "concurrency": concurrency,
        "gateway_workers": 1,
        "scoring": "priors (Triton unreachable on purpose; a bid's Redis traffic does not depend on scores)",
    }
    cpu = None
    if embedded_cpu is not None:
        cpu = {
            "redis": round(found.gateway_cpu_us, 1),
            "embedded": round(embedded_cpu[0], 1),
            "redis_extra": round(found.gateway_cpu_us - embedded_cpu[0], 1),
            "redis_pass_bids_per_s": round(found.rate, 1),
            "embedded_pass_bids_per_s": round(embedded_cpu[1], 1),
        }
    return RedisCost(meta=meta, per_bid=found.per_bid, gateway_cpu_us_per_bid=cpu)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.redis_cost", description="What one bid costs Redis, end to end."
    )
    parser.add_argument("--bids", type=int, default=3000, help="bids in the measured pass")
    parser.add_argument("--distinct", type=int, default=512, help="distinct requests (also the warm-up)")
    parser.add_argument("--concurrency", type=int, default=8, help="bids in flight (closed loop)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--redis-url", help="a throwaway Redis to use (it is seeded); default: start one")
    parser.add_argument(
        "--no-cpu-compare", action="store_true", help="skip the gateway CPU run on the embedded store"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.bids < 1 or args.distinct < 1 or args.concurrency < 1:
        parser.error("--bids, --distinct and --concurrency must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per bid otherwise
    cost = measure(
        bids=args.bids,
        distinct=args.distinct,
        concurrency=args.concurrency,
        seed=args.seed,
        redis_url=args.redis_url,
        cpu_compare=not args.no_cpu_compare,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(cost.as_json(), indent=2) + "\n")
    log.info("%s\nwritten to %s", json.dumps(cost.per_bid, indent=2), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
