"""Ticks (from a CSV or the generator) into a Kafka topic.

One JSON message per tick, keyed by symbol, ``acks=all`` with kafka-python's
idempotent producer, batched with a small linger. Bad CSV rows are reported
with their line number and skipped; the good ones still go.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from tqdm.auto import tqdm

from marketstream.settings import Settings
from marketstream.ticks import CsvProblem, Tick, read_csv


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
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "compression_type": None,
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
                producer.send(settings.topic, key=item.key, value=item.to_message()).add_errback(
                    on_error
                )
                attempted += 1
                if attempted % 1000 == 0:
                    bar.update(1000)
            bar.update(attempted % 1000)
            producer.flush()
    except KafkaError as exc:
        raise ProduceError(f"producing to {settings.topic} failed: {exc}") from None
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
