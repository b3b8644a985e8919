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
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from marketstream.errors import StoreUnavailable
from marketstream.store.backend import Signature
from marketstream.store.failures import cause
from marketstream.store.positions import Positions, as_key, resume_points
from marketstream.store.schema import SCHEMA, RunMetrics, add_run_columns, run_insert

T = TypeVar("T")

_LOCK_MARKERS = ("could not set lock", "conflicting lock", "database is locked")


#: A batch moves its partitions' positions forward, never back: a zombie's late batch
#: must not undo its successor's progress. Only :meth:`FileBackend.set_positions` (the
#: user's ``marketstream positions --set``) moves one back. A partition's first
#: position is inserted (:data:`_MOVE_POSITIONS`); after that one ``UPDATE`` moves all
#: of a batch's partitions (:func:`_update_positions`), because the upsert costs
#: ~1.4 ms a batch where the update costs ~0.45 ms (measured on this 2-core machine).
_MOVE_POSITIONS = """
    INSERT INTO stream_positions VALUES {rows}
    ON CONFLICT (topic, "partition")
    DO UPDATE SET next_offset = greatest(next_offset, excluded.next_offset)
"""

_UPDATE_POSITIONS = """
    UPDATE stream_positions
    SET next_offset = greatest(next_offset, CASE "partition" {cases} END)
    WHERE topic = ? AND "partition" IN ({marks})
"""

_SET_POSITIONS = """
    INSERT INTO stream_positions VALUES {rows}
    ON CONFLICT (topic, "partition") DO UPDATE SET next_offset = excluded.next_offset
"""


def stored_positions(con: duckdb.DuckDBPyConnection) -> Positions:
    """Every row of ``stream_positions`` (none in a file an older kit wrote, opened
    read-only before a writer added the table)."""
    try:
        rows = con.execute(
            'SELECT topic, "partition", next_offset FROM stream_positions'
        ).fetchall()
    except duckdb.CatalogException:
        return {}
    return {(str(t), int(p)): int(o) for t, p, o in rows}


def _update_positions(con: duckdb.DuckDBPyConnection, topic: str, moves: dict[int, int]) -> None:
    """Move existing positions of one topic forward, in one statement."""
    cases = " ".join("WHEN ? THEN ?" for _ in moves)
    marks = ", ".join("?" for _ in moves)
    params: list[object] = [x for pair in moves.items() for x in pair]
    params += [topic, *moves]
    con.execute(_UPDATE_POSITIONS.format(cases=cases, marks=marks), params).fetchall()


def _upsert_positions(con: duckdb.DuckDBPyConnection, sql: str, positions: Mapping) -> None:
    if not positions:
        return
    params: list[object] = []
    for tp, offset in positions.items():
        params.extend((*as_key(tp), int(offset)))
    rows = ", ".join("(?, ?, ?)" for _ in positions)
    con.execute(sql.format(rows=rows), params).fetchall()


#: DuckDB threads of a held writer (a batch run, the workers' writer process). Its
#: batches are small appends that one thread does as fast, and a second one only
#: takes CPU from kafka-python's parser on the next core: consume, 300,000 ticks,
#: interleaved 3 times in one run: 10.6-10.7 us of CPU a tick against 11.2-12.0
#: with DuckDB's default (2 here), the rate the same within noise (0.86/0.85/0.42x
#: the ceiling against 0.88/0.81/0.41x; load average 8.5-11 from other work). The
#: workers' writer process (:mod:`.relay`) holds its file too and gets the same; it
#: was not measured there on its own (an earlier prototype of such a process did
#: better with one thread: bench/README.md, "Consumer").
HELD_THREADS = 1

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


#: Live mode leaves the DuckDB file free for at least this long after each write.
#: Every write opens the file, inserts and closes it (~15 ms for 100 ticks, see
#: ``_attach``), and readers (API, Voila, notebooks) can only open it in
#: between: writing after every poll kept the file locked nearly all the time at
#: 1,000 ticks/s, readers queued, and freshness suffered. Records polled meanwhile
#: join the next write. It was 0.1 s while a write took ~50 ms (the file free ~68 %
#: of the time); at 0.05 s and ~15 ms it is free ~77 %, and the bench's freshness
#: p99 at 1,000 ticks/s went from 0.27-0.30 s (0.1 s, three runs) to 0.20-0.30 s
#: (0.05 s, six runs; the same sitting, with and without a 5 ms linger or a 10 ms
#: retry cap for readers, neither of which helped beyond noise).
LIVE_WRITE_GAP_S = 0.05

#: The name the store file is attached under in a host (:func:`_attach`).
_ALIAS = "marketstream_store"

#: Each thread's idle hosts: in-memory DuckDB instances the file is attached to per use.
_hosts = threading.local()


def _host() -> duckdb.DuckDBPyConnection:
    """An idle in-memory DuckDB of this thread's, or a new one (one per nested use)."""
    free: list[duckdb.DuckDBPyConnection] = _hosts.__dict__.setdefault("free", [])
    return free.pop() if free else duckdb.connect(":memory:")


def _attach(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """The file ``ATTACH``-ed to a host and made its default catalog (``USE``).

    Why not ``duckdb.connect(path)``: every new DuckDB instance costs ~14 ms before
    it reads a byte (its catalog of built-in functions), an ``ATTACH`` to a kept
    instance ~1.5 ms, and ``DETACH`` lets go of the file's lock as ``close`` does.
    Measured on this 2-core machine, a live write of 105 ticks: open 10 + insert 11
    + close 27 ms by ``connect``, 1.6 + 5.4 + 11.5 ms by ``ATTACH``; a reader's open,
    count and close 14 ms against 1.1 ms. Live mode opens the file per micro-batch
    and every reader (API, Voila, bench) per read, so this is the time the file is
    locked and the time a tick takes to become visible.
    """
    host = _host()
    mode = " (READ_ONLY)" if read_only else ""
    target = str(path).replace("'", "''")
    try:
        host.execute(f"ATTACH '{target}' AS {_ALIAS}{mode}")
        host.execute(f"USE {_ALIAS}")
    except BaseException:
        _release(host)
        raise
    return host


def _release(host: duckdb.DuckDBPyConnection) -> None:
    """Detach the file (its lock goes with it) and keep the host for this thread's next
    use; a host that cannot detach (a transaction left open by an error) is closed."""
    try:
        host.execute("USE memory")
        host.execute(f"DETACH DATABASE IF EXISTS {_ALIAS}")
    except duckdb.Error:
        host.close()
        return
    _hosts.__dict__.setdefault("free", []).append(host)


def _observed(con: duckdb.DuckDBPyConnection, path: Path, read_only: bool) -> Any:
    for observer in tuple(_observers):
        con = observer(con, path, read_only)
    return con


def _with_retry(open_file: Callable[[], T], path: Path, timeout_s: float) -> T:
    """``open_file()``, again while another process holds the file's lock, up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        try:
            return open_file()
        except duckdb.Error as exc:
            if not _is_lock_error(exc) or time.monotonic() >= deadline:
                if _is_lock_error(exc):  # named: which program, which PID
                    held = cause(" ".join(str(exc).split()), path) or f"{path} is locked"
                    raise StoreUnavailable(f"{held} (waited {timeout_s:g} s)") from None
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


@contextmanager
def _opened(path: Path, *, read_only: bool, timeout_s: float) -> Iterator[Any]:
    """The file attached for one use (:func:`_attach`), let go of at the end."""
    host = _with_retry(lambda: _attach(path, read_only), path, timeout_s)
    try:
        yield _observed(host, path, read_only)
    finally:
        _release(host)


def _held(path: Path, timeout_s: float) -> Any:
    """A connection of its own on the file, for a writer that holds it for its life."""
    con = _with_retry(lambda: duckdb.connect(str(path)), path, timeout_s)
    return _observed(con, path, False)


def init_db(path: Path) -> None:
    """Create the file, tables and views if missing (idempotent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _opened(path, read_only=False, timeout_s=30) as con:
        con.execute(SCHEMA)
        add_run_columns(con)  # a file made by an earlier kit


@contextmanager
def read_connection(path: Path, timeout_s: float = 5.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection that waits (briefly) for a live writer to let go of the file."""
    if not path.exists():
        raise StoreUnavailable(
            f"no database at {path}; run the pipeline first (make demo or marketstream pipeline)"
        )
    with _opened(path, read_only=True, timeout_s=timeout_s) as con:
        yield con


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
        #: a file has one writer: no other commits to lose to
        self.conflicts = 0
        init_db(path)
        self._con: duckdb.DuckDBPyConnection | None = None
        #: A second connection on the held file, for :meth:`positions`: the rebalance
        #: listener reads there while the writer thread may be inside a transaction.
        self._reader: duckdb.DuckDBPyConnection | None = None
        self._reader_lock = threading.Lock()
        if hold:
            self._con = _held(path, lock_timeout_s)
            self._con.execute(f"SET threads = {HELD_THREADS}")
            self._reader = self._con.cursor()
        #: partitions known to have a row in ``stream_positions`` (rows are never deleted
        #: while a writer lives), so a batch updates them rather than upserts
        with self._connection() as con:
            self._positioned: set[tuple[str, int]] = set(stored_positions(con))

    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._con is not None:
            yield self._con
            return
        with _opened(self.path, read_only=False, timeout_s=self.lock_timeout_s) as con:
            yield con

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
        (each partition's next offset) moves ``stream_positions`` in the same
        transaction, also for a batch of only duplicates or dead letters.
        """
        with self._connection() as con:
            try:
                added, new = self._transaction(con, ticks, dead, offsets, before_commit, True)
            except duckdb.ConstraintException:  # a key already stored: the careful way
                added, new = self._transaction(con, ticks, dead, offsets, before_commit, False)
        self._positioned |= new  # only once committed: a rolled-back insert made no row
        return int(added)

    def _transaction(
        self,
        con: duckdb.DuckDBPyConnection,
        ticks: pa.Table,
        dead: pa.Table | None,
        offsets: Mapping | None,
        before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None,
        optimistic: bool,
    ) -> tuple[int, set[tuple[str, int]]]:
        """One batch's transaction (see :meth:`write_batch`); (rows added, partitions
        whose first position it inserted).

        ``optimistic``: a plain ``INSERT``, which raises ``ConstraintException`` (the
        transaction rolled back) if any key is already stored or twice in the batch;
        the caller then runs it again with ``INSERT OR IGNORE``. Why: nearly every batch
        is all new (duplicates come only with a replay after a crash, or ticks produced
        twice), and the plain insert costs 1.8 us a row where ``OR IGNORE`` costs 4.3
        (300,000 rows in 5,000-row batches into a fresh file, this 2-core machine; an
        anti-join against the table 2.3 us, and it still needs ``OR IGNORE`` for keys
        twice in one batch).
        """
        con.execute("BEGIN TRANSACTION")
        try:
            added = 0
            if ticks.num_rows:
                con.register("tick_batch", ticks)
                verb = "INSERT" if optimistic else "INSERT OR IGNORE"
                added = con.execute(
                    f"{verb} INTO market_ticks "
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
            new = self._move_positions(con, offsets or {})
            if before_commit is not None:
                before_commit(con)
            con.execute("COMMIT")
        except BaseException:
            with suppress(duckdb.Error):  # the original error is the one to see
                con.execute("ROLLBACK")
            with suppress(duckdb.Error):
                con.unregister("tick_batch")
            raise
        return int(added), new

    def _move_positions(
        self, con: duckdb.DuckDBPyConnection, offsets: Mapping
    ) -> set[tuple[str, int]]:
        """Move the batch's positions; the partitions whose first row this inserted."""
        moves = {as_key(tp): int(o) for tp, o in offsets.items()}
        new = {tp: o for tp, o in moves.items() if tp not in self._positioned}
        _upsert_positions(con, _MOVE_POSITIONS, new)
        by_topic: dict[str, dict[int, int]] = {}
        for (topic, partition), offset in moves.items():
            if (topic, partition) not in new:
                by_topic.setdefault(topic, {})[partition] = offset
        for topic, moved in by_topic.items():
            _update_positions(con, topic, moved)
        return set(new)

    def positions(self, partitions: Iterable[Any]) -> dict[tuple[str, int], int | None]:
        """Where each partition resumes (:func:`.positions.resume_points`)."""
        with self._reader_lock:
            if self._reader is not None:
                return resume_points(self._reader, stored_positions, partitions)
            with self._connection() as con:
                return resume_points(con, stored_positions, partitions)

    def record_run(self, run: RunMetrics) -> None:
        """Store one row of run metrics."""
        sql, params = run_insert(run, "INSERT OR REPLACE")
        with self._connection() as con:
            con.execute(sql, params).fetchall()

    def close(self) -> None:
        """Release the file (a checkpoint happens here)."""
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileBackend:
    """The DuckDB file as a :class:`~marketstream.store.backend.Backend`."""

    name = "duckdb"
    live_write_gap_s = LIVE_WRITE_GAP_S

    def describe(self, at: Path) -> str:
        return str(at)

    def init(self, at: Path) -> None:
        init_db(at)

    def exists(self, at: Path) -> bool:
        return at.exists()

    def read_connection(self, at: Path, timeout_s: float) -> Any:
        return read_connection(at, timeout_s=timeout_s)

    def signature(self, at: Path) -> Signature:
        return signature(at)

    def open_writer(self, at: Path, *, hold: bool) -> Any:
        # Imported here, not above: ``python -m marketstream.store.relay`` must find the
        # module not yet imported by this package (runpy warns otherwise).
        from marketstream.store import relay

        address = os.environ.get(relay.ADDRESS_ENV)
        if address:  # a worker among several: the writer process holds the file
            return relay.RelayWriter(address, os.environ.get(relay.KEY_ENV, ""))
        return FileWriter(at, hold=hold)

    def remove(self, at: Path) -> None:
        remove_db(at)

    def stored_positions(self, con: duckdb.DuckDBPyConnection) -> Positions:
        return stored_positions(con)

    def set_positions(self, at: Path, positions: Positions) -> None:
        init_db(at)
        with _opened(at, read_only=False, timeout_s=30) as con:
            _upsert_positions(con, _SET_POSITIONS, positions)

    def extra_stats(self, con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        return {}


BACKEND = FileBackend()
