"""Packed bitsets: positions in and out, counts, sparse and dense postings agree with Python sets."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gateway.catalog.bitset import Posting, count, empty, first_positions, from_positions
from gateway.catalog.retrieval import PositionView

SIZE = 1_000
positions = st.sets(st.integers(0, SIZE - 1), max_size=300)


@given(chosen=positions, limit=st.integers(1, 50), skip=st.integers(0, 20))
def test_first_positions_and_count_match_a_sorted_set(chosen: set[int], limit: int, skip: int) -> None:
    bits = from_positions(np.array(sorted(chosen), dtype=np.int64), SIZE)
    assert count(bits) == len(chosen)
    assert first_positions(bits, limit, skip).tolist() == sorted(chosen)[skip : skip + limit]


@given(left=positions, right=positions, base=positions)
def test_postings_or_and_clear_like_sets(left: set[int], right: set[int], base: set[int]) -> None:
    posting = Posting.build(left, SIZE)
    target = from_positions(np.array(sorted(base), dtype=np.int64), SIZE)
    posting.or_into(target)
    assert set(first_positions(target, SIZE).tolist()) == base | left
    Posting.build(right, SIZE).clear_in(target)
    assert set(first_positions(target, SIZE).tolist()) == (base | left) - right


def test_small_postings_are_sparse_and_big_ones_dense() -> None:
    sparse = Posting.build([3, 64, 65, 999], SIZE)
    assert sparse.words is None
    assert sparse.word_index.tolist() == [0, 1, 15]
    assert Posting.build(range(0, SIZE, 2), SIZE).words is not None
    assert count(empty(SIZE)) == 0


def test_position_view_reads_on_demand() -> None:
    view = PositionView(("a", "b", "c", "d"), [3, 0])
    assert (len(view), view[0], view[-1], view[:1], list(view)) == (2, "d", "a", ["d"], ["d", "a"])
    assert view == ["d", "a"]
    assert view != ["a", "d"]
