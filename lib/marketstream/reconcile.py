"""The store against Kafka, partition by partition: was every message stored exactly once?

Kafka says what there is to store: each partition's offsets from its first to its end
offset. The store says what it holds: the offsets of the ticks and dead letters it
keeps from that partition. Per partition, :func:`reconcile` gives

* ``expected``: messages in Kafka (end offset - first offset),
* ``stored``: distinct offsets of them the store holds (as ticks or dead letters),
* ``missing``: offsets Kafka has and the store does not,
* ``duplicated``: rows beyond the first for an offset (the same message stored twice).

:func:`check` raises when anything is missing or doubled: the guarantees notebook ends
on it, so a broken guarantee fails the run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import pandas as pd

from marketstream.clients import DEFAULT_CLIENTS, KafkaClients
from marketstream.settings import Settings
from marketstream.store import Where, stored_offsets

COLUMNS = ["partition", "expected", "stored", "missing", "duplicated"]


class NotExactlyOnce(AssertionError):
    """The store is missing messages Kafka has, or holds one twice."""


def reconcile(
    ranges: Mapping[int, tuple[int, int]], stored: Iterable[tuple[int, int]]
) -> pd.DataFrame:
    """Per partition, Kafka's ``(first, end)`` offsets against the store's
    ``(partition, offset)`` rows (see the module docstring); one row per partition of
    either side, in partition order, plus nothing else."""
    rows_per_offset: dict[int, Counter[int]] = {}
    for partition, offset in stored:
        rows_per_offset.setdefault(int(partition), Counter())[int(offset)] += 1
    rows = []
    for partition in sorted(set(ranges) | set(rows_per_offset)):
        first, end = ranges.get(partition, (0, 0))
        held = rows_per_offset.get(partition, Counter())
        in_range = {o: n for o, n in held.items() if first <= o < end}
        rows.append(
            {
                "partition": partition,
                "expected": end - first,
                "stored": len(in_range),
                "missing": (end - first) - len(in_range),
                "duplicated": sum(n - 1 for n in held.values()),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS).set_index("partition")


def kafka_ranges(
    settings: Settings, clients: KafkaClients = DEFAULT_CLIENTS
) -> dict[int, tuple[int, int]]:
    """Each partition's ``(first offset, end offset)`` now (``read_committed``: the last
    stable offset, so an open transaction's messages are not expected yet)."""
    from kafka import TopicPartition

    consumer = clients.consumer(settings, subscribe=False, group_id=None)
    try:
        numbers = sorted(consumer.partitions_for_topic(settings.topic) or ())
        tps = [TopicPartition(settings.topic, n) for n in numbers]
        starts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    finally:
        consumer.close()
    return {tp.partition: (int(starts[tp]), int(ends[tp])) for tp in tps}


def against_kafka(
    settings: Settings, at: Where, clients: KafkaClients = DEFAULT_CLIENTS
) -> pd.DataFrame:
    """:func:`reconcile` of the topic now against the store now."""
    return reconcile(kafka_ranges(settings, clients), stored_offsets(at, settings.topic))


def check(table: pd.DataFrame) -> str:
    """One line saying the store holds every message once; :class:`NotExactlyOnce`
    naming the partitions otherwise."""
    bad = table[(table["missing"] != 0) | (table["duplicated"] != 0)]
    if len(bad):
        detail = ", ".join(
            f"partition {p}: {r['missing']} missing, {r['duplicated']} duplicated"
            for p, r in bad.iterrows()
        )
        raise NotExactlyOnce(f"the store does not hold every message exactly once: {detail}")
    total = int(table["expected"].sum())
    return (
        f"exactly once: all {total} messages of {len(table)} partitions stored, "
        "none missing, none duplicated"
    )
