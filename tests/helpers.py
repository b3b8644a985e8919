"""Shared test helpers: fake Kafka records and Arrow batches built from generated ticks."""

from __future__ import annotations

from collections import namedtuple
from datetime import UTC, datetime

from marketstream.decode import DecodedBatch, decode_records
from marketstream.ticks import Tick

Record = namedtuple("Record", "topic partition offset key value")


def records_for(ticks: list[Tick], topic: str = "t", partitions: int = 1) -> list[Record]:
    """Kafka-like records for ticks, spread over partitions like a keyed producer would."""
    offsets = [0] * partitions
    out = []
    for tick in ticks:
        p = hash(tick.symbol) % partitions
        out.append(Record(topic, p, offsets[p], tick.key, tick.to_message()))
        offsets[p] += 1
    return out


def batch_for(
    ticks: list[Tick], topic: str = "t", received_at: datetime | None = None
) -> DecodedBatch:
    """A decoded batch, as the consumer would hand it to the store (received now by default)."""
    return decode_records(records_for(ticks, topic), received_at or datetime.now(UTC))
