"""DuckDB: the schema, every SQL statement, and how to read while a writer writes.

This module is the one seam between the pipeline and its store: callers hand
it Arrow/pandas columns and get DataFrames back, never SQL. A scale-out store
(e.g. DuckLake with a Postgres catalog) would replace this module only.

DuckDB allows one writing process *or* many reading ones on a file. The
consumer therefore either holds the file for a whole batch run (nobody reads
then), or, in live mode, opens it per micro-batch and lets go in between;
readers open it read-only and retry briefly when the writer holds the lock
(:func:`read_connection`), so a user never sees a lock error.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from marketstream.errors import StoreUnavailable

#: The ``market_metrics`` view's columns, also what :func:`market_metrics` computes over a
#: time range: one text, so the range's answer and the view's cannot drift apart.
_METRICS_SELECT = """symbol,
       count(*)                  AS tickcount,
       round(avg(price), 4)      AS avgprice,
       max(price)                AS maxprice,
       min(price)                AS minprice,
       sum(volume)               AS totalvolume,
       min(event_time)           AS first_tick,
       max(event_time)           AS last_tick,
       date_diff('millisecond', min(event_time), max(event_time)) / 1000.0
                                 AS session_duration_s"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS market_ticks (
    symbol      VARCHAR   NOT NULL,
    event_time  TIMESTAMP NOT NULL,   -- UTC
    price       DOUBLE    NOT NULL,
    volume      BIGINT    NOT NULL,
    topic       VARCHAR   NOT NULL,
    "partition" INTEGER   NOT NULL,
    "offset"    BIGINT    NOT NULL,
    received_at TIMESTAMP NOT NULL,   -- UTC, when the consumer read it
    PRIMARY KEY (symbol, event_time)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    topic       VARCHAR   NOT NULL,
    "partition" INTEGER   NOT NULL,
    "offset"    BIGINT    NOT NULL,
    "key"       BLOB,
    raw         BLOB,
    reason      VARCHAR   NOT NULL,
    received_at TIMESTAMP NOT NULL,
    PRIMARY KEY (topic, "partition", "offset")
);
CREATE TABLE IF NOT EXISTS pipeline_metrics (
    run_id             VARCHAR PRIMARY KEY,
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
    status             VARCHAR
);
CREATE OR REPLACE VIEW market_metrics AS
SELECT {_METRICS_SELECT}
FROM market_ticks GROUP BY symbol;
CREATE OR REPLACE VIEW live_ticks AS
SELECT symbol, event_time, price, volume, received_at,
       date_diff('microsecond', event_time, received_at) / 1e6 AS latency_s,
       topic, "partition", "offset"
FROM market_ticks;
"""

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

_LOCK_MARKERS = ("could not set lock", "conflicting lock", "database is locked")


#: The columns of the ``market_metrics`` view (one row per symbol), in the order the
#: API, the charts and the Voila page show them. The seed README spells them so.
METRIC_COLUMNS = ("symbol", "tickcount", "avgprice", "maxprice", "minprice", "totalvolume")

#: A store's state as ``stat`` sees it; equal signatures mean equal data.
Signature = tuple[int, int, int, int]


#: The write-ahead log DuckDB keeps beside the database file.
_WAL_SUFFIX = ".wal"

#: The signature of a store that does not exist (yet, or any more).
NO_SIGNATURE: Signature = (0, 0, 0, 0)


def db_files(path: Path) -> tuple[Path, Path]:
    """The files a DuckDB store is made of: the database and its write-ahead log."""
    return path, Path(f"{path}{_WAL_SUFFIX}")


def remove_db(path: Path) -> None:
    """Delete the store's files (for a fresh run); absent files are fine."""
    for file in db_files(path):
        file.unlink(missing_ok=True)


def _stat_pair(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0, 0
    return st.st_size, st.st_mtime_ns


def signature(path: Path) -> Signature:
    """Size and mtime (ns) of the database file and of its WAL ((0, 0) each if absent).

    Why a stat and not a query: readers (the API's cache) must know whether
    anything changed without opening the file, which a live writer may hold;
    this costs ~6 us (the replay cache asks once per request), an open ~5-30 ms.
    """
    db = os.fspath(path)  # strings, not Paths: ~6 us a call instead of ~13 us
    return (*_stat_pair(db), *_stat_pair(db + _WAL_SUFFIX))


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


def _is_lock_error(exc: Exception) -> bool:
    return any(marker in str(exc).lower() for marker in _LOCK_MARKERS)


#: ``observer(connection, path, read_only) -> connection`` (see :func:`observe_connections`).
ConnectionObserver = Callable[[duckdb.DuckDBPyConnection, Path, bool], Any]

_observers: list[ConnectionObserver] = []
_observers_lock = threading.Lock()


@contextmanager
def observe_connections(observer: ConnectionObserver) -> Iterator[None]:
    """While active, every connection the store opens goes through ``observer``.

    The seam for tests that must see how the store talks to DuckDB (read-only
    mode, bound parameters) without patching ``duckdb.connect``. Process-wide,
    not per context: the API cache refreshes on background threads.
    """
    with _observers_lock:
        _observers.append(observer)
    try:
        yield
    finally:
        with _observers_lock:
            _observers.remove(observer)


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), read_only=read_only)
    for observer in tuple(_observers):
        con = observer(con, path, read_only)
    return con


def _connect_with_retry(
    path: Path, *, read_only: bool, timeout_s: float
) -> duckdb.DuckDBPyConnection:
    """Open ``path``, retrying while another process holds the lock, up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        try:
            return _connect(path, read_only)
        except duckdb.Error as exc:
            if not _is_lock_error(exc) or time.monotonic() >= deadline:
                if _is_lock_error(exc):
                    raise StoreUnavailable(
                        f"{path} stayed locked by another writer for {timeout_s:.1f}s; "
                        "stop the other writing process or point MARKET_DB_PATH elsewhere"
                    ) from None
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def init_db(path: Path) -> None:
    """Create the file, tables and views if missing (idempotent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _connect_with_retry(path, read_only=False, timeout_s=30)
    try:
        con.execute(SCHEMA)
    finally:
        con.close()


@contextmanager
def read_connection(path: Path, timeout_s: float = 5.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection that waits (briefly) for a live writer to let go of the file."""
    if not path.exists():
        raise StoreUnavailable(
            f"no database at {path}; run the pipeline first (make demo or marketstream pipeline)"
        )
    con = _connect_with_retry(path, read_only=True, timeout_s=timeout_s)
    try:
        yield con
    finally:
        con.close()


class TickWriter:
    """The single writer of the store.

    ``hold=True`` keeps one connection for the writer's life (fastest: batch
    runs, benchmarks). ``hold=False`` opens the file per call and closes it
    straight after, so readers can get in between micro-batches (live mode).
    """

    def __init__(self, path: Path, *, hold: bool = True, lock_timeout_s: float = 30.0):
        self.path = path
        self.hold = hold
        self.lock_timeout_s = lock_timeout_s
        init_db(path)
        self._con: duckdb.DuckDBPyConnection | None = None
        if hold:
            self._con = _connect_with_retry(path, read_only=False, timeout_s=lock_timeout_s)

    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._con is not None:
            yield self._con
            return
        con = _connect_with_retry(self.path, read_only=False, timeout_s=self.lock_timeout_s)
        try:
            yield con
        finally:
            con.close()

    def write_batch(
        self,
        ticks: pa.Table,
        dead: pa.Table | None = None,
        *,
        before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> int:
        """Insert a batch of ticks (and dead letters) in one transaction; return rows added.

        Rows whose (symbol, event_time) is already stored are skipped, which is
        what makes replays and re-produced files idempotent. ``before_commit``
        runs inside the transaction, rows inserted, just before ``COMMIT``: the
        seam fault-injection tests use to die at exactly that point.
        """
        with self._connection() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                added = 0
                if ticks.num_rows:
                    con.register("tick_batch", ticks)
                    added = con.execute(
                        "INSERT OR IGNORE INTO market_ticks "
                        'SELECT symbol, event_time, price, volume, topic, "partition", '
                        '"offset", received_at FROM tick_batch'
                    ).fetchall()[0][0]
                    con.unregister("tick_batch")
                if dead is not None and dead.num_rows:
                    con.register("dead_batch", dead)
                    con.execute(
                        'INSERT OR IGNORE INTO dead_letters SELECT topic, "partition", '
                        '"offset", "key", raw, reason, received_at FROM dead_batch'
                    ).fetchall()
                    con.unregister("dead_batch")
                if before_commit is not None:
                    before_commit(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return int(added)

    def record_run(self, run: RunMetrics) -> None:
        """Store one row of run metrics."""
        values = asdict(run)
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._connection() as con:
            con.execute(
                f"INSERT OR REPLACE INTO pipeline_metrics ({cols}) VALUES ({marks})",
                list(values.values()),
            ).fetchall()

    def close(self) -> None:
        """Release the file (a checkpoint happens here)."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> TickWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- reads


def _frame(path: Path, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    with read_connection(path) as con:
        return con.execute(sql, list(params)).df()


def tick_count(path: Path) -> int:
    """Rows in ``market_ticks`` (0 when the file does not exist yet)."""
    if not path.exists():
        return 0
    with read_connection(path) as con:
        return int(con.execute("SELECT count(*) FROM market_ticks").fetchall()[0][0])


def ticks(path: Path, symbols: Sequence[str] | None = None) -> pd.DataFrame:
    """All ticks in event-time order, optionally for some symbols only."""
    if symbols:
        marks = ", ".join("?" for _ in symbols)
        return _frame(
            path,
            f"SELECT * FROM market_ticks WHERE symbol IN ({marks}) ORDER BY event_time, symbol",
            list(symbols),
        )
    return _frame(path, "SELECT * FROM market_ticks ORDER BY event_time, symbol")


def _time_range(
    since: datetime | None, until: datetime | None, column: str = "event_time"
) -> tuple[str, list[datetime]]:
    """``AND`` clauses keeping ``column`` in ``(since, until]`` (absent bounds: no clause).

    A time range as Grafana's panels ask for one: ``since`` exclusive, as the API's
    ``since`` always was, ``until`` inclusive, so two adjacent ranges share no tick.
    Only ``column`` (a constant of this module) is SQL text; the instants are bound.
    """
    clauses, params = [], []
    if since is not None:
        clauses.append(f" AND {column} > ?")
        params.append(since)
    if until is not None:
        clauses.append(f" AND {column} <= ?")
        params.append(until)
    return "".join(clauses), params


def market_metrics(
    path: Path, since: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """Per-symbol count/avg/max/min price, volume and session duration, over every tick
    or over the ticks in ``(since, until]`` (a symbol without ticks there has no row)."""
    if since is None and until is None:
        return _frame(path, "SELECT * FROM market_metrics ORDER BY symbol")
    where, params = _time_range(since, until)
    sql = f"SELECT {_METRICS_SELECT} FROM market_ticks WHERE true{where} GROUP BY symbol"
    return _frame(path, f"{sql} ORDER BY symbol", params)


def pipeline_runs(
    path: Path, limit: int = 50, since: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """The newest consumer runs first; with ``since``/``until``, those that ran during
    ``(since, until]`` (started by ``until`` and not ended by ``since``)."""
    where, params = _time_range(since, None, "coalesce(ended_at, started_at)")
    if until is not None:
        where += " AND started_at <= ?"
        params.append(until)
    return _frame(
        path,
        f"SELECT * FROM pipeline_metrics WHERE true{where} ORDER BY started_at DESC LIMIT ?",
        [*params, limit],
    )


def dead_letters(path: Path, limit: int = 100) -> pd.DataFrame:
    """The newest dead letters, with the reason each was rejected."""
    return _frame(
        path,
        'SELECT * FROM dead_letters ORDER BY received_at DESC, "offset" DESC LIMIT ?',
        [limit],
    )


_LIVE_SQL = """
    WITH recent AS (
        SELECT date_trunc('second', event_time) AS time, symbol,
               arg_max(price, event_time) AS price, sum(volume) AS volume
        FROM market_ticks
        WHERE event_time > coalesce(?::TIMESTAMP, TIMESTAMP '1970-01-01')
          AND event_time <= coalesce(?::TIMESTAMP, TIMESTAMP 'infinity')
          AND event_time >= coalesce(?::TIMESTAMP, TIMESTAMP '1970-01-01')
        GROUP BY ALL
    ),
    times AS (SELECT DISTINCT time FROM recent ORDER BY time DESC LIMIT ?)
    SELECT r.* FROM recent r JOIN times USING (time) ORDER BY time, symbol
"""


_SECONDS_SQL = """
    SELECT count(DISTINCT date_trunc('second', event_time)) FROM market_ticks
    WHERE event_time >= ? AND event_time > coalesce(?::TIMESTAMP, TIMESTAMP '1970-01-01')
      AND event_time <= coalesce(?::TIMESTAMP, TIMESTAMP 'infinity')
"""
_BEFORE_SQL = """
    SELECT max(event_time) FROM market_ticks
    WHERE event_time < ? AND event_time > coalesce(?::TIMESTAMP, TIMESTAMP '1970-01-01')
"""
_NEWEST_BY_SQL = "SELECT max(event_time) FROM market_ticks WHERE event_time <= ?"
#: Windows tried before /live groups the whole table (data with many long gaps).
_LIVE_WINDOW_STEPS = 8


def live_wide(
    path: Path,
    limit: int = 300,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Recent ticks per second as a wide frame: ``time``, one price and one
    ``<SYMBOL>volume`` column per symbol present (last price, summed volume);
    the newest ``limit`` seconds with ticks in ``(since, until]``.

    Grouping the whole table costs 100+ ms at a million ticks, so the answer
    is looked for in time windows that DuckDB reads from a few row groups (its
    min/max zone maps skip the rest): the last ``limit`` seconds first; if they
    hold fewer seconds with ticks, the window extends down from the newest
    tick before it (a live stream started on an older store has a gap there),
    a few times at most before grouping everything. Same answer, ~5 ms.
    An ``until`` before the newest tick (a Grafana range in the past) moves the
    first window's end down to the newest tick at or before it.
    """
    with read_connection(path) as con:
        newest = con.execute("SELECT max(event_time) FROM market_ticks").fetchall()[0][0]
        if newest is not None and until is not None and newest > until:
            newest = con.execute(_NEWEST_BY_SQL, [until]).fetchall()[0][0]
        if newest is None or (since is not None and newest <= since):
            return pivot_wide(pd.DataFrame())
        start: datetime | None = newest.replace(microsecond=0) - timedelta(seconds=limit - 1)
        seconds = con.execute(_SECONDS_SQL, [start, since, until]).fetchall()[0][0]
        for _ in range(_LIVE_WINDOW_STEPS):
            if seconds >= limit:
                break
            before = con.execute(_BEFORE_SQL, [start, since]).fetchall()[0][0]
            if before is None:  # nothing older (after `since`): the window holds it all
                break
            start = before.replace(microsecond=0) - timedelta(seconds=limit - seconds - 1)
            seconds = con.execute(_SECONDS_SQL, [start, since, until]).fetchall()[0][0]
        else:
            if seconds < limit:
                start = None  # sparse data: group everything
        long = con.execute(_LIVE_SQL, [since, until, start, limit]).df()
    return pivot_wide(long)


def pivot_wide(long: pd.DataFrame, volume_suffix: str = "volume") -> pd.DataFrame:
    """Long (time, symbol, price, volume) rows to the seed's wide ``/live`` shape:
    ``time``, a price column per symbol, then ``<SYMBOL><volume_suffix>`` columns."""
    if long.empty:
        return pd.DataFrame({"time": pd.Series(dtype="datetime64[us]")})
    prices = long.pivot(index="time", columns="symbol", values="price")
    volumes = long.pivot(index="time", columns="symbol", values="volume")
    volumes.columns = [f"{c}{volume_suffix}" for c in volumes.columns]
    wide = pd.concat([prices, volumes], axis=1).reset_index()
    wide.columns.name = None
    return wide


def candles(
    path: Path,
    symbol: str,
    interval_s: int,
    limit: int = 500,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """OHLCV bars with VWAP for one symbol, computed in DuckDB, from the ticks in
    ``(since, until]`` (a bar cut by a bound covers its ticks inside only)."""
    where, params = _time_range(since, until)
    sql = f"""
        SELECT time_bucket(to_seconds(?), event_time) AS time,
               arg_min(price, event_time) AS open,
               max(price) AS high,
               min(price) AS low,
               arg_max(price, event_time) AS close,
               sum(volume) AS volume,
               sum(price * volume) / nullif(sum(volume), 0) AS vwap,
               count(*) AS ticks
        FROM market_ticks WHERE symbol = ?{where}
        GROUP BY 1 ORDER BY 1 DESC LIMIT ?
    """
    frame = _frame(path, sql, [interval_s, symbol, *params, limit])
    return frame.sort_values("time").reset_index(drop=True)


# --------------------------------------------------------------- the original kit's shapes

#: ``/v0/metrics``: the original kit's per-symbol statistics, its names and its rounding
#: (prices to 2 decimals), so dashboards saved against that kit read them unchanged.
_V0_METRICS_SQL = """
    SELECT symbol,
           count(*)               AS tick_count,
           round(avg(price), 2)   AS avg_price,
           round(max(price), 2)   AS max_price,
           round(min(price), 2)   AS min_price
    FROM market_ticks GROUP BY symbol ORDER BY symbol
"""

#: Seconds in which every symbol of the store ticked (``/v0/live``, which puts the newest first).
_V0_LIVE_SQL = """
    WITH per_second AS (
        SELECT date_trunc('second', event_time) AS time, symbol,
               arg_max(price, event_time) AS price, sum(volume) AS volume
        FROM market_ticks
        WHERE event_time >= coalesce(?::TIMESTAMP, TIMESTAMP '1970-01-01')
        GROUP BY ALL
    ),
    complete AS (
        SELECT time FROM per_second GROUP BY time HAVING count(*) = ?
        ORDER BY time DESC LIMIT ?
    )
    SELECT p.* FROM per_second p JOIN complete USING (time) ORDER BY time, symbol
"""


def metrics_v0(path: Path) -> pd.DataFrame:
    """Per symbol ``tick_count``, ``avg_price``, ``max_price``, ``min_price`` (2 decimals)."""
    return _frame(path, _V0_METRICS_SQL)


def live_v0(path: Path, limit: int = 50) -> pd.DataFrame:
    """The original kit's ``/live``: the newest ``limit`` seconds in which every symbol of
    the store ticked, newest first, as ``time``, ``<SYMBOL>`` and ``<SYMBOL>_volume``.

    The original grouped by exact timestamp, which only ever matched because its
    generator stamped all symbols alike; live mode stamps each tick when it is made,
    so a second is the grain here, as for :func:`live_wide`. The newest
    ``2 * limit`` seconds are read first (a live stream fills them), the whole
    table only if they hold fewer complete seconds.
    """
    with read_connection(path) as con:
        row = con.execute(
            "SELECT max(event_time), count(DISTINCT symbol) FROM market_ticks"
        ).fetchall()[0]
        newest, symbols = row
        if newest is None:
            return pivot_wide(pd.DataFrame(), "_volume")
        start: datetime | None = newest.replace(microsecond=0) - timedelta(seconds=2 * limit)
        long = con.execute(_V0_LIVE_SQL, [start, symbols, limit]).df()
        if long["time"].nunique() < limit:
            long = con.execute(_V0_LIVE_SQL, [None, symbols, limit]).df()
    wide = pivot_wide(long, "_volume")
    return wide.iloc[::-1].reset_index(drop=True)


def symbols_present(path: Path) -> list[str]:
    """The symbols that have at least one tick."""
    with read_connection(path) as con:
        return [r[0] for r in con.execute("SELECT DISTINCT symbol FROM market_ticks ORDER BY 1")]


#: ``ingest_rate_per_s`` counts the ticks stored over this many seconds.
INGEST_WINDOW_S = 10


@dataclass(frozen=True)
class HealthSnapshot:
    """What ``/runs`` and ``/health`` report, as read from the store at one moment.

    Freshness and the ingest rate depend on the clock as well as on the data,
    so they are derived by :meth:`at`: a snapshot kept while the store is
    unchanged (the API's cache) still gives the right figures later, e.g. an
    ingest rate falling to 0 once the consumer stops writing.
    """

    ticks: int
    newest_event_time: datetime | None
    dead_letters: int
    errors: int
    throughput_per_s: float | None
    #: (received_at, ticks) per write in the last ``INGEST_WINDOW_S`` before the read
    recent_writes: tuple[tuple[datetime, int], ...]

    def at(self, now: datetime) -> dict[str, Any]:
        """The report as of ``now`` (naive UTC)."""
        since = now - timedelta(seconds=INGEST_WINDOW_S)
        recent = sum(n for received, n in self.recent_writes if received > since)
        newest = self.newest_event_time
        return {
            "ticks": self.ticks,
            "newest_event_time": newest,
            "dead_letters": self.dead_letters,
            "errors": self.errors,
            "throughput_per_s": self.throughput_per_s,
            "ingest_rate_per_s": recent / INGEST_WINDOW_S,
            "freshness_s": (now - newest).total_seconds() if newest is not None else None,
        }


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def health_snapshot(path: Path) -> HealthSnapshot:
    """Counts, the newest event, the newest finished run's throughput and recent writes.

    Two throughputs, because a run's row is written when it ends: the newest
    finished run's ``throughput_per_s``, and the ingest rate, ticks stored (by
    ``received_at``) over the last ``INGEST_WINDOW_S`` seconds, which is what a
    live dashboard wants while a consumer is running.
    """
    with read_connection(path) as con:
        row = con.execute(
            """
            SELECT (SELECT count(*) FROM market_ticks),
                   (SELECT max(event_time) FROM market_ticks),
                   (SELECT count(*) FROM dead_letters),
                   (SELECT coalesce(sum(errors), 0) FROM pipeline_metrics),
                   (SELECT throughput_per_s FROM pipeline_metrics
                      ORDER BY started_at DESC LIMIT 1)
            """
        ).fetchall()[0]
        recent = con.execute(
            "SELECT received_at, count(*) FROM market_ticks WHERE received_at > ? "
            "GROUP BY received_at",
            [_utc_now() - timedelta(seconds=INGEST_WINDOW_S)],
        ).fetchall()
    ticks_n, newest, dead_n, errors, throughput = row
    return HealthSnapshot(
        ticks=int(ticks_n),
        newest_event_time=newest,
        dead_letters=int(dead_n),
        errors=int(errors),
        throughput_per_s=throughput,
        recent_writes=tuple((received, int(n)) for received, n in recent),
    )


def health(path: Path) -> dict[str, Any]:
    """Freshness, counts and throughputs now, for ``/health``, the Voila page and tests."""
    return health_snapshot(path).at(_utc_now())
