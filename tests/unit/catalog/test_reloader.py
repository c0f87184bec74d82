"""Hot reload: a new file is swapped in, an unchanged or touched one is not re-indexed, a broken one never
replaces the catalog serving (counted, with its line number), and bids keep flowing during a reload."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from gateway.catalog.reloader import CatalogHolder, CatalogReloader, FileCatalogSource
from gateway.catalog.retrieval import CatalogRetriever
from gateway.errors import CatalogError
from tests.unit.catalog.builders import NOON_UTC, banner, campaign, jsonl, request


def write(path: Path, data: bytes) -> None:
    """Atomically, as docs/catalog.md tells operators to."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.jsonl"
    write(path, jsonl(campaign("c1", banner("first")), version="v1"))
    return path


def reloader_on(path: Path) -> tuple[CatalogHolder, CatalogReloader, CatalogRetriever]:
    holder = CatalogHolder(clock=lambda: 1_000.0)
    reloader = CatalogReloader(holder, FileCatalogSource(path), interval_s=0.01)
    return holder, reloader, CatalogRetriever(holder)


async def test_a_new_catalog_is_swapped_in(catalog_file: Path) -> None:
    holder, reloader, retriever = reloader_on(catalog_file)
    stats = await reloader.load_initial()
    assert (stats.version, stats.creatives, stats.loaded_at, stats.reloads_ok) == ("v1", 1, 1_000.0, 1)
    assert [c.id for c in retriever.retrieve(request(), NOON_UTC).candidates] == ["first"]

    assert await reloader.reload_once() is False  # nothing changed
    os.utime(catalog_file, ns=(1, 1))
    assert await reloader.reload_once() is False  # touched, same bytes: not re-indexed
    write(catalog_file, jsonl(campaign("c2", banner("second")), version="v2"))
    assert await reloader.reload_once() is True
    got = retriever.retrieve(request(), NOON_UTC)
    assert ([c.id for c in got.candidates], got.catalog_version) == (["second"], "v2")
    assert holder.stats().reloads_ok == 2


async def test_a_broken_catalog_never_replaces_the_good_one(
    catalog_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder, reloader, retriever = reloader_on(catalog_file)
    await reloader.load_initial()
    write(catalog_file, jsonl(campaign("c1"), campaign("c2", bid=-1)))
    with caplog.at_level(logging.ERROR, logger="gateway.catalog.reloader"):
        assert await reloader.reload_once() is False
    stats = holder.stats()
    assert (stats.version, stats.reloads_ok, stats.reloads_failed) == ("v1", 1, 1)
    assert stats.last_error == "line 3: bid must be > 0.0"
    assert "line 3: bid must be > 0.0" in caplog.text
    assert "still serving v1" in caplog.text
    assert [c.id for c in retriever.retrieve(request(), NOON_UTC).candidates] == ["first"]
    # Fixed: the next poll loads it.
    write(catalog_file, jsonl(campaign("c3", banner("third")), version="v3"))
    assert await reloader.reload_once() is True
    assert holder.stats().version == "v3"


async def test_a_missing_file_is_counted_and_the_old_catalog_kept(catalog_file: Path) -> None:
    holder, reloader, _ = reloader_on(catalog_file)
    await reloader.load_initial()
    catalog_file.unlink()
    assert await reloader.reload_once() is False
    assert holder.stats().reloads_failed == 1
    assert "not readable" in (holder.stats().last_error or "")
    assert holder.stats().version == "v1"


async def test_the_first_load_raises_instead_of_serving_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    write(path, b'{"catalog_version": "v1"}\n{"id": "c1"}\n')
    _, reloader, _ = reloader_on(path)
    with pytest.raises(CatalogError, match="line 2: advertiser is required"):
        await reloader.load_initial()


async def test_bids_keep_flowing_while_the_poller_swaps_catalogs(catalog_file: Path) -> None:
    holder, reloader, retriever = reloader_on(catalog_file)
    await reloader.load_initial()
    reloader.start()
    seen: set[str] = set()
    try:
        for version in range(2, 12):
            write(catalog_file, jsonl(*(campaign(f"c{n}") for n in range(200)), version=f"v{version}"))
            for _ in range(20):
                got = retriever.retrieve(request(), NOON_UTC)
                assert got.candidates  # never a gap between two catalogs
                seen.add(got.catalog_version)
                await asyncio.sleep(0.002)
    finally:
        await reloader.stop()
    assert len(seen) > 2
    assert holder.stats().reloads_failed == 0


def test_interval_must_be_positive(catalog_file: Path) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        CatalogReloader(CatalogHolder(), FileCatalogSource(catalog_file), interval_s=0)


class ExplodingSource:
    """A source with a bug: every fetch raises something no one planned for."""

    name = "exploding"

    async def fetch(self) -> bytes | None:
        raise RuntimeError("a bug in a source")


async def test_the_poller_outlives_a_poll_that_raises_and_counts_it(catalog_file: Path) -> None:
    holder, reloader, _ = reloader_on(catalog_file)
    await reloader.load_initial()
    broken = CatalogReloader(holder, ExplodingSource(), interval_s=0.01)
    broken.start()
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if holder.stats().reloads_failed >= 2:
                break
    finally:
        await broken.stop()
    stats = holder.stats()
    assert stats.reloads_failed >= 2  # the task survived the first failure and polled again
    assert stats.last_error == "RuntimeError: a bug in a source"
    assert stats.version == "v1"  # still serving the good catalog
