"""Coalesce concurrent bids into one upstream scoring call.

Triton's cost, and this process's, is paid per request (DESIGN.md, "Performance principles"): ~300 us of
Python per call here, ~600 us in Triton. A worker serving many bids at once therefore scores them together:
`MicroBatcher.score()` queues the caller's rows, and one upstream call scores the rows of every caller
queued at that moment; each caller gets back exactly its own slice.

When a batch leaves (the "flush"), in order of precedence:
  * size: the queued rows reach `max_rows`; the batch takes callers in arrival order up to `max_rows` rows
    (a single caller over `max_rows` goes alone, never split, never merged);
  * deadline: the earliest queued deadline, minus `expected_latency_s` for the upstream call itself,
    has come;
  * wait: `max_wait_s` has passed since the oldest queued caller arrived (0: the next loop iteration,
    so only callers that arrived in the same tick merge).
At most `concurrency_limit` batches are in flight, so Triton's dynamic batcher can still merge across
workers; while all are busy the queue keeps growing and the next batch leaves as soon as one returns
(under load, batches grow by themselves). Without a `limiter` that limit is `max_concurrent`, fixed. With
one (gateway/scoring/limiter.py) it moves between the limiter's floor and `max_concurrent`, learnt from
each call's wall time, rows, and the calls in flight when it started, and from failures: high while calls
return about as fast as an unqueued call of their size (a bid goes alone, at once), lower as Triton's
queue builds (bids wait here instead, where they merge, until Triton is just busy). Queued rows are
bounded by `max_queued_rows`: beyond it, `score()` fails at once with
ScoringUnavailable("scoring queue full") rather than queueing work that would only time out.

Deadlines: a merged call is sent with the EARLIEST deadline among its callers. Every caller then has an
answer or an error by its own deadline with no per-caller timer during the call; the cost is that a
looser caller merged with a tight one shares the tight one's timeout. The deadline trigger keeps that
rare: a tight caller leaves early rather than waiting for the window. A caller whose deadline passes
while still queued gets ScoringTimeout and is dropped from the queue; the others are unaffected.

A cancelled caller (a client disconnect) only loses its own answer: if it was still queued its rows are
withdrawn, and if its batch is in flight the batch finishes for the others. An upstream failure reaches
every caller of that batch as its own copy of the same gateway exception type, and no other batch.

Timing is read from `time.monotonic()` (the clock of callers' deadlines); timers are event-loop timers.
uvloop's timers have 1 ms resolution: it rounds a delay to whole milliseconds (`round(delay * 1000)`), so
a `max_wait_s` well under 0.5 ms means the next loop iteration, and from about 0.5 ms up (the delay is a
difference of clock instants, a hair either side of 0.5 ms) a libuv timer that fires 1 to 2 ms later.
Measured: a 500 us wait added 1.1 ms to the p50 of every bid that found no partner, which is why the
gateway's default is 0.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from gateway.core.ports import Scorer, Scores
from gateway.errors import ScoringError, ScoringTimeout, ScoringUnavailable
from gateway.scoring.limiter import AdaptiveConcurrencyLimit

FlushReason = Literal["size", "deadline", "wait", "close"]
# Upper bounds of the callers-per-batch buckets (Prometheus-style `le`), the last one open-ended.
CALLERS_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128)
# Triton's model config caps one request at max_batch_size rows.
MODEL_MAX_BATCH_SIZE: Final = 4096


@dataclass(slots=True)
class BatcherStats:
    """Monotonic counters for metrics: export them as counters (ratios give the means); one gauge."""

    batches: int = 0
    rows: int = 0
    callers: int = 0
    flush_size: int = 0
    flush_deadline: int = 0
    flush_wait: int = 0
    flush_close: int = 0
    upstream_errors: int = 0  # batches whose upstream call failed
    queue_timeouts: int = 0  # callers whose deadline passed while queued
    queue_full: int = 0  # callers rejected because the queue was full
    cancelled: int = 0  # callers cancelled (client gone) before their answer
    # Non-cumulative count of batches per CALLERS_BUCKETS bucket, plus one for "more".
    callers_per_batch: list[int] = field(default_factory=lambda: [0] * (len(CALLERS_BUCKETS) + 1))
    max_callers_in_batch: int = 0
    concurrency_limit: int = 0  # gauge: batches allowed in flight now


@dataclass(slots=True, eq=False)
class _Pending:
    cat: npt.NDArray[np.int64]
    dense: npt.NDArray[np.float32]
    rows: int
    deadline: float
    arrived: float
    future: asyncio.Future[Scores]
    queued: bool = True  # False once cut into a batch or expired


class MicroBatcher:
    """`ports.Scorer` that merges concurrent `score()` calls into upstream calls of up to `max_rows` rows.

    It does not own `upstream`: whoever started the upstream scorer closes it, after `aclose()` here.
    """

    def __init__(
        self,
        upstream: Scorer,
        *,
        max_rows: int = 2048,
        max_wait_s: float = 0.0,
        expected_latency_s: float = 0.002,
        max_concurrent: int = 4,
        max_queued_rows: int | None = None,
        limiter: AdaptiveConcurrencyLimit | None = None,
    ) -> None:
        if not 0 < max_rows <= MODEL_MAX_BATCH_SIZE:
            raise ValueError(f"max_rows must be in (0, {MODEL_MAX_BATCH_SIZE}], got {max_rows}")
        if max_wait_s < 0 or expected_latency_s < 0:
            raise ValueError("max_wait_s and expected_latency_s must be >= 0")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self._upstream = upstream
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.expected_latency_s = expected_latency_s
        self.max_concurrent = max_concurrent
        self.max_queued_rows = 16 * max_rows if max_queued_rows is None else max_queued_rows
        self.limiter = limiter
        self.stats = BatcherStats(concurrency_limit=self.concurrency_limit)
        self._queue: list[_Pending] = []
        self._queued_rows = 0
        self._earliest_deadline = float("inf")
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Handle | None = None
        self._timer_at = float("inf")
        self._timer_reason: FlushReason = "wait"
        self._closed = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def concurrency_limit(self) -> int:
        """Batches allowed in flight now: `max_concurrent`, or the limiter's limit capped by it."""
        if self.limiter is None:
            return self.max_concurrent
        return min(self.max_concurrent, self.limiter.limit)

    async def ready(self) -> bool:
        return not self._closed and await self._upstream.ready()

    async def score(
        self, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], deadline: float
    ) -> Scores:
        now = time.monotonic()
        if deadline <= now:
            raise ScoringTimeout(f"deadline passed {(now - deadline) * 1000:.1f} ms before scoring")
        if self._closed:
            raise ScoringUnavailable("scoring batcher is closed")
        rows = int(cat_ids.shape[0])
        if self._queued_rows + rows > self.max_queued_rows:
            self.stats.queue_full += 1
            raise ScoringUnavailable("scoring queue full")
        loop = asyncio.get_running_loop()
        item = _Pending(cat_ids, dense, rows, deadline, now, loop.create_future())
        self._queue.append(item)
        self._queued_rows += rows
        self._earliest_deadline = min(self._earliest_deadline, deadline)
        if self._queued_rows >= self.max_rows:
            self._pump(None)
        else:
            self._arm(now)
        try:
            return await item.future
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            if item.queued:
                self._withdraw(item)
            raise

    async def aclose(self) -> None:
        """Refuse new callers, send everything queued, and wait for the batches in flight.

        Bounded: every upstream call carries its callers' deadline.
        """
        self._closed = True
        self._cancel_timer()
        self._pump("close")
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- queue management (all synchronous: runs between awaits, so no locks are needed) --

    def _pump(self, fired: FlushReason | None) -> None:
        """Expire overdue callers, launch every batch that is due while a slot is free, re-arm the timer."""
        now = time.monotonic()
        if self._earliest_deadline <= now:
            self._expire(now)
        limit = self.concurrency_limit
        while self._queue and (self._inflight < limit or fired == "close"):
            reason = self._due(now) or fired
            if reason is None:
                break
            if fired != "close":
                # A timer covers the one batch it fired for; any further batch needs a reason of its own.
                fired = None
            self._launch(self._cut(), reason)
        self._arm(now)

    def _due(self, now: float) -> FlushReason | None:
        if self._queued_rows >= self.max_rows:
            return "size"
        if self._earliest_deadline - self.expected_latency_s <= now:
            return "deadline"
        if self.max_wait_s > 0 and self._queue[0].arrived + self.max_wait_s <= now:
            return "wait"
        return None

    def _arm(self, now: float) -> None:
        """Schedule the one timer for the next moment the queue needs attention (or none if empty)."""
        if not self._queue:
            self._cancel_timer()
            return
        if self._inflight >= self.concurrency_limit:
            # Nothing can leave until a batch returns (which pumps); only queued deadlines need watching.
            at = self._earliest_deadline
            reason: FlushReason = "deadline"
        else:
            wait_at = self._queue[0].arrived + self.max_wait_s
            deadline_at = self._earliest_deadline - self.expected_latency_s
            reason = "deadline" if deadline_at < wait_at else "wait"
            at = min(deadline_at, wait_at)
        if self._timer is not None:
            if at == self._timer_at:
                return  # the common case: more callers joined a batch whose timer is already set
            # Earlier (a tighter deadline) or later (the head was just sent): a stale timer would flush
            # the next batch before its own window, so it is replaced.
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        delay = at - now
        self._timer = loop.call_soon(self._on_timer) if delay <= 0 else loop.call_later(delay, self._on_timer)
        self._timer_at = at
        self._timer_reason = reason

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._pump(self._timer_reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = float("inf")

    def _cut(self) -> list[_Pending]:
        """The oldest callers that fit in max_rows (at least one: an oversize caller goes alone)."""
        queue = self._queue
        total = queue[0].rows
        end = 1
        while end < len(queue) and total + queue[end].rows <= self.max_rows:
            total += queue[end].rows
            end += 1
        batch = queue[:end]
        del queue[:end]
        self._queued_rows -= total
        self._earliest_deadline = min((p.deadline for p in queue), default=float("inf"))
        for item in batch:
            item.queued = False
        return batch

    def _withdraw(self, item: _Pending) -> None:
        item.queued = False
        self._queue.remove(item)
        self._queued_rows -= item.rows
        if item.deadline <= self._earliest_deadline:
            self._earliest_deadline = min((p.deadline for p in self._queue), default=float("inf"))

    def _expire(self, now: float) -> None:
        keep: list[_Pending] = []
        for item in self._queue:
            if item.deadline <= now:
                item.queued = False
                self._queued_rows -= item.rows
                if not item.future.done():
                    self.stats.queue_timeouts += 1
                    item.future.set_exception(ScoringTimeout("deadline passed while queued for scoring"))
            else:
                keep.append(item)
        self._queue = keep
        self._earliest_deadline = min((p.deadline for p in keep), default=float("inf"))

    def _launch(self, batch: list[_Pending], reason: FlushReason) -> None:
        stats = self.stats
        stats.batches += 1
        stats.callers += len(batch)
        stats.rows += sum(p.rows for p in batch)
        stats.callers_per_batch[bisect.bisect_left(CALLERS_BUCKETS, len(batch))] += 1
        stats.max_callers_in_batch = max(stats.max_callers_in_batch, len(batch))
        if reason == "size":
            stats.flush_size += 1
        elif reason == "deadline":
            stats.flush_deadline += 1
        elif reason == "wait":
            stats.flush_wait += 1
        else:
            stats.flush_close += 1
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one upstream call --

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            await self._score_batch(batch)
        finally:
            self._inflight -= 1
            if self._queue:
                self._pump("close" if self._closed else None)

    async def _score_batch(self, batch: list[_Pending]) -> None:
        if all(p.future.done() for p in batch):
            return  # every caller gave up (cancelled) before the call started
        if len(batch) == 1:
            cat, dense = batch[0].cat, batch[0].dense
        else:
            cat = np.concatenate([p.cat for p in batch])
            dense = np.concatenate([p.dense for p in batch])
        deadline = min(p.deadline for p in batch)
        inflight = self._inflight
        started = time.monotonic()
        try:
            scores = await self._upstream.score(cat, dense, deadline)
        except ScoringError as exc:
            self.stats.upstream_errors += 1
            if self.limiter is not None:
                # A refusal is a drop (AIMD's): while Triton refuses or is unreachable, fewer calls in
                # flight only merge more bids into each doomed call. A timeout is one if its budget was
                # ample (the limiter judges that from the budget and the rows).
                budget = deadline - started if isinstance(exc, ScoringTimeout) else None
                self.limiter.on_drop(budget_s=budget, rows=int(cat.shape[0]))
                self.stats.concurrency_limit = self.concurrency_limit
            for item in batch:
                if not item.future.done():
                    # A copy per caller: one exception object raised in many tasks would splice their
                    # tracebacks together.
                    copy = type(exc)(*exc.args)
                    copy.__cause__ = exc
                    item.future.set_exception(copy)
            return
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(ScoringUnavailable("scoring batcher closed mid-call"))
            raise
        except Exception as exc:  # noqa: BLE001 - not swallowed: every caller of the batch raises it
            # A bug upstream (not a gateway error) must still reach the callers rather than leave them
            # waiting on futures nobody will resolve.
            self.stats.upstream_errors += 1
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        total = cat.shape[0]
        if scores.pctr.shape[0] != total or scores.pcvr.shape[0] != total:
            self.stats.upstream_errors += 1
            error = f"upstream scored {scores.pctr.shape[0]} rows of {total}"
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(ScoringUnavailable(error))
            return
        if self.limiter is not None:
            # Recorded before the callers resume: the batch that leaves when this one's slot frees
            # already sees the new limit.
            self.limiter.on_success(time.monotonic() - started, total, inflight)
            self.stats.concurrency_limit = self.concurrency_limit
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(scores)
            return
        # Plain slices (views) rather than np.split, whose Python wrapper cost ~10 us per output per batch.
        pctr, pcvr, version = scores.pctr, scores.pcvr, scores.model_version
        start = 0
        for item in batch:
            end = start + item.rows
            if not item.future.done():
                item.future.set_result(
                    Scores(pctr=pctr[start:end], pcvr=pcvr[start:end], model_version=version)
                )
            start = end
