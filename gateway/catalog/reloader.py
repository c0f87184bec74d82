"""Hot reload: the holder retrieval reads the current index from, and the poller that swaps in new ones.

`CatalogHolder.index` is the only thing a request reads (one attribute read; a swap is one reference
store, atomic under the GIL), so a reload never blocks or drops a bid and a request never mixes two
catalog versions. `CatalogReloader` polls a `CatalogSource` every `interval_s`; when the source reports
new bytes it parses and indexes them in a worker thread (`asyncio.to_thread`: seconds at 1M creatives
must not stall the event loop) and swaps the holder's reference. A catalog that fails to load never
replaces the one serving: the failure is counted, logged with its line number, and kept in the stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.catalog.index import CatalogIndex, build_index
from gateway.catalog.loader import Catalog, parse_catalog
from gateway.errors import CatalogError, StoreError

__all__ = ["CatalogHolder", "CatalogReloader", "CatalogSource", "CatalogStats", "FileCatalogSource"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CatalogStats:
    """What an operator watches (the integrator exports these to Prometheus)."""

    version: str  # "" before the first successful load
    loaded_at: float  # wall-clock epoch seconds of the last successful load; 0.0 before it
    creatives: int  # creatives in the index (paused campaigns excluded)
    reloads_ok: int
    reloads_failed: int
    last_error: str | None  # the last failure's message ("line 17: ..."), None when none yet


class CatalogHolder:
    """The current catalog index (None until one loads) and the reload counters."""

    def __init__(self, index: CatalogIndex | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.index: CatalogIndex | None = index
        self.digest: str | None = None  # sha256 of the bytes behind `index`
        self.loaded_at = clock() if index is not None else 0.0
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_error: str | None = None

    def swap(self, index: CatalogIndex, digest: str) -> None:
        self.index = index
        self.digest = digest
        self.loaded_at = self._clock()
        self.reloads_ok += 1

    def fail(self, error: str) -> None:
        self.reloads_failed += 1
        self.last_error = error

    def stats(self) -> CatalogStats:
        index = self.index
        return CatalogStats(
            version=index.version if index is not None else "",
            loaded_at=self.loaded_at,
            creatives=index.size if index is not None else 0,
            reloads_ok=self.reloads_ok,
            reloads_failed=self.reloads_failed,
            last_error=self.last_error,
        )


class CatalogSource(Protocol):
    """Where catalog bytes come from. `fetch` returns the bytes when they may have changed since the last
    call (None: unchanged, nothing to do); raises CatalogError or StoreError when they cannot be read."""

    name: str

    async def fetch(self) -> bytes | None: ...


class FileCatalogSource:
    """A catalog file, re-read when its mtime or size changes and reloaded when its content hash does.
    Replace the file atomically (write a temporary file, then rename): a half-written file fails to load,
    is counted, and is retried once it changes again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file {path}"
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the last read
        self._digest: str | None = None

    async def fetch(self) -> bytes | None:
        return await asyncio.to_thread(self._fetch)

    def _fetch(self) -> bytes | None:
        try:
            status = os.stat(self.path)
            if (status.st_mtime_ns, status.st_size) == self._seen:
                return None
            data = self.path.read_bytes()
        except OSError as exc:
            raise CatalogError(f"catalog file {self.path} is not readable: {exc.strerror or exc}") from exc
        self._seen = (status.st_mtime_ns, status.st_size)
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return None  # touched, not changed
        self._digest = digest
        return data


def index_catalog(data: bytes) -> tuple[Catalog, CatalogIndex]:
    """Parse and index catalog bytes (CPU-bound: call it in a thread); CatalogError when invalid."""
    catalog = parse_catalog(data)
    return catalog, build_index(catalog)


class CatalogReloader:
    """Polls `source` every `interval_s` and swaps new indexes into `holder`."""

    def __init__(self, holder: CatalogHolder, source: CatalogSource, *, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.holder = holder
        self.source = source
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def load_initial(self) -> CatalogStats:
        """The first load, at startup: raises CatalogError/StoreError instead of counting, so a gateway
        with a broken catalog fails to start rather than serving nothing."""
        data = await self.source.fetch()
        if data is None:
            raise CatalogError(f"{self.source.name}: no catalog to load")
        catalog, index = await asyncio.to_thread(index_catalog, data)
        self.holder.swap(index, catalog.digest)
        log.info("catalog %s loaded from %s: %d creatives", index.version, self.source.name, index.size)
        return self.holder.stats()

    async def reload_once(self) -> bool:
        """One poll: True when a new catalog was swapped in. A bad one is counted, logged and dropped."""
        try:
            data = await self.source.fetch()
            if data is None:
                return False
            catalog, index = await asyncio.to_thread(index_catalog, data)
        except (CatalogError, StoreError) as exc:
            self.holder.fail(str(exc))
            # One line with the file's line number is what the operator needs, not a traceback.
            log.error(  # noqa: TRY400
                "catalog reload from %s rejected, still serving %s: %s",
                self.source.name,
                self.holder.stats().version or "nothing",
                exc,
            )
            return False
        if catalog.digest == self.holder.digest:
            return False
        self.holder.swap(index, catalog.digest)
        log.info("catalog %s loaded from %s: %d creatives", index.version, self.source.name, index.size)
        return True

    async def run(self) -> None:
        """Poll until cancelled. A bug in one poll is logged and counted as a failed reload, and the next
        poll runs: this task ending would leave the catalog stale for good with nothing counting it."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.reload_once()
            except Exception as exc:  # the loop must outlive any one poll; logged with its traceback
                self.holder.fail(f"{type(exc).__name__}: {exc}")
                log.exception("catalog reload from %s failed unexpectedly", self.source.name)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="catalog-reloader")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
