"""Kafka topic into DuckDB in micro-batches, committing offsets only after DuckDB commits.

Delivery: a batch is decoded, written in one DuckDB transaction, and only
then are its offsets committed to Kafka. A crash between the two replays the
batch, and the store skips ticks it already has, so the effect is
exactly-once: no tick lost, none duplicated. Messages that are not valid
ticks go to ``dead_letters`` with their raw bytes and the reason.

Speed (see ``bench/README.md`` for the profile): kafka-python parses every
record in pure Python on the calling thread, and that is the ceiling. So the
consumer does as little else as possible on that thread:

* decoding is per batch, not per message: the values are joined into one
  newline-delimited buffer that Arrow's JSON reader parses in C++, and
  validation is vectorised (Arrow compute). Only rows the fast path cannot
  vouch for (anything but a flat JSON object in the producer's exact format)
  go through :func:`marketstream.ticks.tick_from_message` one by one, so
  dead-letter reasons are exactly the per-message ones;
* decoding and the DuckDB transaction run on a writer thread (both release
  the GIL), overlapping the next poll; the main thread still commits each
  batch's offsets only once its DuckDB transaction has committed.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata
from tqdm.auto import tqdm

from marketstream.kafka_errors import explain
from marketstream.logs import get_logger
from marketstream.settings import Settings
from marketstream.store import DEAD_LETTER_SCHEMA, TICK_BATCH_SCHEMA, RunMetrics, TickWriter
from marketstream.ticks import MAX_VOLUME, SYMBOL_RE, TickError, tick_from_message

#: Payloads larger than this are dead letters without being parsed.
MAX_MESSAGE_BYTES = 64 * 1024

#: Batches decoded/written ahead of their Kafka commit. Two keep the writer thread
#: busy while the main thread polls; more would only hold more memory.
MAX_IN_FLIGHT = 2

#: Live mode leaves the DuckDB file free for at least this long after each write.
#: Every write opens the file, inserts and closes it (~30-70 ms, mostly open/close),
#: and readers (API, Voila, notebooks) can only open it in between: writing after
#: every poll kept the file locked nearly all the time at 1,000 ticks/s, readers
#: queued, and freshness suffered. Records polled meanwhile join the next write.
LIVE_WRITE_GAP_S = 0.1

#: While consuming, threads hand over the GIL after 0.2 ms instead of Python's 5 ms.
#: The writer thread holds the GIL only briefly between Arrow and DuckDB calls (which
#: release it), but each time it wants it back it would wait up to the switch
#: interval behind kafka-python's parsing on the main thread; at 5 ms that made the
#: writer, not Kafka, the bottleneck (measured: +30% consume rate at 0.2 ms).
GIL_SWITCH_INTERVAL_S = 0.0002

#: The four tick fields as the fast path reads them. ``unexpected_field_behavior="error"``
#: sends messages with extra fields (valid ticks too) to the per-message path.
_FAST_SCHEMA = pa.schema(
    [
        ("timestamp", pa.string()),
        ("symbol", pa.string()),
        ("price", pa.float64()),
        ("volume", pa.int64()),
    ]
)
_FAST_PARSE = pj.ParseOptions(
    explicit_schema=_FAST_SCHEMA, unexpected_field_behavior="error", newlines_in_values=False
)

#: A value the fast path may hand to Arrow: one flat object, no braces inside, no
#: escapes, no line breaks. This guarantees one message = one row (a row can never be
#: stitched from two messages) and never feeds Arrow a top-level ``null``, which
#: crashes pyarrow's JSON reader.
_FLAT_MESSAGE = pc.match_substring_regex(pc.field("raw"), r"^\{[^{}\\\r\n]*\}$") & (
    pc.binary_length(pc.field("raw")) <= MAX_MESSAGE_BYTES
)

#: ticks.validate and parse_timestamp as one Arrow expression (one C++ call, one GIL
#: release), for the producer's exact timestamp format only: anything else that
#: ``datetime.fromisoformat`` might accept takes the per-message path. Nulls (missing
#: fields) filter out, and the per-message path names them.
_YEAR = pc.utf8_slice_codeunits(pc.field("timestamp"), 0, 4)  # 4 digits, by the regex
_VALID_TICK = (
    pc.match_substring_regex(pc.field("timestamp"), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    & (_YEAR >= "1970")
    & (_YEAR <= "2200")
    & pc.match_substring_regex(pc.field("symbol"), SYMBOL_RE.pattern)
    & pc.is_finite(pc.field("price"))
    & (pc.field("price") > 0.0)
    & (pc.field("volume") >= 0)
    & (pc.field("volume") <= MAX_VOLUME)
)


class ConsumeError(RuntimeError):
    """Consuming could not start or go on; the message says why and what to do."""


@dataclass
class DecodedBatch:
    """One poll's records split into columns of good ticks and rows of dead letters."""

    ticks: pa.Table
    dead: pa.Table
    max_event_time: datetime | None
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


def _fast_decode(values: Sequence[bytes | None]) -> tuple[np.ndarray, pa.Table | None]:
    """Decode and validate the values that are plainly good ticks, all at once.

    Returns a mask of the rows accepted here and their ``symbol, event_time,
    price, volume`` columns in record order. A row is accepted only if
    :func:`tick_from_message` would accept it with the same values; every other
    row (and the whole batch if Arrow rejects the buffer) is left for it.
    """
    n = len(values)
    accepted = np.zeros(n, dtype=bool)
    rows = pa.array(np.arange(n, dtype=np.int64))
    flat = pa.table({"raw": pa.array(values, pa.binary()), "row": rows}).filter(_FLAT_MESSAGE)
    if not flat.num_rows:
        return accepted, None
    raw = flat.column("raw").combine_chunks()
    # The values back to back, straight from the Arrow buffer (no copy): each is one
    # flat object, so "}{" is an unambiguous boundary. One block: no chunking.
    bounds = np.frombuffer(raw.buffers()[1], dtype=np.int32)[raw.offset : raw.offset + len(raw) + 1]
    start, end = int(bounds[0]), int(bounds[-1])
    try:
        table = pj.read_json(
            pa.BufferReader(raw.buffers()[2].slice(start, end - start)),
            read_options=pj.ReadOptions(use_threads=False, block_size=max(1 << 20, end - start)),
            parse_options=_FAST_PARSE,
        )
        if table.num_rows != flat.num_rows:
            return accepted, None
        good = table.append_column("row", flat.column("row")).filter(_VALID_TICK)
        # the regex admits impossible dates (02-30, 24:00): Arrow refuses them here
        event_time = good.column("timestamp").cast(pa.timestamp("us", "UTC"))
    # Bad JSON, a type mismatch, an extra field, invalid UTF-8 inside a string, an
    # impossible date: the per-message path decides, row by row.
    except (pa.ArrowException, ValueError):
        return accepted, None
    accepted[good.column("row").to_numpy()] = True
    columns = pa.table(
        {
            "symbol": good.column("symbol"),
            "event_time": event_time.cast(pa.timestamp("us")),  # naive UTC, as stored
            "price": good.column("price"),
            "volume": good.column("volume"),
        }
    )
    return accepted, columns.combine_chunks()


def _offsets(topics: list[str], partitions: np.ndarray, offsets: np.ndarray) -> dict:
    """The next offset to commit per partition: the highest seen + 1."""
    result: dict[TopicPartition, int] = {}
    if topics and topics.count(topics[0]) == len(topics):
        for p in np.unique(partitions):
            result[TopicPartition(topics[0], int(p))] = int(offsets[partitions == p].max()) + 1
        return result
    for topic, p, o in zip(topics, partitions.tolist(), offsets.tolist(), strict=True):
        tp = TopicPartition(topic, p)
        if o + 1 > result.get(tp, -1):
            result[tp] = o + 1
    return result


def decode_records(records: Sequence[Any], received_at: datetime) -> DecodedBatch:
    """Turn Kafka records into an Arrow batch; invalid ones become dead-letter rows."""
    received = received_at.astimezone(UTC).replace(tzinfo=None)
    n = len(records)
    values = [r.value for r in records]
    topics = [r.topic for r in records]
    partitions = np.array([r.partition for r in records], dtype=np.int32)
    offsets = np.array([r.offset for r in records], dtype=np.int64)
    accepted, fast = _fast_decode(values) if n else (np.zeros(0, dtype=bool), None)

    slow_ticks: dict[str, list] = {"index": [], "symbol": [], "event_time": [], "price": []}
    slow_ticks["volume"] = []
    dead: dict[str, list] = {name: [] for name in DEAD_LETTER_SCHEMA.names}
    for i in np.flatnonzero(~accepted).tolist():
        rec = records[i]
        value = values[i]
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
        slow_ticks["index"].append(i)
        slow_ticks["symbol"].append(tick.symbol)
        slow_ticks["event_time"].append(tick.timestamp.replace(tzinfo=None))
        slow_ticks["price"].append(tick.price)
        slow_ticks["volume"].append(tick.volume)

    fast_index = np.flatnonzero(accepted)
    index = fast_index
    value_columns = fast
    if slow_ticks["index"]:
        slow = pa.table(
            {name: slow_ticks[name] for name in ("symbol", "event_time", "price", "volume")},
            schema=pa.schema([TICK_BATCH_SCHEMA.field(i) for i in range(4)]),
        )
        value_columns = slow if fast is None else pa.concat_tables([fast, slow])
        index = np.concatenate([fast_index, np.array(slow_ticks["index"], dtype=np.int64)])
        if fast is not None:  # keep record order, as a per-message decode would
            order = np.argsort(index, kind="stable")
            value_columns = value_columns.take(order)
            index = index[order]
    if value_columns is None:
        ticks = TICK_BATCH_SCHEMA.empty_table()
    else:
        k = len(index)
        if topics.count(topics[0]) == n:  # one topic: no per-row lookups
            topic_column = pa.array([topics[0]] * k, pa.string())
        else:
            topic_column = pa.array([topics[i] for i in index.tolist()], pa.string())
        ticks = pa.table(
            [
                *value_columns.columns,
                topic_column,
                pa.array(partitions[index]),
                pa.array(offsets[index]),
                pa.array(np.full(k, np.datetime64(received, "us"))),
            ],
            schema=TICK_BATCH_SCHEMA,
        )
    max_event = pc.max(ticks.column("event_time")).as_py() if ticks.num_rows else None
    return DecodedBatch(
        ticks,
        pa.table(dead, schema=DEAD_LETTER_SCHEMA),
        max_event,
        _offsets(topics, partitions, offsets),
    )


def make_consumer(settings: Settings, **overrides: object) -> KafkaConsumer:
    """A consumer that never auto-commits and fetches in large batches.

    Fetch sizes are generous so one fetch round-trip fills a whole poll
    (kafka-python's per-partition default of 1 MB is ~11,000 ticks).
    """
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


@contextmanager
def _gil_switch_interval(seconds: float) -> Iterator[None]:
    """Shorten ``sys.setswitchinterval`` for a block, then put the old value back."""
    previous = sys.getswitchinterval()
    wanted = min(previous, seconds)
    sys.setswitchinterval(wanted)
    try:
        yield
    finally:
        if sys.getswitchinterval() == wanted:  # unless someone changed it meanwhile
            sys.setswitchinterval(previous)


@dataclass
class _InFlight:
    """A polled batch being decoded and written on the writer thread."""

    size: int
    future: Future[tuple[DecodedBatch, int]]


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
    # One writer thread: DuckDB transactions stay strictly in poll order.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="marketstream-writer")
    in_flight: deque[_InFlight] = deque()
    processed = submitted = inserted = valid = errors = 0
    max_event: datetime | None = None
    status = "ok"
    last_data = time.monotonic()
    poll_ms = 200 if live else 500
    bar = tqdm(total=max_messages, unit="tick", desc="consume", disable=not progress)

    def decode_and_write(records: list, received_at: datetime) -> tuple[DecodedBatch, int]:
        nonlocal last_write_end
        try:
            batch = decode_records(records, received_at)
            return batch, writer.write_batch(batch.ticks, batch.dead)
        finally:
            last_write_end = time.monotonic()

    def settle(job: _InFlight) -> None:
        """Wait for a batch's DuckDB commit, then (only then) commit its offsets."""
        nonlocal processed, valid, inserted, errors, max_event
        batch, added = job.future.result()
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
        processed += job.size
        valid += batch.ticks.num_rows
        inserted += added
        errors += n_dead
        if batch.max_event_time and (max_event is None or batch.max_event_time > max_event):
            max_event = batch.max_event_time
        bar.update(job.size)
        if on_batch is not None:
            on_batch(batch, added)

    def submit(records: list) -> None:
        """Hand records to the writer thread (received_at = now: they have all been read)."""
        nonlocal submitted
        while len(in_flight) >= max_in_flight:  # back-pressure: the writer is behind
            settle(in_flight.popleft())
        future = executor.submit(decode_and_write, records, datetime.now(UTC))
        in_flight.append(_InFlight(len(records), future))
        submitted += len(records)

    # Batch mode: every poll is a batch, written while the next poll runs. Live mode:
    # one write at a time, each LIVE_WRITE_GAP_S after the last one ended; polls in
    # between accumulate into the next write.
    max_in_flight = 1 if live else MAX_IN_FLIGHT
    pending: list = []
    last_write_end = 0.0
    try:
        with _gil_switch_interval(GIL_SWITCH_INTERVAL_S):
            while not stop.is_set():
                budget = settings.batch_size - len(pending)
                if max_messages is not None:
                    budget = min(budget, max_messages - submitted - len(pending))
                records: list = []
                if budget > 0:
                    timeout_ms = poll_ms
                    if pending:  # come back in time to write what is waiting
                        wait = LIVE_WRITE_GAP_S - (time.monotonic() - last_write_end)
                        timeout_ms = int(min(poll_ms, max(10.0, wait * 1000)))
                    polled = consumer.poll(timeout_ms=timeout_ms, max_records=budget)
                    records = [r for batch in polled.values() for r in batch]
                while in_flight and in_flight[0].future.done():
                    settle(in_flight.popleft())
                if records:
                    last_data = time.monotonic()
                    pending.extend(records)
                if pending:
                    due = (
                        not live
                        or budget <= len(records)  # full, or the message budget is used up
                        or (not in_flight and time.monotonic() - last_write_end >= LIVE_WRITE_GAP_S)
                    )
                    if due:
                        submit(pending)
                        pending = []
                    continue
                if budget <= 0:
                    break
                while in_flight:  # nothing to overlap with: commit what is written
                    settle(in_flight.popleft())
                if not live and (_caught_up(consumer) or time.monotonic() - last_data > idle_limit):
                    break
            if pending:  # stop: finish the batch in hand
                submit(pending)
                pending = []
            while in_flight:  # stop, budget or end: commit what is written
                settle(in_flight.popleft())
    except KafkaError as exc:
        status = "failed"
        log.error("consume_error", extra={"run_id": run_id, "error": str(exc)})
        raise ConsumeError(
            explain(
                exc,
                settings,
                f"consuming {settings.topic}",
                "every batch stored so far is committed; a new run resumes after it",
            )
        ) from None
    finally:
        for job in in_flight:  # only after an error: these are never committed
            job.future.cancel()
        executor.shutdown(wait=True)
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
