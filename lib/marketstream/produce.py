"""Ticks (from a CSV or the generator) into a Kafka topic.

One JSON message per tick (:meth:`Tick.to_message`), keyed by symbol,
``acks=all`` with kafka-python's idempotent producer, batched with a small
linger (the client and its tuning: :mod:`marketstream.clients`). Bad CSV rows
are reported with their line number and skipped; the good ones still go.

Speed: kafka-python's ``send`` costs ~10 us of pure Python per message, which
is the producer's ceiling; the timestamp format and the key's partition are
kept cheaper than that (see :func:`marketstream.ticks.format_timestamp` and
:class:`marketstream.clients.KeyCachingPartitioner`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka.admin import NewTopic
from kafka.errors import AuthorizationError, KafkaError, TopicAlreadyExistsError
from tqdm.auto import tqdm

from marketstream.clients import DEFAULT_CLIENTS, KafkaClients
from marketstream.errors import ProduceError
from marketstream.kafka_errors import authorization_error, explain
from marketstream.settings import Settings
from marketstream.ticks import CsvProblem, Tick, read_csv

__all__ = [
    "ProduceError",
    "ProduceSummary",
    "count_csv_rows",
    "delete_topic",
    "ensure_topic",
    "produce_csv",
    "produce_ticks",
    "require_csv",
]

#: How long a deleted topic may take to disappear from the metadata (KRaft: ~0.2 s here).
DELETE_WAIT_S = 10.0


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
        return (
            f"sent {self.sent} ticks ({self.failed} failed, {self.rejected} bad rows skipped) "
            f"in {self.elapsed_s:.2f}s = {self.rate:,.0f} ticks/s"
        )


def ensure_topic(settings: Settings, clients: KafkaClients = DEFAULT_CLIENTS) -> bool:
    """Create the topic with ``settings.partitions`` partitions if missing; True if created.

    A user whose ACLs do not allow creating it gets one line saying which ACL
    to ask for (a user who may not even describe it sees it as missing).
    """
    admin = clients.admin(settings)
    try:
        if settings.topic in admin.list_topics():
            return False
        admin.create_topics(
            [NewTopic(settings.topic, num_partitions=settings.partitions, replication_factor=1)]
        )
        return True
    except TopicAlreadyExistsError:
        return False
    except AuthorizationError as exc:
        raise ProduceError(
            explain(
                exc,
                settings,
                f"creating topic {settings.topic}",
                "nothing was sent",
                operation="create",
            )
        ) from None
    finally:
        admin.close()


def delete_topic(settings: Settings, clients: KafkaClients = DEFAULT_CLIENTS) -> bool:
    """Delete the topic (for a fresh run); True if it existed."""
    admin = clients.admin(settings)
    try:
        if settings.topic not in admin.list_topics():
            return False
        admin.delete_topics([settings.topic])
        deadline = time.monotonic() + DELETE_WAIT_S
        while settings.topic in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.1)
        return True
    finally:
        admin.close()


def produce_ticks(
    ticks: Iterable[Tick | CsvProblem],
    settings: Settings,
    *,
    total: int | None = None,
    progress: bool = True,
    producer: Any | None = None,
    clients: KafkaClients = DEFAULT_CLIENTS,
) -> ProduceSummary:
    """Send every tick; collect CSV problems as rejected rows. Blocks until all are acknowledged.

    Delivery is reported per tick: a send that the broker finally refuses (after
    kafka-python's retries) counts as ``failed`` with its reason in ``problems``.
    """
    ensure_topic(settings, clients)
    own = producer is None
    producer = producer or clients.producer(settings)
    summary = ProduceSummary()
    failures: list[str] = []
    refused: list[KafkaError] = []

    def on_error(exc: BaseException) -> None:
        failures.append(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, KafkaError) and authorization_error(exc) is not None:
            refused.append(exc)

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
    if refused and len(refused) == attempted:  # an ACL, not a flaky broker: one line
        raise ProduceError(
            explain(
                refused[0],
                settings,
                f"producing to {settings.topic}",
                "no tick was written",
                operation="write to",
            )
        )
    summary.elapsed_s = time.perf_counter() - started
    summary.failed = len(failures)
    summary.sent = attempted - summary.failed
    summary.problems.extend(failures[:20])
    return summary


def require_csv(path: Path) -> None:
    """Raise :class:`ProduceError` if there is no CSV at ``path``."""
    if not path.exists():
        raise ProduceError(f"no CSV at {path}; generate one first (marketstream generate)")


def count_csv_rows(path: Path) -> int:
    """Data rows in a CSV (for the progress bar's total)."""
    with path.open("rb") as fh:
        return max(0, sum(1 for _ in fh) - 1)


def produce_csv(
    path: Path,
    settings: Settings,
    *,
    progress: bool = True,
    clients: KafkaClients = DEFAULT_CLIENTS,
) -> ProduceSummary:
    """Send a CSV of ticks (the seed's columns) to the topic."""
    require_csv(path)
    return produce_ticks(
        read_csv(path), settings, total=count_csv_rows(path), progress=progress, clients=clients
    )
