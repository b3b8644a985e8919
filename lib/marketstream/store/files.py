"""The DuckDB-file backend: one file, one writing process at a time, readers in between.

DuckDB allows one writing process *or* many reading ones on a file. The
consumer therefore either holds the file for a whole batch run (nobody reads
then), or, in live mode, opens it per micro-batch and lets go in between;
readers open it read-only and retry briefly when the writer holds the lock
(:func:`read_connection`), so a user never sees a lock error. Several consumer
workers share the file through one writer process (:mod:`.relay`), which is
the file's only writer.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from marketstream.errors import StoreUnavailable
from marketstream.store.schema import SCHEMA, RunMetrics, run_insert

_LOCK_MARKERS = ("could not set lock", "conflicting lock", "database is locked")

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


class FileWriter:
    """The writer of a DuckDB file (one process at a time: the file's lock says so).

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
        offsets: Mapping[tuple[str, int], int] | None = None,
        before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> int:
        """Insert a batch of ticks (and dead letters) in one transaction; return rows added.

        Rows whose (symbol, event_time) is already stored are skipped, which is
        what makes replays and re-produced files idempotent. ``before_commit``
        runs inside the transaction, rows inserted, just before ``COMMIT``: the
        seam fault-injection tests use to die at exactly that point. ``offsets``
        (each partition's next offset) is not needed here: the primary keys make a
        replayed record a no-op, whichever process replays it.
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
        sql, params = run_insert(run, "INSERT OR REPLACE")
        with self._connection() as con:
            con.execute(sql, params).fetchall()

    def close(self) -> None:
        """Release the file (a checkpoint happens here)."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
