"""settle_startup_heap: what exists at the end of start-up leaves the collector's generations."""

from __future__ import annotations

import gc

from gateway.heap import settle_startup_heap


def test_the_startup_heap_is_frozen_and_new_objects_are_not() -> None:
    long_lived = [[index] for index in range(1000)]  # containers the collector tracks, built "at start"
    before = gc.get_freeze_count()
    settle_startup_heap()
    assert gc.get_freeze_count() >= before + len(long_lived)
    assert gc.is_tracked(long_lived[0])
    frozen = gc.get_freeze_count()
    per_bid = [[index] for index in range(1000)]
    assert gc.get_freeze_count() == frozen  # later allocations are collected as usual
    del per_bid
