"""The store's stream positions: for each (topic, partition), the next offset it expects.

Why the store, not the consumer group: a position written in the same
transaction as the batch's rows can never disagree with them. Kafka Connect's
exactly-once sinks, the Iceberg sink and kafka-delta-ingest work this way. A
group's committed offset belongs to a group name. A second store, a restored
copy of the file or a renamed group would all resume from that offset and
silently miss ticks. So every consumer seeks each partition it is given to
the store's own position (:func:`resume_points`). Kafka offsets are still
committed after the store commits, so ``kafka-consumer-groups`` and other lag
tools keep working, but nothing reads them back.

Each backend stores positions its own way. The file has one
``stream_positions`` table. The lake has one table per partition, its
"fences" (:mod:`.lake` says why). This module holds what is the same for
both: the fallback for stores written before positions existed, and the lag
arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: ``(topic, partition) -> next offset``: what a store holds, or where a run resumes.
Positions = dict[tuple[str, int], int]

#: What a store's rows imply where it has no position: the highest offset stored, plus
#: one (a store written by a version of the kit that kept no positions).
IMPLIED_SQL = """
    SELECT topic, "partition", max("offset") + 1
    FROM (SELECT topic, "partition", "offset" FROM market_ticks
          UNION ALL
          SELECT topic, "partition", "offset" FROM dead_letters)
    GROUP BY ALL
"""


def as_key(tp: Any) -> tuple[str, int]:
    """``(topic, partition)`` from a kafka-python ``TopicPartition`` or any pair."""
    topic, partition = tp
    return str(topic), int(partition)


def with_implied(con: Any, found: Positions) -> Positions:
    """``found`` (a store's positions) plus, for every partition it lacks, what the
    store's rows imply: a store an older kit wrote has rows but no positions."""
    out = dict(found)
    for topic, partition, offset in con.execute(IMPLIED_SQL).fetchall():
        out.setdefault((str(topic), int(partition)), int(offset))
    return out


def resume_points(
    con: Any,
    stored: Callable[[Any], Positions],
    partitions: Iterable[Any],
) -> dict[tuple[str, int], int | None]:
    """Where each partition resumes: the store's position; where it has none, what its
    rows imply; ``None`` for a partition the store knows nothing of (the consumer then
    starts where ``auto.offset.reset`` says, never where some group left off).

    ``stored(con)`` reads the backend's positions; ``con`` is a connection on the store.
    The rows are only scanned when a wanted partition has no position.
    """
    wanted = [as_key(tp) for tp in partitions]
    found = stored(con)
    if any(tp not in found for tp in wanted):
        found = with_implied(con, found)
    return {tp: found.get(tp) for tp in wanted}


def lag(end_offset: int | None, position: int | None) -> int | None:
    """Messages the store has yet to take from a partition (``None``: end unknown)."""
    if end_offset is None:
        return None
    return max(0, end_offset - (position or 0))


def behind(targets: Mapping[tuple[str, int], int], positions: Mapping[Any, int | None]) -> int:
    """How many messages below ``targets`` the store has not reached, over all partitions."""
    return sum(lag(end, positions.get(tp)) or 0 for tp, end in targets.items())
