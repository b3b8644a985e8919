"""Test data, one way: ticks -> Kafka-like records -> Arrow batches -> a DuckDB file.

* :func:`records_for`: ticks as the records a consumer polls (:class:`Record`);
* :func:`batch_for`: those records through the real decoder, as the consumer hands
  them to the store;
* :func:`tick_table`: the same Arrow batch built directly from ticks, for tests of
  the store and the API that must not depend on the decoder;
* :func:`dead_table`, :func:`run_metrics`: dead-letter rows and a ``pipeline_metrics``
  row;
* :func:`write_store`: all of it into a DuckDB file through the real writer;
* :func:`recent_ticks`: ticks of the last few seconds, for pages that show "now".
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from marketstream import store
from marketstream.decode import DecodedBatch, decode_records
from marketstream.store import RunMetrics, open_writer
from marketstream.ticks import RandomWalk, Tick

#: What the consumer reads from Kafka, as far as the decoder looks at it.
Record = namedtuple("Record", "topic partition offset key value")


def _naive_utc(when: datetime) -> datetime:
    """The store's time: naive UTC (an aware time is converted, a naive one kept)."""
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo is not None else when


def records_for(
    ticks: Sequence[Tick], topic: str = "t", partitions: int = 1, offset0: int = 0
) -> list[Record]:
    """Kafka-like records for ticks, spread over partitions like a keyed producer would,
    each partition's offsets counting up from ``offset0``."""
    offsets = [offset0] * partitions
    out = []
    for tick in ticks:
        p = hash(tick.symbol) % partitions
        out.append(Record(topic, p, offsets[p], tick.key, tick.to_message()))
        offsets[p] += 1
    return out


def batch_for(
    ticks: Sequence[Tick], topic: str = "t", received_at: datetime | None = None
) -> DecodedBatch:
    """A decoded batch, as the consumer would hand it to the store (received now by default)."""
    return decode_records(records_for(ticks, topic), received_at or datetime.now(UTC))


def tick_table(
    ticks: Sequence[Tick],
    *,
    topic: str = "t",
    offset0: int = 0,
    received_at: datetime | None = None,
) -> pa.Table:
    """The store's Arrow batch for ticks (:data:`marketstream.store.TICK_BATCH_SCHEMA`),
    built without the decoder: partition 0, offsets from ``offset0``, all received at
    ``received_at`` (default: now)."""
    received = _naive_utc(received_at or datetime.now(UTC))
    return pa.table(
        {
            "symbol": [t.symbol for t in ticks],
            "event_time": [_naive_utc(t.timestamp) for t in ticks],
            "price": [t.price for t in ticks],
            "volume": [t.volume for t in ticks],
            "topic": [topic] * len(ticks),
            "partition": [0] * len(ticks),
            "offset": list(range(offset0, offset0 + len(ticks))),
            "received_at": [received] * len(ticks),
        },
        schema=store.TICK_BATCH_SCHEMA,
    )


def dead_table(*rows: tuple) -> pa.Table:
    """Dead-letter rows: (topic, partition, offset, key, raw, reason, received_at) each."""
    names = store.DEAD_LETTER_SCHEMA.names
    columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    return pa.table(columns, schema=store.DEAD_LETTER_SCHEMA)


def run_metrics(
    ticks: Sequence[Tick],
    *,
    run_id: str,
    started_at: datetime,
    elapsed_s: float,
    throughput_per_s: float,
    errors: int = 0,
    topic: str = "market_ticks",
    mode: str = "batch",
    max_event_time: datetime | None = None,
) -> RunMetrics:
    """The ``pipeline_metrics`` row of a run that stored ``ticks`` and met ``errors`` bad
    messages; its newest event is the newest tick's unless ``max_event_time`` is given."""
    newest = max_event_time or max(t.timestamp for t in ticks)
    return RunMetrics(
        run_id=run_id,
        mode=mode,
        topic=topic,
        started_at=started_at,
        ended_at=started_at + timedelta(seconds=elapsed_s),
        elapsed_s=elapsed_s,
        messages_processed=len(ticks) + errors,
        rows_inserted=len(ticks),
        duplicates=0,
        errors=errors,
        max_event_time=_naive_utc(newest),
        throughput_per_s=throughput_per_s,
    )


def write_store(
    path: Path,
    batch: pa.Table | Sequence[Tick],
    *,
    dead: pa.Table | None = None,
    run: RunMetrics | None = None,
    hold: bool = True,
) -> Path:
    """Write a batch (an Arrow table, or ticks for :func:`tick_table`), dead letters and a
    run row into the DuckDB file at ``path`` with the real store writer.

    ``hold=False`` opens the file per batch, as live mode does (readers get in between).
    """
    table = batch if isinstance(batch, pa.Table) else tick_table(batch)
    with open_writer(path, hold=hold) as writer:
        writer.write_batch(table, dead)
        if run is not None:
            writer.record_run(run)
    return path


def recent_ticks(
    symbols: Sequence[str],
    seconds: int,
    *,
    end: datetime | None = None,
    per_second: int = 4,
    seed: int = 1,
) -> list[Tick]:
    """Ticks of the ``seconds`` whole seconds before ``end`` (default: now),
    ``per_second`` per second per symbol, as live mode's random walk makes them."""
    end = (end or datetime.now(UTC)).replace(microsecond=0)
    start = end - timedelta(seconds=seconds)
    step = timedelta(seconds=1) / per_second
    walk = RandomWalk(symbols, seed=seed)
    return [
        walk.step(symbol, start + step * i)
        for i in range(per_second * seconds)
        for symbol in symbols
    ]
