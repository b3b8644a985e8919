"""Every read of the store, the same SQL for both backends.

Readers never see a half-written batch and never make a writer wait: the
DuckDB file is opened read-only between the writer's batches
(:func:`marketstream.store.files.read_connection`), the lake is read at its
newest committed snapshot (:func:`marketstream.store.lake.read_connection`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from marketstream.store.positions import with_implied
from marketstream.store.schema import METRICS_SELECT
from marketstream.store.where import Where, backend, exists, read_connection


def _frame(at: Where, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    with read_connection(at) as con:
        return con.execute(sql, list(params)).df()


def tick_count(at: Where) -> int:
    """Rows in ``market_ticks`` (0 when the store does not exist yet)."""
    if not exists(at):
        return 0
    with read_connection(at) as con:
        return int(con.execute("SELECT count(*) FROM market_ticks").fetchall()[0][0])


_STORED_OFFSETS_SQL = """
    SELECT "partition", "offset" FROM market_ticks WHERE topic = ?
    UNION ALL
    SELECT "partition", "offset" FROM dead_letters WHERE topic = ?
"""


def stored_offsets(at: Where, topic: str) -> list[tuple[int, int]]:
    """Every ``(partition, offset)`` row the store holds from ``topic`` (ticks and dead
    letters; an offset stored twice appears twice): what a reconcile with Kafka counts."""
    with read_connection(at) as con:
        rows = con.execute(_STORED_OFFSETS_SQL, [topic, topic]).fetchall()
    return [(int(p), int(o)) for p, o in rows]


def partition_positions(at: Where) -> dict[tuple[str, int], tuple[int | None, datetime | None]]:
    """Per stored (topic, partition): the store's position (or, in a store an older kit
    wrote, its highest offset + 1) and the event time of its newest tick."""
    if not exists(at):
        return {}
    with read_connection(at) as con:
        positions = with_implied(con, backend(at).stored_positions(con))
        newest = con.execute(
            'SELECT topic, "partition", max(event_time) FROM market_ticks GROUP BY ALL'
        ).fetchall()
    out: dict[tuple[str, int], tuple[int | None, datetime | None]] = {
        key: (offset, None) for key, offset in positions.items()
    }
    for topic, partition, when in newest:
        key = (str(topic), int(partition))
        out[key] = (out.get(key, (None, None))[0], when)
    return out


def ticks(at: Where, symbols: Sequence[str] | None = None) -> pd.DataFrame:
    """All ticks in event-time order, optionally for some symbols only."""
    if symbols:
        marks = ", ".join("?" for _ in symbols)
        return _frame(
            at,
            f"SELECT * FROM market_ticks WHERE symbol IN ({marks}) ORDER BY event_time, symbol",
            list(symbols),
        )
    return _frame(at, "SELECT * FROM market_ticks ORDER BY event_time, symbol")


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
    at: Where, since: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """Per-symbol count/avg/max/min price, volume and session duration, over every tick
    or over the ticks in ``(since, until]`` (a symbol without ticks there has no row)."""
    if since is None and until is None:
        return _frame(at, "SELECT * FROM market_metrics ORDER BY symbol")
    where, params = _time_range(since, until)
    sql = f"SELECT {METRICS_SELECT} FROM market_ticks WHERE true{where} GROUP BY symbol"
    return _frame(at, f"{sql} ORDER BY symbol", params)


def pipeline_runs(
    at: Where, limit: int = 50, since: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """The newest consumer runs first; with ``since``/``until``, those that ran during
    ``(since, until]`` (started by ``until`` and not ended by ``since``)."""
    where, params = _time_range(since, None, "coalesce(ended_at, started_at)")
    if until is not None:
        where += " AND started_at <= ?"
        params.append(until)
    return _frame(
        at,
        f"SELECT * FROM pipeline_metrics WHERE true{where} ORDER BY started_at DESC LIMIT ?",
        [*params, limit],
    )


def dead_letters(at: Where, limit: int = 100) -> pd.DataFrame:
    """The newest dead letters, with the reason each was rejected."""
    return _frame(
        at,
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
    at: Where,
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
    with read_connection(at) as con:
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
    at: Where,
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
    frame = _frame(at, sql, [interval_s, symbol, *params, limit])
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


def metrics_v0(at: Where) -> pd.DataFrame:
    """Per symbol ``tick_count``, ``avg_price``, ``max_price``, ``min_price`` (2 decimals)."""
    return _frame(at, _V0_METRICS_SQL)


def live_v0(at: Where, limit: int = 50) -> pd.DataFrame:
    """The original kit's ``/live``: the newest ``limit`` seconds in which every symbol of
    the store ticked, newest first, as ``time``, ``<SYMBOL>`` and ``<SYMBOL>_volume``.

    The original grouped by exact timestamp, which only ever matched because its
    generator stamped all symbols alike; live mode stamps each tick when it is made,
    so a second is the grain here, as for :func:`live_wide`. The newest
    ``2 * limit`` seconds are read first (a live stream fills them), the whole
    table only if they hold fewer complete seconds.
    """
    with read_connection(at) as con:
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


def symbols_present(at: Where) -> list[str]:
    """The symbols that have at least one tick."""
    with read_connection(at) as con:
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


def health_snapshot(at: Where) -> HealthSnapshot:
    """Counts, the newest event, the newest finished run's throughput and recent writes.

    Two throughputs, because a run's row is written when it ends: the newest
    finished run's ``throughput_per_s``, and the ingest rate, ticks stored (by
    ``received_at``) over the last ``INGEST_WINDOW_S`` seconds, which is what a
    live dashboard wants while a consumer is running.
    """
    with read_connection(at) as con:
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


def health(at: Where) -> dict[str, Any]:
    """Freshness, counts and throughputs now, for ``/health``, the Voila page and tests."""
    return health_snapshot(at).at(_utc_now())
