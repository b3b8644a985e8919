"""Lag measured from the store: each partition's end offset against the store's own position.

Why not the consumer group's lag (``kafka-consumer-groups --describe``): the
kit resumes from the store (:mod:`marketstream.store.positions`), so the
store's position says what is really stored. A group's committed offset says
only what one group committed. Users of Kafka-to-store sinks ask for lag more
than for anything else, and this gives it with no separate exporter:
``marketstream stats``, ``GET /lag``, a Grafana panel and the Voila page all
read it here.

The end offset is read with the consumer's isolation level. With
``read_committed`` (the default) that is the last stable offset, so an open
transaction does not count as lag.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError

from marketstream import probe
from marketstream.clients import DEFAULT_CLIENTS, KafkaClients
from marketstream.errors import KafkaUnavailable
from marketstream.kafka_errors import describe, no_broker
from marketstream.settings import Settings
from marketstream.store import Where, partition_positions
from marketstream.store.positions import lag
from marketstream.store.stats import partition_row

#: How long a lag reading waits for the broker. /lag is polled by dashboards every few
#: seconds, so a broker that is down must not hold a request for a client's default 30 s.
BROKER_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class PartitionLag:
    """One partition: how far the store is behind the topic."""

    topic: str
    partition: int
    end_offset: int | None
    stored_position: int | None
    lag: int | None
    newest_tick_age_s: float | None


@dataclass(frozen=True)
class LagReport:
    """Every partition of the topic and of the store; ``broker_error`` when Kafka did not
    answer (the store's positions are still given, end offsets and lag are ``None``)."""

    partitions: list[PartitionLag]
    broker_error: str | None = None

    @property
    def total(self) -> int | None:
        """All partitions' lag together (``None`` when the broker did not answer)."""
        if self.broker_error is not None:
            return None
        return sum(p.lag or 0 for p in self.partitions)

    def rows(self) -> list[dict[str, Any]]:
        """The partitions as plain dicts (the API's and ``stats --json``'s shape)."""
        return [asdict(p) for p in self.partitions]


def end_offsets(
    settings: Settings,
    clients: KafkaClients = DEFAULT_CLIENTS,
    timeout_s: float = BROKER_TIMEOUT_S,
) -> dict[tuple[str, int], int]:
    """The topic's end offset per partition (an empty dict if the topic does not exist).

    Raises :class:`KafkaUnavailable` naming the problem when no broker answers.
    """
    if not probe.any_port_open(settings, min(timeout_s, 1.0)):
        raise KafkaUnavailable(no_broker(settings))
    timeout_ms = int(timeout_s * 1000)
    consumer = clients.consumer(
        settings,
        subscribe=False,
        group_id=None,
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
    )
    try:
        numbers = consumer.partitions_for_topic(settings.topic) or set()
        tps = [TopicPartition(settings.topic, n) for n in sorted(numbers)]
        ends = consumer.end_offsets(tps, timeout_ms=timeout_ms) if tps else {}
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"the broker at {settings.bootstrap_servers} did not give {settings.topic}'s end "
            f"offsets: {describe(exc)}"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            consumer.close()
    return {(tp.topic, tp.partition): int(end) for tp, end in ends.items()}


def measure(
    settings: Settings,
    at: Where,
    ends_of: Callable[[Settings], dict[tuple[str, int], int]] = end_offsets,
    now: datetime | None = None,
) -> LagReport:
    """The lag of every partition of ``settings.topic`` (and any the store holds of it).

    ``ends_of(settings)`` reads the end offsets (:func:`end_offsets` unless replaced).
    """
    stored = {key: row for key, row in partition_positions(at).items() if key[0] == settings.topic}
    error: str | None = None
    try:
        ends = ends_of(settings)
    except KafkaUnavailable as exc:
        ends, error = {}, str(exc)
    now = now or datetime.now(UTC)
    out = []
    for key in sorted(set(ends) | set(stored)):
        position, newest = stored.get(key, (None, None))
        end = ends.get(key)
        age = None
        if newest is not None:
            age = round((now.replace(tzinfo=None) - newest).total_seconds(), 3)
        out.append(PartitionLag(key[0], key[1], end, position, lag(end, position), age))
    return LagReport(out, error)


def annotate(report: dict[str, Any], measured: LagReport) -> dict[str, Any]:
    """``marketstream stats``' report with each partition's end offset and lag added."""
    by_key = {(p.topic, p.partition): p for p in measured.partitions}
    rows = {(p["topic"], p["partition"]): p for p in report["partitions"]}
    for key, p in by_key.items():
        row = rows.setdefault(key, partition_row(*key, p.stored_position))
        row["end_offset"] = p.end_offset
        row["lag"] = p.lag
        row["newest_tick_age_s"] = p.newest_tick_age_s
    for row in rows.values():
        row.setdefault("end_offset", None)
        row.setdefault("lag", lag(row["end_offset"], row["stored_position"]))
    report["partitions"] = [rows[key] for key in sorted(rows)]
    report["lag"] = measured.total
    report["broker"] = measured.broker_error
    return report
