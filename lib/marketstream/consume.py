"""Kafka topic into DuckDB in micro-batches, committing offsets only after DuckDB commits.

Delivery: a batch is decoded, written in one DuckDB transaction, and only
then are its offsets committed to Kafka. A crash between the two replays the
batch, and the store skips ticks it already has, so the effect is
exactly-once: no tick lost, none duplicated. Messages that are not valid
ticks go to ``dead_letters`` with their raw bytes and the reason.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata
from tqdm.auto import tqdm

from marketstream.logs import get_logger
from marketstream.settings import Settings
from marketstream.store import DEAD_LETTER_SCHEMA, TICK_BATCH_SCHEMA, RunMetrics, TickWriter
from marketstream.ticks import TickError, tick_from_message

#: Payloads larger than this are dead letters without being parsed.
MAX_MESSAGE_BYTES = 64 * 1024


class ConsumeError(RuntimeError):
    """Consuming could not start or go on; the message says why and what to do."""


@dataclass
class DecodedBatch:
    """One poll's records split into columns of good ticks and rows of dead letters."""

    ticks: pa.Table
    dead: pa.Table
    max_event_time: datetime | None
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


def decode_records(records: list, received_at: datetime) -> DecodedBatch:
    """Turn Kafka records into an Arrow batch; invalid ones become dead-letter rows."""
    cols: dict[str, list] = {name: [] for name in TICK_BATCH_SCHEMA.names}
    dead: dict[str, list] = {name: [] for name in DEAD_LETTER_SCHEMA.names}
    offsets: dict[TopicPartition, int] = {}
    received = received_at.astimezone(UTC).replace(tzinfo=None)
    for rec in records:
        tp = TopicPartition(rec.topic, rec.partition)
        if rec.offset + 1 > offsets.get(tp, -1):
            offsets[tp] = rec.offset + 1
        value = rec.value
        try:
            if value is None:
                raise TickError("empty message (null value)")
            if len(value) > MAX_MESSAGE_BYTES:
                raise TickError(f"message of {len(value)} bytes exceeds {MAX_MESSAGE_BYTES}")
            tick = tick_from_message(value)
        except TickError as exc:
            dead["topic"].append(rec.topic)
            dead["partition"].append(rec.partition)
            dead["offset"].append(rec.offset)
            dead["key"].append(rec.key)
            dead["raw"].append(value[:MAX_MESSAGE_BYTES] if value is not None else None)
            dead["reason"].append(str(exc))
            dead["received_at"].append(received)
            continue
        cols["symbol"].append(tick.symbol)
        cols["event_time"].append(tick.timestamp.replace(tzinfo=None))
        cols["price"].append(tick.price)
        cols["volume"].append(tick.volume)
        cols["topic"].append(rec.topic)
        cols["partition"].append(rec.partition)
        cols["offset"].append(rec.offset)
        cols["received_at"].append(received)
    ticks = pa.table(cols, schema=TICK_BATCH_SCHEMA)
    max_event = max(cols["event_time"]) if cols["event_time"] else None
    return DecodedBatch(ticks, pa.table(dead, schema=DEAD_LETTER_SCHEMA), max_event, offsets)


def make_consumer(settings: Settings, **overrides: object) -> KafkaConsumer:
    """A consumer that never auto-commits and fetches in large batches."""
    config: dict[str, object] = {
        **settings.kafka_client_config(),
        "group_id": settings.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.batch_size,
        "fetch_max_bytes": 64 * 1024 * 1024,
        "max_partition_fetch_bytes": 16 * 1024 * 1024,
        "fetch_min_bytes": 1,
        "fetch_max_wait_ms": 100,
        "consumer_timeout_ms": float("inf"),
    }
    config.update(overrides)
    try:
        consumer = KafkaConsumer(**config)
    except KafkaTimeoutError:
        raise ConsumeError(
            f"no Kafka broker answers at {settings.bootstrap_servers}; "
            "start one with `marketstream broker up` or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None
    consumer.subscribe([settings.topic])
    return consumer


def _caught_up(consumer: KafkaConsumer) -> bool:
    """True when every assigned partition's position has reached its end offset."""
    assigned = consumer.assignment()
    if not assigned:
        return False
    ends = consumer.end_offsets(list(assigned))
    return all(consumer.position(tp) >= ends[tp] for tp in assigned)


def consume(
    settings: Settings,
    *,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    live: bool = False,
    stop: threading.Event | None = None,
    progress: bool = True,
    on_batch: Callable[[DecodedBatch, int], None] | None = None,
) -> RunMetrics:
    """Consume until caught up (batch mode), ``max_messages``, idle, or ``stop`` is set.

    ``live=True`` keeps going until ``stop`` and releases the DuckDB file
    between batches so readers get in; batch mode holds it for speed.
    Returns the run's metrics, which are also stored in ``pipeline_metrics``.
    """
    idle_limit = settings.idle_timeout_s if idle_timeout_s is None else idle_timeout_s
    stop = stop or threading.Event()
    log = get_logger(settings.log_path)
    run_id = uuid.uuid4().hex[:12]
    started_at = datetime.now(UTC)
    log.info("consume_start", extra={"run_id": run_id, "topic": settings.topic, "live": live})
    consumer = make_consumer(settings)
    writer = TickWriter(settings.db_path, hold=not live)
    processed = inserted = valid = errors = 0
    max_event: datetime | None = None
    status = "ok"
    last_data = time.monotonic()
    poll_ms = 200 if live else 500
    bar = tqdm(total=max_messages, unit="tick", desc="consume", disable=not progress)
    try:
        while not stop.is_set():
            budget = settings.batch_size
            if max_messages is not None:
                budget = min(budget, max_messages - processed)
                if budget <= 0:
                    break
            polled = consumer.poll(timeout_ms=poll_ms, max_records=budget)
            records = [r for batch in polled.values() for r in batch]
            if not records:
                if not live and (_caught_up(consumer) or time.monotonic() - last_data > idle_limit):
                    break
                continue
            last_data = time.monotonic()
            batch = decode_records(records, datetime.now(UTC))
            added = writer.write_batch(batch.ticks, batch.dead)
            consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in batch.offsets.items()})
            n_dead = batch.dead.num_rows
            if n_dead:
                log.warning(
                    "dead_letters",
                    extra={
                        "run_id": run_id,
                        "count": n_dead,
                        "first": {
                            "partition": batch.dead["partition"][0].as_py(),
                            "offset": batch.dead["offset"][0].as_py(),
                            "reason": batch.dead["reason"][0].as_py(),
                        },
                    },
                )
            processed += len(records)
            valid += batch.ticks.num_rows
            inserted += added
            errors += n_dead
            if batch.max_event_time and (max_event is None or batch.max_event_time > max_event):
                max_event = batch.max_event_time
            bar.update(len(records))
            if on_batch is not None:
                on_batch(batch, added)
    except KafkaError as exc:
        status = "failed"
        log.error("consume_error", extra={"run_id": run_id, "error": str(exc)})
        raise ConsumeError(f"consuming {settings.topic} failed: {exc}") from None
    finally:
        bar.close()
        consumer.close(autocommit=False)
        ended_at = datetime.now(UTC)
        elapsed = (ended_at - started_at).total_seconds()
        run = RunMetrics(
            run_id=run_id,
            mode="live" if live else "batch",
            topic=settings.topic,
            started_at=started_at.replace(tzinfo=None),
            ended_at=ended_at.replace(tzinfo=None),
            elapsed_s=elapsed,
            messages_processed=processed,
            rows_inserted=inserted,
            duplicates=valid - inserted,
            errors=errors,
            max_event_time=max_event,
            throughput_per_s=processed / elapsed if elapsed > 0 else 0.0,
            status=status if not stop.is_set() else "stopped",
        )
        writer.record_run(run)
        writer.close()
        log.info("consume_end", extra={"run_id": run_id, **_loggable(run)})
    return run


def _loggable(run: RunMetrics) -> dict[str, object]:
    return {k: v for k, v in run.__dict__.items() if k != "run_id"}
