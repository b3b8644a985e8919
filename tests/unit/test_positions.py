"""The store's stream positions on a real DuckDB file: moved in each batch's transaction,
never backwards by a batch, back or forward only by the user's verb, and read back with
the fallback for a store an older kit wrote (:mod:`marketstream.store.positions`)."""

from __future__ import annotations

import pytest

from marketstream import store
from marketstream.store import open_writer
from marketstream.store.positions import behind, lag
from marketstream.ticks import generate_ticks
from support.factories import batch_for

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")


@pytest.fixture
def path(tmp_path):
    return tmp_path / "p.duckdb"


def test_a_batch_moves_its_partitions_positions_in_its_transaction(path) -> None:
    batch = batch_for(generate_ticks(SYMBOLS, 20))
    with open_writer(path) as writer:
        assert writer.positions(batch.offsets) == {
            tp: None for tp in map(tuple, batch.offsets)
        }  # an empty store knows no partition
        writer.write_batch(batch.ticks, batch.dead, offsets=batch.offsets)
        assert writer.positions(batch.offsets) == {tuple(k): v for k, v in batch.offsets.items()}


def test_a_batch_of_duplicates_or_nothing_still_moves_the_position(path) -> None:
    ticks = generate_ticks(SYMBOLS, 10)
    with open_writer(path) as writer:
        first = batch_for(ticks)
        writer.write_batch(first.ticks, offsets=first.offsets)
        # the same ticks re-produced later, at higher offsets: nothing added, position moves
        moved = {tp: offset + 100 for tp, offset in first.offsets.items()}
        assert writer.write_batch(first.ticks, offsets=moved) == 0
        empty = first.ticks.slice(0, 0)
        assert writer.write_batch(empty, offsets={("t", 7): 42}) == 0
        got = writer.positions([*moved, ("t", 7)])
    assert got == {**{tuple(k): v for k, v in moved.items()}, ("t", 7): 42}


def test_a_late_batch_never_moves_a_position_back(path) -> None:
    ticks = batch_for(generate_ticks(SYMBOLS, 5)).ticks.slice(0, 0)
    with open_writer(path) as writer:
        writer.write_batch(ticks, offsets={("t", 0): 500})
        writer.write_batch(ticks, offsets={("t", 0): 300})  # a zombie's older batch
        assert writer.positions([("t", 0)]) == {("t", 0): 500}


def test_the_user_moves_a_position_back_or_forward(path) -> None:
    ticks = batch_for(generate_ticks(SYMBOLS, 5)).ticks.slice(0, 0)
    with open_writer(path) as writer:
        writer.write_batch(ticks, offsets={("t", 0): 500, ("t", 1): 80})
    store.set_positions(path, {("t", 0): 120, ("t", 2): 9})
    with open_writer(path) as writer:
        assert writer.positions([("t", 0), ("t", 1), ("t", 2)]) == {
            ("t", 0): 120,
            ("t", 1): 80,
            ("t", 2): 9,
        }


def test_a_store_without_positions_resumes_after_its_highest_offset(path) -> None:
    """A file written by an older kit has rows but no positions: its rows imply them."""
    batch = batch_for(generate_ticks(SYMBOLS, 10))
    with open_writer(path) as writer:
        writer.write_batch(batch.ticks, batch.dead)  # no offsets: as an older kit wrote
        highest = {("t", 0): max(batch.ticks["offset"].to_pylist())}
        got = writer.positions([*highest, ("t", 99)])
    assert got == {**{tp: o + 1 for tp, o in highest.items()}, ("t", 99): None}
    rows = store.partition_positions(path)
    assert {tp: row[0] for tp, row in rows.items()} == {tp: o + 1 for tp, o in highest.items()}


def test_lag_arithmetic() -> None:
    assert lag(None, 5) is None  # the end is unknown: no lag is claimed
    assert (lag(10, None), lag(10, 4), lag(10, 12)) == (10, 6, 0)
    assert behind({("t", 0): 10, ("t", 1): 5}, {("t", 0): 7}) == 3 + 5


def test_a_rolled_back_first_position_is_written_by_the_next_batch(path) -> None:
    """The writer updates rows it knows exist: a first row rolled back must not count."""
    ticks = batch_for(generate_ticks(SYMBOLS, 5)).ticks.slice(0, 0)

    def fail(con: object) -> None:
        raise OSError("disk full")

    with open_writer(path) as writer:
        with pytest.raises(OSError):
            writer.write_batch(ticks, offsets={("t", 3): 10}, before_commit=fail)
        assert writer.positions([("t", 3)]) == {("t", 3): None}
        writer.write_batch(ticks, offsets={("t", 3): 20})
        writer.write_batch(ticks, offsets={("t", 3): 30})
        assert writer.positions([("t", 3)]) == {("t", 3): 30}
