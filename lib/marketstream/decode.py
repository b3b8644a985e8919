"""Kafka records into Arrow columns of good ticks and rows of dead letters, per batch.

Why per batch: kafka-python parses every record in pure Python on the
consumer's thread, and that is the ceiling (bench/README.md). So decoding does
as little Python per message as possible: the values are joined into one
buffer that Arrow's JSON reader parses in C++, and validation is one
vectorised Arrow expression. Only rows the fast path cannot vouch for
(anything but a flat JSON object in the producer's exact format) go through
:func:`marketstream.ticks.tick_from_message` one by one, so dead-letter
reasons are exactly the per-message ones. Measured: the per-message path
alone ran 295 ticks/s end to end in the naive baseline; the batch path lets
the consumer reach 96,000 ticks/s (1M-tick bench).

Pure: no Kafka client, no store; records are anything with ``topic``,
``partition``, ``offset``, ``key`` and ``value``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from kafka import TopicPartition

from marketstream.store import DEAD_LETTER_SCHEMA, TICK_BATCH_SCHEMA
from marketstream.ticks import (
    MAX_VOLUME,
    MAX_YEAR,
    MIN_YEAR,
    SYMBOL_RE,
    Tick,
    TickError,
    tick_from_message,
)

#: Payloads larger than this are dead letters without being parsed.
MAX_MESSAGE_BYTES = 64 * 1024

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
_FLAT_RE = r"^\{[^{}\\\r\n]*\}$"
#: The producer's exact timestamp format (anything else ``datetime.fromisoformat``
#: might accept takes the per-message path).
_TIMESTAMP_RE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"

# The masks below are computed column by column and applied with ``filter(mask)``.
# Why not one ``pc.Expression`` (as before): ``Table.filter(expression)`` runs an
# Acero plan, and the first one imports pyarrow.dataset and pyarrow.acero: +10 MB
# peak RSS and 12 ms of CPU per process (measured), for the same kernels. The
# per-batch cost is the same within noise (1.05-1.18 us a record against
# 1.07-1.29 us, CPU, 5,000-record batches); py-spy had put 9 % of the writer
# thread's samples in the Acero filter.


def _flat_mask(raw: pa.Array) -> pa.Array:
    """True for the values the fast path may hand to Arrow (null: no)."""
    return pc.and_kleene(
        pc.match_substring_regex(raw, _FLAT_RE),
        pc.less_equal(pc.binary_length(raw), MAX_MESSAGE_BYTES),
    )


def _valid_mask(table: pa.Table) -> Any:
    """ticks.validate and parse_timestamp as Arrow kernels, for the producer's exact
    timestamp format only. Nulls (missing fields) filter out, and the per-message
    path names them."""
    timestamp, symbol = table.column("timestamp"), table.column("symbol")
    price, volume = table.column("price"), table.column("volume")
    year = pc.utf8_slice_codeunits(timestamp, 0, 4)  # 4 digits, by the regex
    mask = pc.match_substring_regex(timestamp, _TIMESTAMP_RE)
    for part in (
        pc.greater_equal(year, f"{MIN_YEAR:04d}"),
        pc.less_equal(year, f"{MAX_YEAR:04d}"),
        pc.match_substring_regex(symbol, SYMBOL_RE.pattern),
        pc.is_finite(price),
        pc.greater(price, 0.0),
        pc.greater_equal(volume, 0),
        pc.less_equal(volume, MAX_VOLUME),
    ):
        mask = pc.and_kleene(mask, part)
    return mask


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
    raw_values = pa.array(values, pa.binary())
    flat = pa.table({"raw": raw_values, "row": rows}).filter(_flat_mask(raw_values))
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
        good = table.append_column("row", flat.column("row"))
        good = good.filter(_valid_mask(good))
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


def decode_value(value: bytes | None) -> Tick:
    """The per-message rule for one value: the reference the fast path must agree with.

    :class:`TickError` (the dead-letter reason) for a null, an oversized or an
    invalid message.
    """
    if value is None:
        raise TickError("empty message (null value)")
    if len(value) > MAX_MESSAGE_BYTES:
        raise TickError(f"message of {len(value)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return tick_from_message(value)


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
            tick = decode_value(value)
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
