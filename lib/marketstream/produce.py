"""Ticks (from a CSV or the generator) into a Kafka topic.

One JSON message per tick, keyed by symbol, ``acks=all`` with kafka-python's
idempotent producer, batched with a small linger. Bad CSV rows are reported
with their line number and skipped; the good ones still go.

Speed: kafka-python's ``send`` costs ~10 us of pure Python per message, which
is the producer's ceiling. Around it, this module avoids the two per-message
costs that used to be larger than ``send`` itself: formatting the timestamp
with ``strftime`` (see :func:`wire_message`) and hashing the key with
kafka-python's pure-Python murmur2 for every message (see
:class:`KeyCachingPartitioner`). Install ``crc32c`` too: without it
kafka-python checksums every batch in pure Python.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.partitioner import DefaultPartitioner
from tqdm.auto import tqdm

from marketstream.kafka_errors import explain
from marketstream.settings import Settings
from marketstream.ticks import CsvProblem, Tick, format_timestamp, read_csv

#: Producer batching, chosen by measurement (bench/README.md): a batch per partition
#: fills in well under the linger, so linger only bounds the wait of a lone tick.
LINGER_MS = 20
BATCH_BYTES = 256 * 1024


def wire_message(tick: Tick) -> bytes:
    """Exactly ``tick.to_message()``, ~10x faster for the usual UTC timestamps.

    ``format_timestamp`` calls ``astimezone`` and ``strftime``, ~12 us a tick,
    more than kafka-python's whole ``send``; ``isoformat`` is C and gives the
    same text for a UTC (or naive, taken as UTC) time from year 1000 on.
    """
    ts = tick.timestamp
    if ts.tzinfo is UTC and ts.year >= 1000:
        text = ts.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"
    elif ts.tzinfo is None and ts.year >= 1000:
        text = ts.isoformat(timespec="microseconds") + "Z"
    else:
        text = format_timestamp(ts)
    return orjson.dumps(
        {"timestamp": text, "symbol": tick.symbol, "price": tick.price, "volume": tick.volume}
    )


class KeyCachingPartitioner(DefaultPartitioner):
    """kafka-python's default partitioner, with each key's partition remembered.

    Same partition for the same key as the default (murmur2 of the key modulo
    the partition count, as the Java client), but the pure-Python murmur2 runs
    once per key and partition count instead of once per message. Keyless
    messages keep the default's behaviour.
    """

    MAX_KEYS = 100_000  # a producer with unbounded keys must not grow without end

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple[str, bytes, int], int] = {}

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        """The partition for one message (see the class docstring)."""
        partitions = cluster.partitions_for_topic(topic) if serialized_key is not None else None
        if not partitions:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        cache_key = (topic, bytes(serialized_key), len(partitions))  # type: ignore[arg-type]
        found = self._cache.get(cache_key)
        if found is None or found not in partitions:
            found = super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            if len(self._cache) >= self.MAX_KEYS:
                self._cache.clear()
            self._cache[cache_key] = found
        return found


class ProduceError(RuntimeError):
    """Producing could not start (no broker, topic not creatable); the message says why."""


@dataclass
class ProduceSummary:
    """What a produce run did, for the notebook, the CLI and the logs."""

    sent: int = 0
    failed: int = 0
    rejected: int = 0
    elapsed_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Acknowledged ticks per second."""
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        """One line for people."""
        text = (
            f"sent {self.sent} ticks ({self.failed} failed, {self.rejected} bad rows skipped) "
            f"in {self.elapsed_s:.2f}s = {self.rate:,.0f} ticks/s"
        )
        return text


def ensure_topic(settings: Settings) -> bool:
    """Create the topic with ``settings.partitions`` partitions if missing; True if created."""
    try:
        admin = KafkaAdminClient(**settings.kafka_client_config(), request_timeout_ms=15000)
    except KafkaTimeoutError:
        raise ProduceError(
            f"no Kafka broker answers at {settings.bootstrap_servers}; "
            "start one with `marketstream broker up` or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None
    try:
        if settings.topic in admin.list_topics():
            return False
        admin.create_topics(
            [NewTopic(settings.topic, num_partitions=settings.partitions, replication_factor=1)]
        )
        return True
    except TopicAlreadyExistsError:
        return False
    finally:
        admin.close()


def delete_topic(settings: Settings) -> bool:
    """Delete the topic (for a fresh run); True if it existed."""
    admin = KafkaAdminClient(**settings.kafka_client_config(), request_timeout_ms=15000)
    try:
        if settings.topic not in admin.list_topics():
            return False
        admin.delete_topics([settings.topic])
        for _ in range(100):
            if settings.topic not in admin.list_topics():
                break
            time.sleep(0.1)
        return True
    finally:
        admin.close()


def make_producer(settings: Settings, **overrides: object) -> KafkaProducer:
    """A producer tuned for throughput without giving up delivery guarantees."""
    config: dict[str, object] = {
        **settings.kafka_client_config(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": LINGER_MS,
        "batch_size": BATCH_BYTES,
        "max_request_size": 4 * 1024 * 1024,
        "compression_type": None,  # on one host, compressing costs more CPU than it saves
        "partitioner": KeyCachingPartitioner(),
    }
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except KafkaTimeoutError:
        raise ProduceError(
            f"no Kafka broker answers at {settings.bootstrap_servers}; "
            "start one with `marketstream broker up` or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None


def produce_ticks(
    ticks: Iterable[Tick | CsvProblem],
    settings: Settings,
    *,
    total: int | None = None,
    progress: bool = True,
    producer: KafkaProducer | None = None,
) -> ProduceSummary:
    """Send every tick; collect CSV problems as rejected rows. Blocks until all are acknowledged."""
    ensure_topic(settings)
    own = producer is None
    producer = producer or make_producer(settings)
    summary = ProduceSummary()
    failures: list[str] = []

    def on_error(exc: BaseException) -> None:
        failures.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    attempted = 0
    try:
        with tqdm(total=total, unit="tick", desc="produce", disable=not progress) as bar:
            for item in ticks:
                if isinstance(item, CsvProblem):
                    summary.rejected += 1
                    summary.problems.append(str(item))
                    continue
                producer.send(settings.topic, key=item.key, value=wire_message(item)).add_errback(
                    on_error
                )
                attempted += 1
                if attempted % 1000 == 0:
                    bar.update(1000)
            bar.update(attempted % 1000)
            producer.flush()
    except KafkaError as exc:
        raise ProduceError(
            explain(
                exc,
                settings,
                f"producing to {settings.topic}",
                "ticks acknowledged before it are in the topic, and sending the same "
                "input again does not duplicate them in DuckDB",
            )
        ) from None
    finally:
        if own:
            producer.close()
    summary.elapsed_s = time.perf_counter() - started
    summary.failed = len(failures)
    summary.sent = attempted - summary.failed
    summary.problems.extend(failures[:20])
    return summary


def count_csv_rows(path: Path) -> int:
    """Data rows in a CSV (for the progress bar's total)."""
    with path.open("rb") as fh:
        return max(0, sum(1 for _ in fh) - 1)


def produce_csv(path: Path, settings: Settings, *, progress: bool = True) -> ProduceSummary:
    """Send a CSV of ticks (the seed's columns) to the topic."""
    if not path.exists():
        raise ProduceError(f"no CSV at {path}; generate one first (marketstream generate)")
    return produce_ticks(read_csv(path), settings, total=count_csv_rows(path), progress=progress)
