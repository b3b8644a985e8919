"""What a test checks in the store after a crash, a failover or a replay: exact contents.

One place for the two checks the crash, failover and cluster tests share, so each
proves "nothing lost, nothing doubled" the same way.
"""

from __future__ import annotations

from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from marketstream import store
from marketstream.settings import Settings
from marketstream.ticks import Tick
from support.factories import tick_table

_COLUMNS = "symbol, event_time, price, volume"


def store_counts(db: Path) -> tuple[int, int, int]:
    """(rows, distinct ticks, distinct Kafka coordinates) in market_ticks."""
    with store.read_connection(db) as con:
        row = con.execute(
            """
            SELECT count(*),
                   count(DISTINCT (symbol, event_time)),
                   count(DISTINCT (topic, "partition", "offset"))
            FROM market_ticks
            """
        ).fetchall()[0]
    return int(row[0]), int(row[1]), int(row[2])


def store_difference(db: Path, ticks: list[Tick]) -> tuple[int, int]:
    """(of these ticks, how many DuckDB lacks; DuckDB rows that are not among them),
    comparing identity, price and volume."""
    expected = tick_table(ticks).select(["symbol", "event_time", "price", "volume"])
    with store.read_connection(db) as con:
        con.register("expected", expected)
        missing, extra = con.execute(
            f"""
            SELECT (SELECT count(*) FROM (SELECT {_COLUMNS} FROM expected
                                          EXCEPT SELECT {_COLUMNS} FROM market_ticks)),
                   (SELECT count(*) FROM (SELECT {_COLUMNS} FROM market_ticks
                                          EXCEPT SELECT {_COLUMNS} FROM expected))
            """
        ).fetchall()[0]
    return int(missing), int(extra)


def committed_offsets(admin: KafkaAdminClient, settings: Settings) -> dict[int, int]:
    """The consumer group's committed offset per partition of the topic (absent = 0).

    A group that has not committed yet (or a coordinator still loading after a
    broker start) reads as nothing committed.
    """
    try:
        offsets = admin.list_group_offsets(settings.consumer_group)[settings.consumer_group]
    except KafkaError:
        return {}
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == settings.topic and meta.offset >= 0
    }
