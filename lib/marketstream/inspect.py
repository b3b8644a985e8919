"""What the topic, the consumer group and the store hold right now, as small tables.

The walkthrough notebooks show the machinery with these: a topic's partitions and
their offsets, which partition each symbol's key lands on and why, one message as
the bytes Kafka keeps, the group's view (state, members, who held which
partition), committed offsets against the store's own positions and the end
offsets (lag), and the dead letters of a run with their reasons.

Every function reads; none changes the topic, the group or the store. Values that
change from run to run (times, run ids, member ids) are left out or replaced by a
stable label (``consumer 1``...), so an executed notebook's tables are the same on
every fresh run of the same seed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from kafka import TopicPartition
from kafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    NotCoordinatorError,
)
from kafka.partitioner.default import murmur2

from marketstream import store
from marketstream.clients import DEFAULT_CLIENTS, KafkaClients, partitioner_for
from marketstream.lag import end_offsets, measure
from marketstream.settings import Settings
from marketstream.store import Where


@contextlib.contextmanager
def _reader(settings: Settings, clients: KafkaClients):  # type: ignore[no-untyped-def]
    """A consumer outside any group (it commits nothing, joins nothing)."""
    consumer = clients.consumer(settings, subscribe=False, group_id=None)
    try:
        yield consumer
    finally:
        with contextlib.suppress(Exception):
            consumer.close()


def partitions(settings: Settings, clients: KafkaClients = DEFAULT_CLIENTS) -> pd.DataFrame:
    """The topic's partitions: leader, replicas, in-sync replicas, first and end offset and
    the messages between them (an offset is a message's position in its partition)."""
    admin = clients.admin(settings)
    try:
        [topic] = admin.describe_topics([settings.topic])
    finally:
        admin.close()
    with _reader(settings, clients) as consumer:
        tps = [TopicPartition(settings.topic, p["partition_index"]) for p in topic["partitions"]]
        starts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    rows = []
    for p in sorted(topic["partitions"], key=lambda p: p["partition_index"]):
        tp = TopicPartition(settings.topic, p["partition_index"])
        rows.append(
            {
                "partition": tp.partition,
                "leader": p["leader_id"],
                "replicas": list(p["replica_nodes"]),
                "in_sync": list(p["isr_nodes"]),
                "first_offset": starts[tp],
                "end_offset": ends[tp],
                "messages": ends[tp] - starts[tp],
            }
        )
    return pd.DataFrame(rows).set_index("partition")


def read_records(
    settings: Settings, limit: int | None = None, clients: KafkaClients = DEFAULT_CLIENTS
) -> list[Any]:
    """Every record of the topic from its first offset to its end offset as of now, in
    partition then offset order (at most ``limit`` per partition), read outside any group."""
    out: list[Any] = []
    with _reader(settings, clients) as consumer:
        numbers = sorted(consumer.partitions_for_topic(settings.topic) or ())
        tps = [TopicPartition(settings.topic, n) for n in numbers]
        if not tps:
            return out
        starts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        stop = {tp: ends[tp] if limit is None else min(ends[tp], starts[tp] + limit) for tp in tps}
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got: dict[TopicPartition, list[Any]] = {tp: [] for tp in tps}
        while any(consumer.position(tp) < stop[tp] for tp in tps):
            for tp, records in consumer.poll(timeout_ms=500).items():
                got[tp].extend(r for r in records if r.offset < stop[tp])
        for tp in tps:
            out.extend(got[tp])
    return out


def placement(
    settings: Settings,
    records: Iterable[Any] | None = None,
    clients: KafkaClients = DEFAULT_CLIENTS,
) -> pd.DataFrame:
    """Which partition each symbol's key went to, and why.

    Per key: its slot in ``MARKET_SYMBOLS`` (the ``spread`` partitioner puts slot *i* on
    partition *i* mod *n*), the partition the kit's partitioner picks, the one Kafka's
    default (murmur2 of the key) would pick, and where its messages really are, counted
    from the topic (``records``, else :func:`read_records`).
    """
    records = read_records(settings, clients=clients) if records is None else list(records)
    seen: dict[bytes, dict[int, int]] = {}
    for r in records:
        if r.key is not None:
            by_partition = seen.setdefault(bytes(r.key), {})
            by_partition[r.partition] = by_partition.get(r.partition, 0) + 1
    with _reader(settings, clients) as consumer:
        count = len(consumer.partitions_for_topic(settings.topic) or ()) or settings.partitions
    numbers = set(range(count))
    cluster = _Cluster(numbers)
    chooser = partitioner_for(settings)
    slots = {s.encode(): i for i, s in enumerate(settings.symbols)}
    keys = sorted(set(slots) | set(seen), key=lambda k: (slots.get(k, len(slots)), k))
    rows = []
    for key in keys:
        found = seen.get(key, {})
        rows.append(
            {
                "key": key,
                "slot_in_MARKET_SYMBOLS": slots.get(key),
                f"{settings.partitioner}_partition": chooser.partition(
                    settings.topic, key, key, None, None, cluster
                ),
                "murmur2_partition": (murmur2(key) & 0x7FFFFFFF) % count,
                "found_in_partition": ",".join(str(p) for p in sorted(found)) or "-",
                "messages": sum(found.values()),
            }
        )
    return pd.DataFrame(rows).set_index("key")


@dataclass(frozen=True)
class _Cluster:
    """Just what a kafka-python partitioner asks of the cluster: a topic's partitions."""

    numbers: set[int]

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return self.numbers

    available_partitions_for_topic = partitions_for_topic


def message(settings: Settings, record: Any) -> str:
    """One record as Kafka keeps it: where it is, its key, value and headers as bytes, and
    the codec its batch was compressed with."""
    headers = list(record.headers or [])
    codec = "none (uncompressed)" if settings.compression == "none" else settings.compression
    lines = [
        f"partition   {record.partition}",
        f"offset      {record.offset}",
        f"key         {bytes(record.key)!r}  ({record.serialized_key_size} bytes)",
        f"value       {bytes(record.value)!r}  ({record.serialized_value_size} bytes)",
        f"headers     {headers!r}" + ("  (the kit sends none)" if not headers else ""),
        "timestamp   CreateTime (the producer's clock when it sent it)"
        if record.timestamp_type == 0
        else "timestamp   LogAppendTime (the broker's clock)",
        f"codec       {codec} (KAFKA_COMPRESSION: the producer compresses each batch, "
        "the broker keeps it so, the consumer decompresses)",
    ]
    return "\n".join(lines)


def group(settings: Settings, clients: KafkaClients = DEFAULT_CLIENTS) -> pd.DataFrame:
    """The broker's view of the consumer group now: its state, protocol and members, each
    member's client id and the partitions assigned to it (a run that ended has left it:
    ``Empty``, no members, its committed offsets kept)."""
    admin = clients.admin(settings)
    try:
        found = _retrying(lambda: admin.describe_groups([settings.consumer_group]))
    finally:
        admin.close()
    info = found.get(settings.consumer_group, {}) if isinstance(found, dict) else found[0]
    members = info.get("members") or []
    rows = []
    for i, m in enumerate(sorted(members, key=lambda m: str(m.get("client_id"))), start=1):
        assignment = m.get("member_assignment") or {}
        parts = sorted(p for t in assignment.get("assignment", []) or [] for p in _partitions_of(t))
        rows.append({"member": f"member {i}", "client_id": m.get("client_id"), "partitions": parts})
    head = {
        "group": "(KAFKA_CONSUMER_GROUP)",
        "state": info.get("group_state") or info.get("state"),
        "protocol": info.get("protocol") or "-",
        "members": len(members),
    }
    return pd.DataFrame([head]).set_index("group") if not rows else pd.DataFrame(rows)


def _partitions_of(entry: Any) -> list[int]:
    """The partitions of one ``(topic, partitions)`` entry of a member's assignment."""
    if isinstance(entry, dict):
        return list(entry.get("partitions", []))
    return list(entry[1])


def assignments(settings: Settings, since: int = 0) -> pd.DataFrame:
    """Who held which partition, in order, as the consumers logged it (each run's
    ``partitions_assigned`` / ``partitions_revoked``, :class:`marketstream.consume.PartitionLog`),
    from log line ``since`` on. Runs are named ``consumer 1``, ``consumer 2``... in the order
    they first appear (their run ids change every run)."""
    from marketstream.logs import read_log

    names: dict[str, str] = {}
    rows = []
    for entry in read_log(settings.log_path)[since:]:
        event = entry.get("event")
        if event not in ("partitions_assigned", "partitions_revoked"):
            continue
        if entry.get("group") != settings.consumer_group:
            continue
        name = names.setdefault(entry["run_id"], f"consumer {len(names) + 1}")
        rows.append(
            {"consumer": name, "event": event.split("_")[1], "partitions": entry["partitions"]}
        )
    return pd.DataFrame(rows, columns=["consumer", "event", "partitions"])


def run_summary(run: Any) -> pd.DataFrame:
    """What a consumer run did (its :class:`~marketstream.store.RunMetrics` without its id,
    times and rate): messages read, ticks added, ticks the store already had, dead letters,
    messages left behind, and how it ended."""
    return pd.DataFrame(
        [
            {
                "messages": run.messages_processed,
                "ticks_added": run.rows_inserted,
                "already_stored": run.duplicates,
                "dead_letters": run.errors,
                "left_behind": run.behind,
                "status": run.status,
            }
        ]
    )


def log_length(settings: Settings) -> int:
    """Lines in the JSON log now (to read only what a step adds: :func:`assignments`)."""
    from marketstream.logs import read_log

    return len(read_log(settings.log_path))


def _retrying(ask: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """``ask()``, asked again while the broker says the group's coordinator is not there
    yet (a new cluster creates ``__consumer_offsets`` on the first group request) or is
    still loading its offsets (seen once in CI on a 3-node cluster just started)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ask()
        except (CoordinatorLoadInProgressError, CoordinatorNotAvailableError, NotCoordinatorError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def committed(settings: Settings, clients: KafkaClients = DEFAULT_CLIENTS) -> dict[int, int]:
    """The consumer group's committed offset per partition of the topic (none: not there)."""
    admin = clients.admin(settings)
    try:
        found = _retrying(lambda: admin.list_group_offsets({settings.consumer_group: None}))
    finally:
        admin.close()
    offsets = found.get(settings.consumer_group, {})
    return {
        tp.partition: int(meta.offset)
        for tp, meta in offsets.items()
        if tp.topic == settings.topic and meta.offset >= 0
    }


def offsets(settings: Settings, at: Where, clients: KafkaClients = DEFAULT_CLIENTS) -> pd.DataFrame:
    """Per partition: the end offset (what Kafka holds), the store's position (where the
    next run resumes: its own, written with the rows), the group's committed offset (for
    lag tools; nothing reads it back) and the lag (end offset - store position)."""
    report = measure(settings, at, ends_of=lambda s: end_offsets(s, clients))
    group_offsets = committed(settings, clients)
    rows = [
        {
            "partition": p.partition,
            "end_offset": p.end_offset,
            "store_position": p.stored_position,
            "group_committed": group_offsets.get(p.partition),
            "lag": p.lag,
        }
        for p in report.partitions
    ]
    frame = pd.DataFrame(
        rows, columns=["partition", "end_offset", "store_position", "group_committed", "lag"]
    )
    return frame.set_index("partition").astype("Int64")


def store_positions(settings: Settings, at: Where) -> dict[int, int]:
    """The store's position per partition of the topic (where each resumes)."""
    return {
        partition: int(position)
        for (topic, partition), (position, _newest) in store.partition_positions(at).items()
        if topic == settings.topic and position is not None
    }


def dead_letters(
    settings: Settings, at: Where, after: Mapping[int, int] | None = None
) -> pd.DataFrame:
    """The topic's dead letters (messages that were not valid ticks) with their reasons; with
    ``after`` (a partition's position before a run), only those the run stored."""
    frame = store.dead_letters(at, limit=10_000)
    frame = frame[frame["topic"] == settings.topic]
    if after is not None:
        keep = [
            int(o) >= after.get(int(p), 0)
            for p, o in zip(frame["partition"], frame["offset"], strict=True)
        ]
        frame = frame[keep]
    frame = frame.sort_values(["partition", "offset"])
    return pd.DataFrame(
        {
            "partition": frame["partition"].astype(int),
            "offset": frame["offset"].astype(int),
            "key": [None if k is None else bytes(k) for k in frame["key"]],
            "raw": [None if v is None else bytes(v) for v in frame["raw"]],
            "reason": frame["reason"],
        }
    ).reset_index(drop=True)


def freshness(settings: Settings, at: Where) -> pd.DataFrame:
    """Per partition: the newest stored tick's event time and its age now (how stale the
    store's view is), beside the lag (messages Kafka has that the store has not yet)."""
    report = measure(settings, at)
    newest = {
        partition: when
        for (topic, partition), (_position, when) in store.partition_positions(at).items()
        if topic == settings.topic
    }
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    rows = [
        {
            "partition": p.partition,
            "lag": p.lag,
            "newest_event_time": newest.get(p.partition),
            "newest_tick_age": None
            if newest.get(p.partition) is None
            else (now - pd.Timestamp(newest[p.partition])).round("s"),
        }
        for p in report.partitions
    ]
    columns = ["partition", "lag", "newest_event_time", "newest_tick_age"]
    return pd.DataFrame(rows, columns=columns).set_index("partition")
