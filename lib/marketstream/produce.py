"""Ticks (from a CSV or the generator) into a Kafka topic.

One JSON message per tick (:meth:`Tick.to_message`), keyed by symbol,
``acks=all`` with kafka-python's idempotent producer, batched with a small
linger (the client and its tuning: :mod:`marketstream.clients`). Bad CSV rows
are reported with their line number and skipped; the good ones still go. Any CSV
with the columns ``timestamp,symbol,price,volume`` is input, and with a
:class:`~marketstream.pacing.Pace` it is replayed at the speed of its event
times instead of all at once (:func:`produce_csv`).

Replication (:func:`ensure_topic`): a topic the kit creates gets
``KAFKA_REPLICATION_FACTOR`` replicas and ``min.insync.replicas`` =
``KAFKA_MIN_INSYNC_REPLICAS`` (3 and 2), each capped to what the cluster can
hold (replicas to its brokers, min ISR to the replicas), and the cap is said,
not hidden. With ``acks=all``, an acknowledged tick is then on at least
``min.insync.replicas`` brokers. A topic that exists is used as it is, with a
warning when on a cluster of two or more brokers it has one replica or
``min.insync.replicas=1``: then one broker's loss can lose acknowledged ticks.
(Equal replicas and min ISR, e.g. 2 and 2, keep the guarantee but stop writes
while a broker is down; that is the operator's choice and not warned about.)
A user who may not create or list topics still runs against a pre-created one:
when the admin request is refused but the topic's metadata is there, the kit
goes on.

Speed: kafka-python's ``send`` costs ~10 us of pure Python per message, which
is the producer's ceiling; the timestamp format and the key's partition are
kept cheaper than that (see :func:`marketstream.ticks.format_timestamp` and
:class:`marketstream.clients.KeyCachingPartitioner`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidReplicationFactorError,
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)
from kafka.structs import TopicPartition
from tqdm.auto import tqdm

from marketstream.clients import DEFAULT_CLIENTS, KafkaClients
from marketstream.errors import KafkaUnavailable, ProduceError
from marketstream.kafka_errors import authorization_error, describe, explain
from marketstream.logs import get_logger
from marketstream.pacing import Pace, paced
from marketstream.settings import Settings
from marketstream.ticks import CsvProblem, Tick, read_csv

__all__ = [
    "ProduceError",
    "ProduceSummary",
    "ReplicationPlan",
    "count_csv_rows",
    "delete_topic",
    "ensure_topic",
    "produce_csv",
    "produce_ticks",
    "replication_plan",
    "replication_warning",
    "require_csv",
]

#: Refusals that mean "this user may not do that", not "the cluster is broken".
_REFUSED = (TopicAuthorizationFailedError, ClusterAuthorizationFailedError)

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


@dataclass(frozen=True)
class ReplicationPlan:
    """Replicas and ``min.insync.replicas`` for a new topic, and why they were capped."""

    replication_factor: int
    min_insync_replicas: int
    capped: str = ""  # one line when a setting could not be honoured, else empty


def replication_plan(settings: Settings, brokers: int | None) -> ReplicationPlan:
    """What a new topic gets on a cluster of ``brokers`` (None: unknown, nothing capped).

    Replicas: ``min(KAFKA_REPLICATION_FACTOR, brokers)``; min ISR:
    ``min(KAFKA_MIN_INSYNC_REPLICAS, replicas)``. A single local broker thus gets 1 and 1.
    """
    wanted_rf, wanted_isr = settings.replication_factor, settings.min_insync_replicas
    rf = wanted_rf if brokers is None else max(1, min(wanted_rf, brokers))
    isr = min(wanted_isr, rf)
    reasons = []
    if rf < wanted_rf:
        reasons.append(
            f"replication factor {rf}, not KAFKA_REPLICATION_FACTOR={wanted_rf}: the cluster "
            f"has {brokers} broker{'s' if brokers != 1 else ''}"
        )
    if isr < wanted_isr:
        reasons.append(
            f"min.insync.replicas {isr}, not KAFKA_MIN_INSYNC_REPLICAS={wanted_isr}: it cannot "
            "exceed the replication factor"
        )
    capped = f"topic {settings.topic}: " + "; ".join(reasons) if reasons else ""
    return ReplicationPlan(rf, isr, capped)


def replication_warning(
    topic: str, replicas: int | None, min_insync: int | None, brokers: int | None
) -> str:
    """One line if an existing topic cannot keep acknowledged ticks through one broker's
    loss (a cluster of two or more brokers, and one replica or ``min.insync.replicas=1``);
    empty otherwise, or when not known."""
    if brokers is None or brokers < 2:
        return ""
    if replicas is not None and replicas < 2:
        return (
            f"topic {topic} has 1 replica on a cluster of {brokers} brokers: losing its "
            "broker loses acknowledged ticks; recreate it with replication factor 2 or more"
        )
    if min_insync is not None and min_insync < 2 and (replicas or 0) >= 2:
        return (
            f"topic {topic} has min.insync.replicas={min_insync}: acks=all is then satisfied "
            "by the leader alone, so losing it can lose acknowledged ticks; set the topic's "
            "min.insync.replicas to 2"
        )
    return ""


def ensure_topic(
    settings: Settings,
    clients: KafkaClients = DEFAULT_CLIENTS,
    *,
    say: Callable[[str], None] | None = None,
) -> bool:
    """Create the topic if missing (see the module docstring); True if created.

    ``settings.partitions`` partitions, replicas and min ISR by
    :func:`replication_plan`. A cap, a warning about an existing topic or the
    fall-back to a pre-created topic is logged (JSON log) and told to ``say``.
    """
    admin = clients.admin(settings)
    try:
        return _ensure_topic(admin, settings, clients, say)
    finally:
        admin.close()


def _ensure_topic(
    admin: Any, settings: Settings, clients: KafkaClients, say: Callable[[str], None] | None
) -> bool:
    def note(event: str, line: str, **fields: object) -> None:
        get_logger(settings.log_path).warning(
            event, extra={"topic": settings.topic, "detail": line, **fields}
        )
        if say is not None:
            say(line)

    brokers: int | None = None
    with contextlib.suppress(*_REFUSED):
        brokers = len(admin.describe_cluster().get("brokers") or []) or None
    try:
        exists = settings.topic in admin.list_topics()
    except _REFUSED:
        exists = False  # try to create it; a refusal there is handled below
    if exists:
        warning = replication_warning(settings.topic, *_replication_of(admin, settings), brokers)
        if warning:
            note("topic_under_replicated", warning, brokers=brokers)
        return False
    plan = replication_plan(settings, brokers)
    new = {
        settings.topic: {
            "num_partitions": settings.partitions,
            "replication_factor": plan.replication_factor,
            "configs": {"min.insync.replicas": str(plan.min_insync_replicas)},
        }
    }
    try:
        admin.create_topics(new)
    except TopicAlreadyExistsError:
        return False
    except InvalidReplicationFactorError as exc:
        raise ProduceError(
            f"cannot create topic {settings.topic} with {plan.replication_factor} replicas "
            f"({describe(exc)}): fewer brokers are up than the cluster has; start them, "
            "or lower KAFKA_REPLICATION_FACTOR"
        ) from None
    except KafkaError as exc:
        if authorization_error(exc) is None:
            raise
        if not _topic_has_metadata(settings, clients):
            raise ProduceError(
                explain(
                    exc,
                    settings,
                    f"creating topic {settings.topic}",
                    f"nothing was sent (it needs {settings.partitions} partitions, replication "
                    f"factor {plan.replication_factor}, min.insync.replicas "
                    f"{plan.min_insync_replicas})",
                    operation="create",
                )
            ) from None
        note(
            "topic_not_checked",
            f"topic {settings.topic}: not allowed to create or describe it ({describe(exc)}), "
            "but it exists; using it as it is",
        )
        return False
    if plan.capped:
        note(
            "topic_replication_capped",
            plan.capped,
            brokers=brokers,
            replication_factor=plan.replication_factor,
            min_insync_replicas=plan.min_insync_replicas,
        )
    return True


def _replication_of(admin: Any, settings: Settings) -> tuple[int | None, int | None]:
    """(fewest replicas of any partition, min.insync.replicas) of the topic; None if not known."""
    replicas = None
    with contextlib.suppress(KafkaError, LookupError, TypeError):
        [topic] = admin.describe_topics([settings.topic])
        replicas = min(len(p["replica_nodes"]) for p in topic["partitions"])
    min_insync = None
    with contextlib.suppress(KafkaError, LookupError, TypeError, ValueError):
        resource = ConfigResource(
            ConfigResourceType.TOPIC, settings.topic, configs={"min.insync.replicas": None}
        )
        found = admin.describe_configs([resource], config_filter="all")
        min_insync = int(found["topic"][settings.topic]["min.insync.replicas"]["value"])
    return replicas, min_insync


def _topic_has_metadata(settings: Settings, clients: KafkaClients) -> bool:
    """Does the topic exist, as a consumer's metadata sees it (what a user without admin
    rights may still ask)?"""
    try:
        consumer = clients.consumer(settings, subscribe=False)
    except (KafkaError, KafkaUnavailable):
        return False
    try:
        return bool(consumer.partitions_for_topic(settings.topic))
    except KafkaError:
        return False
    finally:
        with contextlib.suppress(Exception):
            consumer.close()


def partition_counts(
    settings: Settings, clients: KafkaClients = DEFAULT_CLIENTS
) -> dict[int, int] | None:
    """Messages in each partition of the topic (end minus beginning offset; ``None``: no
    topic). What ``broker status`` shows, so a user sees whether the keys spread."""
    consumer = clients.consumer(settings, subscribe=False)
    try:
        partitions = consumer.partitions_for_topic(settings.topic)
        if not partitions:
            return None
        tps = [TopicPartition(settings.topic, p) for p in sorted(partitions)]
        ends, starts = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
        return {tp.partition: ends[tp] - starts[tp] for tp in tps}
    finally:
        with contextlib.suppress(Exception):
            consumer.close()


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
    summary = ProduceSummary()
    ensure_topic(settings, clients, say=summary.problems.append)
    own = producer is None
    producer = producer or clients.producer(settings)
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


def csv_symbols(path: Path) -> list[str]:
    """The distinct symbols of a CSV (its symbol column alone, read by Arrow: ~0.1 s for
    a million rows); none if Arrow cannot read it (the rows are then checked one by one
    as they are sent, and the bad ones named)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import ArrowInvalid, csv

    try:
        table = csv.read_csv(
            path,
            convert_options=csv.ConvertOptions(
                include_columns=["symbol"], column_types={"symbol": pa.string()}
            ),
        )
    except (ArrowInvalid, KeyError, OSError):
        return []
    return [s for s in pc.unique(table["symbol"]).to_pylist() if s]


def spread_over(settings: Settings, symbols: Iterable[str]) -> Settings:
    """``settings`` whose ``spread`` partitioner also places the ``symbols`` it does not
    list: after the configured ones, in name order.

    Why: a user's own symbols fell back to murmur2, and with 3 partitions AAPL and MSFT
    both landed on partition 0 (one worker did all the work). In name order, the same
    file (or any file with the same symbols) gives each the same partition; listing
    them in ``MARKET_SYMBOLS`` fixes their partitions across any files.
    """
    extra = sorted(set(symbols) - set(settings.symbols))
    if settings.partitioner != "spread" or not extra:
        return settings
    return settings.with_(symbols=(*settings.symbols, *extra))


def produce_csv(
    path: Path,
    settings: Settings,
    *,
    progress: bool = True,
    clients: KafkaClients = DEFAULT_CLIENTS,
    pace: Pace | None = None,
    wait: Callable[[float], bool] | None = None,
) -> ProduceSummary:
    """Send a CSV of ticks (``timestamp,symbol,price,volume``, any order of columns).

    With ``pace``, each tick goes when its event time says (:func:`marketstream.pacing.paced`,
    ``pace.speed`` times faster); ``wait(seconds)`` is its sleeper, returning True to stop
    (the CLI passes its Ctrl-C event's ``wait``). Bad rows are reported and skipped either way.
    """
    require_csv(path)
    settings = spread_over(settings, csv_symbols(path))
    items: Iterable[Tick | CsvProblem] = read_csv(path)
    if pace is not None:
        items = paced(items, pace) if wait is None else paced(items, pace, wait=wait)
    return produce_ticks(
        items, settings, total=count_csv_rows(path), progress=progress, clients=clients
    )
