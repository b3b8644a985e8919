"""The store's schema and the shapes of what goes in, for both backends.

One text for the tables of the DuckDB file and of the lake, so the two cannot
drift apart; they differ only in the primary keys a lake does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import pyarrow as pa

#: The ``market_metrics`` view's columns, also what :func:`market_metrics` computes over a
#: time range: one text, so the range's answer and the view's cannot drift apart.
METRICS_SELECT = """symbol,
       count(*)                  AS tickcount,
       round(avg(price), 4)      AS avgprice,
       max(price)                AS maxprice,
       min(price)                AS minprice,
       sum(volume)               AS totalvolume,
       min(event_time)           AS first_tick,
       max(event_time)           AS last_tick,
       date_diff('millisecond', min(event_time), max(event_time)) / 1000.0
                                 AS session_duration_s"""

#: The tables, with ``{key_*}`` where a file has a primary key and a lake has none.
_TABLES = """
CREATE TABLE IF NOT EXISTS market_ticks (
    symbol      VARCHAR   NOT NULL,
    event_time  TIMESTAMP NOT NULL,   -- UTC
    price       DOUBLE    NOT NULL,
    volume      BIGINT    NOT NULL,
    topic       VARCHAR   NOT NULL,
    "partition" INTEGER   NOT NULL,
    "offset"    BIGINT    NOT NULL,
    received_at TIMESTAMP NOT NULL    -- UTC, when the consumer read it
    {key_ticks}
);
CREATE TABLE IF NOT EXISTS dead_letters (
    topic       VARCHAR   NOT NULL,
    "partition" INTEGER   NOT NULL,
    "offset"    BIGINT    NOT NULL,
    "key"       BLOB,
    raw         BLOB,
    reason      VARCHAR   NOT NULL,
    received_at TIMESTAMP NOT NULL
    {key_dead}
);
CREATE TABLE IF NOT EXISTS pipeline_metrics (
    run_id             VARCHAR NOT NULL,
    mode               VARCHAR,
    topic              VARCHAR,
    started_at         TIMESTAMP,
    ended_at           TIMESTAMP,
    elapsed_s          DOUBLE,
    messages_processed BIGINT,
    rows_inserted      BIGINT,
    duplicates         BIGINT,
    errors             BIGINT,
    max_event_time     TIMESTAMP,
    throughput_per_s   DOUBLE,
    status             VARCHAR,
    lost_commits       BIGINT,   -- Kafka commits refused: the group had moved on
    conflicts          BIGINT    -- lake commits lost to another writer, then retried
    {key_runs}
);
"""

VIEWS = f"""
CREATE OR REPLACE VIEW market_metrics AS
SELECT {METRICS_SELECT}
FROM market_ticks GROUP BY symbol;
CREATE OR REPLACE VIEW live_ticks AS
SELECT symbol, event_time, price, volume, received_at,
       date_diff('microsecond', event_time, received_at) / 1e6 AS latency_s,
       topic, "partition", "offset"
FROM market_ticks;
"""

#: The file's stream positions (:mod:`marketstream.store.positions`): one row per
#: topic-partition, moved in each batch's transaction. The lake keeps its positions in
#: one table per partition instead (:func:`marketstream.store.lake.fence_table`).
POSITIONS_TABLE = """
CREATE TABLE IF NOT EXISTS stream_positions (
    topic       VARCHAR   NOT NULL,
    "partition" INTEGER   NOT NULL,
    next_offset BIGINT    NOT NULL,   -- the next offset the store expects
    PRIMARY KEY (topic, "partition")
);
"""

#: The DuckDB file's schema: the primary keys are the identity checks
#: (``INSERT OR IGNORE`` skips a tick or dead letter already stored).
SCHEMA = (
    _TABLES.format(
        key_ticks=", PRIMARY KEY (symbol, event_time)",
        key_dead=', PRIMARY KEY (topic, "partition", "offset")',
        key_runs=", PRIMARY KEY (run_id)",
    )
    + POSITIONS_TABLE
    + VIEWS
)

#: DuckLake's schema: the same tables without keys, which DuckLake does not have;
#: :mod:`marketstream.store.lake` checks identity itself (its module docstring says how).
LAKE_SCHEMA = _TABLES.format(key_ticks="", key_dead="", key_runs="") + VIEWS

#: Arrow schema of a tick batch handed to :meth:`TickWriter.write_ticks`.
TICK_BATCH_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("event_time", pa.timestamp("us")),
        ("price", pa.float64()),
        ("volume", pa.int64()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("received_at", pa.timestamp("us")),
    ]
)

DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("key", pa.binary()),
        ("raw", pa.binary()),
        ("reason", pa.string()),
        ("received_at", pa.timestamp("us")),
    ]
)

#: The columns of the ``market_metrics`` view (one row per symbol), in the order the
#: API, the charts and the Voila page show them. The seed README spells them so.
METRIC_COLUMNS = ("symbol", "tickcount", "avgprice", "maxprice", "minprice", "totalvolume")


@dataclass
class RunMetrics:
    """One consumer run, as stored in ``pipeline_metrics`` (the seed's fields plus throughput)."""

    run_id: str
    mode: str
    topic: str
    started_at: datetime
    ended_at: datetime
    elapsed_s: float
    messages_processed: int
    rows_inserted: int
    duplicates: int
    errors: int
    max_event_time: datetime | None
    throughput_per_s: float
    status: str = "ok"
    #: Kafka commits refused because the group had moved the partitions on (each
    #: batch was stored; its new owner's store skips it): many mean a worker stalls.
    lost_commits: int = 0
    #: lake commits lost to another writer of the same partition, then retried
    conflicts: int = 0
    #: Messages the run was to store (the topic's end offsets when it started) that the
    #: store has not reached when it ended: 0 for a batch run that caught up. Reported,
    #: not a ``pipeline_metrics`` column (:data:`RUN_COLUMNS`).
    behind: int = 0


#: The ``pipeline_metrics`` columns: every :class:`RunMetrics` field but ``behind``.
RUN_COLUMNS = tuple(f.name for f in fields(RunMetrics) if f.name != "behind")


#: Columns added to ``pipeline_metrics`` after stores were first written, with their type:
#: :func:`add_run_columns` gives an older store them (its earlier rows read NULL).
ADDED_RUN_COLUMNS = {"lost_commits": "BIGINT", "conflicts": "BIGINT"}


def add_run_columns(con: Any) -> bool:
    """Give an older store's ``pipeline_metrics`` the columns it lacks; True if it did.

    Asked first, not ``ADD COLUMN IF NOT EXISTS`` every time: on the lake each
    ALTER is a catalog snapshot, and every worker opens the store.
    """
    have = {row[0] for row in con.execute("DESCRIBE pipeline_metrics").fetchall()}
    missing = {name: kind for name, kind in ADDED_RUN_COLUMNS.items() if name not in have}
    for name, kind in missing.items():
        con.execute(f"ALTER TABLE pipeline_metrics ADD COLUMN {name} {kind}")
    return bool(missing)


def run_insert(run: RunMetrics, verb: str = "INSERT") -> tuple[str, list[object]]:
    """The statement and parameters that store ``run`` as a ``pipeline_metrics`` row.

    ``verb`` is ``INSERT OR REPLACE`` on the file, whose table has a primary key; the
    lake has none, and a run's id is new there, so a plain insert is its upsert.
    """
    values = {name: getattr(run, name) for name in RUN_COLUMNS}
    marks = ", ".join("?" for _ in values)
    return f"{verb} INTO pipeline_metrics ({', '.join(values)}) VALUES ({marks})", list(
        values.values()
    )
