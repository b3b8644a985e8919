"""The DuckLake backend: Parquet data files plus a catalog in PostgreSQL, many writers at once.

Why DuckLake: one DuckDB file allows one writing process. A lake's catalog is
a database (PostgreSQL), and each writer commits its own transactions to it:
in a probe here 2-3 processes inserting 5,000-row batches together stored
91-160k rows/s with exact counts, DuckLake retrying its own snapshot-id
conflicts (34-38 of them) without the application seeing one. A SQLite
catalog is allowed for one machine, but two writers there fail with
``database is locked``, which DuckLake does not retry (20-43k rows/s, one
writer at a time); a DuckDB-file catalog is one process only.

**Positions.** The lake's stream positions (:mod:`marketstream.store.positions`)
are its partition fences below: one mechanism, which both resumes a consumer
and stops a replay.

**Identity without keys.** A lake has no primary keys, so the file's
``INSERT OR IGNORE`` has no equivalent. Two rules take its place:

* *The partition fence.* Each topic-partition has a one-row table holding the
  next offset the store expects from it (:func:`fence_table`). A batch's
  transaction reads the fences of its partitions, drops every record below
  them (a replay, or a zombie worker's batch), inserts the rest and moves the
  fences on. Two transactions writing the same partition both change its
  fence, and DuckLake refuses the second commit ("Transaction conflict"):
  that one rolls back, reads the fence again and finds its records already
  there. So a worker that stalled past its session timeout and wakes up with
  a batch its successor has already stored adds nothing (tests/integration/
  lake/test_workers.py stops one with SIGSTOP to show it). One table per
  partition, not one table for all: DuckLake detects conflicts per table, so
  a shared table would make every two workers' commits collide (measured:
  updating two different rows of one table conflicts).
* *The tick identity* ``(symbol, event_time)``: a batch is inserted with an
  anti-join against the ticks already stored for its symbols in its event-time
  range (both let DuckLake skip every Parquet file outside them by its min/max
  statistics: with the spread partitioner a batch file holds one symbol), so a
  re-produced file adds nothing either. Two workers can only
  race on this check for a symbol written to two partitions (a producer with
  another partitioner; README, "Scale-out").

**Extensions** come from PyPI wheels (``duckdb-extension-ducklake``,
``-postgres``, ``-sqlite``, and ``-httpfs`` for a data path on ``s3://``), which
exist for duckdb 1.5.5 only; nothing is downloaded at run time.
:func:`install_extensions` copies them once into the kit's extension folder
(under a file lock, so concurrent first runs do not collide); connections only
``LOAD`` them, with auto-install and auto-load off.

**Object storage.** A data path ``s3://bucket/prefix/`` is read and written
through httpfs with the S3 access the lake carries (:class:`S3Access`: the
kit's own store, :mod:`marketstream.objectstore`, or the user's endpoint and
keys). Each connection gets it as a temporary DuckDB secret before ``ATTACH``
(temporary: never written to ``~/.duckdb/stored_secrets``), scoped to the
bucket. The keys are never shown: :class:`S3Access`' repr masks them, and
every error line about the lake is redacted with them
(:attr:`Lake.secret_values`), since DuckDB echoes a failing statement.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from marketstream.errors import StoreUnavailable
from marketstream.redact import MASK, redact
from marketstream.settings import home
from marketstream.store.positions import Positions, resume_points
from marketstream.store.schema import LAKE_SCHEMA, RunMetrics, add_run_columns, run_insert

#: The catalog's name inside each DuckDB connection.
ALIAS = "lake"

#: wheel package suffix -> the name DuckDB loads it by
_EXTENSIONS = {"ducklake": "ducklake", "postgres": "postgres_scanner", "sqlite": "sqlite_scanner"}
#: Needed only for a data path on object storage (``s3://``): its wheel may be absent.
_OBJECT_STORE_EXTENSIONS = {"httpfs": "httpfs"}
#: The DuckDB secret each connection creates for the lake's object store.
S3_SECRET_NAME = "marketstream_s3"

#: A batch whose commit lost a fence conflict is tried again this often. Each retry
#: re-reads the fences, so it ends as soon as the rival's commit is visible: in the
#: zombie test one retry sufficed; 20 covers many workers piling onto one partition.
MAX_FENCE_ATTEMPTS = 20


_install_lock = threading.Lock()


def extension_dir() -> Path:
    """Where the kit keeps DuckDB's extensions (under the home, like the Kafka jars)."""
    return home() / ".cache" / "duckdb-extensions"


@dataclass(frozen=True)
class S3Access:
    """How DuckDB reaches an S3 API object store: its endpoint, region, URL style and keys.

    Its repr masks the keys (a :class:`Lake` is shown in logs and tracebacks).
    """

    endpoint: str
    region: str = "us-east-1"
    key_id: str = ""
    secret: str = ""
    url_style: str = "vhost"
    use_ssl: bool = True

    def __repr__(self) -> str:
        shown = MASK if self.key_id else ""
        return (
            f"S3Access(endpoint={self.endpoint!r}, region={self.region!r}, key_id={shown!r}, "
            f"secret={shown!r}, url_style={self.url_style!r}, use_ssl={self.use_ssl})"
        )

    def secret_sql(self, bucket: str) -> str:
        """The ``CREATE SECRET`` statement (it holds the keys: never log or show it)."""
        options = [
            "TYPE s3",
            f"SCOPE {_quote('s3://' + bucket)}",
            f"REGION {_quote(self.region)}",
            f"URL_STYLE {_quote(self.url_style)}",
            f"USE_SSL {'true' if self.use_ssl else 'false'}",
        ]
        if self.endpoint:
            options.append(f"ENDPOINT {_quote(self.endpoint)}")
        if self.key_id:
            options += [f"KEY_ID {_quote(self.key_id)}", f"SECRET {_quote(self.secret)}"]
        return f"CREATE OR REPLACE TEMPORARY SECRET {S3_SECRET_NAME} ({', '.join(options)})"


@dataclass(frozen=True)
class Lake:
    """Where a lake is: its catalog (``postgres:<dsn>`` or ``sqlite:<path>``) and its data,
    and for data on ``s3://`` how to reach the object store."""

    catalog: str
    data_path: str
    extension_dir: Path
    s3: S3Access | None = None

    @property
    def kind(self) -> str:
        """``postgres`` or ``sqlite``."""
        return self.catalog.split(":", 1)[0]

    @property
    def on_object_store(self) -> bool:
        """True for a data path on ``s3://``."""
        return self.data_path.lower().startswith("s3://")

    @property
    def secret_values(self) -> list[str]:
        """The credentials an error line about this lake must not show."""
        if self.s3 is None:
            return []
        return [value for value in (self.s3.key_id, self.s3.secret) if value]

    def describe(self) -> str:
        """The lake for a person (passwords left out)."""
        where = f", endpoint {self.s3.endpoint}" if self.s3 and self.s3.endpoint else ""
        return f"DuckLake {redact(self.catalog)} (data {self.data_path}{where})"


def catalog_spec(text: str) -> str:
    """The DuckLake metadata spec for what a user gives as ``MARKET_DUCKLAKE_CATALOG``.

    A PostgreSQL connection string (``host=... dbname=...`` or ``postgresql://...``),
    or a SQLite file (``*.sqlite``, ``*.db``, or ``sqlite:<path>``).
    """
    raw = text.strip()
    if raw.startswith(("postgres:", "sqlite:")):
        return raw
    if raw.startswith(("postgresql://", "postgres://")) or "dbname=" in raw or "host=" in raw:
        return f"postgres:{raw}"
    if raw.endswith((".sqlite", ".sqlite3", ".db")):
        return f"sqlite:{Path(raw).expanduser()}"
    raise StoreUnavailable(
        f"MARKET_DUCKLAKE_CATALOG={redact(text)!r} is neither a PostgreSQL connection string "
        "('host=... port=... user=... dbname=...' or 'postgresql://user@host:port/db') "
        "nor a SQLite file (*.sqlite)"
    )


def _wheel_file(package: str, *, required: bool = True) -> Path | None:
    """The extension file in its wheel (None for an optional one not installed)."""
    spec = importlib.util.find_spec(f"duckdb_extension_{package}")
    if spec is None or not spec.submodule_search_locations:
        if not required:
            return None
        raise StoreUnavailable(
            f"the DuckLake store needs the {package} extension for DuckDB, which comes with "
            "the kit's lake extra: pip install -e '.[lake]' (make setup installs it)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "extensions" / f"v{duckdb.__version__}" / f"{package}.duckdb_extension"


def _connect_raw(folder: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(
        config={
            "extension_directory": str(folder),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
    )


def install_extensions(folder: Path) -> None:
    """Copy the extensions from their wheels into ``folder`` (idempotent, once per machine)."""
    folder.mkdir(parents=True, exist_ok=True)
    with _install_lock, open(folder / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        con = _connect_raw(folder)
        try:
            wheels = [(package, _wheel_file(package)) for package in _EXTENSIONS]
            wheels += [(p, _wheel_file(p, required=False)) for p in _OBJECT_STORE_EXTENSIONS]
            for _package, wheel in wheels:
                if wheel is None:
                    continue
                if not wheel.exists():
                    raise StoreUnavailable(
                        f"{wheel} is missing: the extension wheel does not match duckdb "
                        f"{duckdb.__version__}; reinstall with make setup"
                    )
                con.execute(f"INSTALL '{wheel}'")
        finally:
            con.close()


def _load(con: duckdb.DuckDBPyConnection, lake: Lake) -> None:
    names = ["ducklake", _EXTENSIONS[lake.kind]]
    if lake.on_object_store:
        _wheel_file("httpfs")  # absent: the error says which extra brings it
        names += list(_OBJECT_STORE_EXTENSIONS.values())
    try:
        for name in names:
            con.execute(f"LOAD {name}")
    except duckdb.IOException:
        install_extensions(lake.extension_dir)
        for name in names:
            con.execute(f"LOAD {name}")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """A new DuckDB connection with the lake attached as ``lake`` and in use (~0.4 s)."""
    con = _connect_raw(lake.extension_dir)
    try:
        _load(con, lake)
        if lake.on_object_store:
            _create_s3_secret(con, lake)
        elif "://" not in lake.data_path:
            Path(lake.data_path).mkdir(parents=True, exist_ok=True)
        con.execute(
            f"ATTACH IF NOT EXISTS {_quote('ducklake:' + lake.catalog)} AS {ALIAS} "
            f"(DATA_PATH {_quote(lake.data_path)})"
        )
        con.execute(f"USE {ALIAS}")
    except duckdb.Error as exc:
        con.close()
        raise StoreUnavailable(_unreachable(lake, exc)) from None
    except BaseException:
        con.close()
        raise
    return con


def _create_s3_secret(con: duckdb.DuckDBPyConnection, lake: Lake) -> None:
    """The lake's S3 access as this connection's temporary secret (before ATTACH)."""
    if lake.s3 is None:
        raise StoreUnavailable(
            f"{lake.describe()} is on object storage but no S3 access was given: set "
            "MARKET_S3_ENDPOINT (and MARKET_S3_KEY_ID, MARKET_S3_SECRET), or leave the "
            "endpoint empty for the kit's own object store"
        )
    bucket = lake.data_path[len("s3://") :].split("/", 1)[0]
    try:
        con.execute(lake.s3.secret_sql(bucket))
    except duckdb.Error as exc:  # DuckDB may quote the statement, keys and all
        raise StoreUnavailable(
            f"cannot configure S3 access for {lake.describe()}: "
            f"{redact(' '.join(str(exc).split()), lake.secret_values)[:300]}"
        ) from None


def _unreachable(lake: Lake, exc: Exception) -> str:
    text = redact(" ".join(str(exc).split()), lake.secret_values)
    why = text.split("Unable to connect to Postgres at", 1)[-1]
    if "does not exist" in text and "database" in text:
        reason = "its database does not exist"
    elif "Connection refused" in text:
        reason = "nothing answers at its address (is the server running?)"
    elif "password authentication failed" in text:
        reason = "the server refused the user name or password"
    elif "could not translate host name" in text:
        reason = "its host name is unknown"
    elif lake.on_object_store and ("HTTP" in text or "s3://" in text):
        reason = f"the object store refused or did not answer: {text[:300]}"
    else:
        reason = redact(why.strip())[:300]
    return f"cannot open {lake.describe()}: {reason}"


def is_conflict(exc: Exception) -> bool:
    """True for DuckLake's "another transaction committed this table first"."""
    return isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower()


def init_lake(lake: Lake) -> None:
    """Create the tables and views if missing; concurrent callers retry each other's wins."""
    con = connect(lake)
    try:
        for attempt in range(MAX_FENCE_ATTEMPTS):
            try:  # one transaction: a reader never sees some of the tables without the rest
                con.execute(f"BEGIN TRANSACTION; {LAKE_SCHEMA}")
                add_run_columns(con)  # a lake made by an earlier kit
                con.execute("COMMIT")
                return
            except duckdb.Error as exc:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                if attempt + 1 == MAX_FENCE_ATTEMPTS or not _retryable(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
    finally:
        con.close()


def _retryable(exc: Exception) -> bool:
    text = str(exc).lower()  # creating tables: any error naming a conflict or a twin
    return "conflict" in text or "already exists" in text


# ------------------------------------------------------------------------------ readers

_shared: dict[Lake, duckdb.DuckDBPyConnection] = {}
_shared_lock = threading.Lock()


@contextmanager
def read_connection(lake: Lake) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor on this process's one lake connection (attached once: ~0.4 s saved per read).

    Each statement sees the newest committed snapshot and never waits for a
    writer (DuckLake readers take no locks). A broken catalog connection (the
    server restarted) is dropped, so the next read attaches again.
    """
    with _shared_lock:  # the API's threads share the connection; each gets its own cursor
        con = _shared.get(lake)
        if con is None:
            con = _shared[lake] = connect(lake)
        cursor = con.cursor()
    try:
        cursor.execute(f"USE {ALIAS}")
        yield cursor
    except (duckdb.IOException, duckdb.ConnectionException) as exc:
        with _shared_lock:
            if _shared.get(lake) is con:
                del _shared[lake]
        raise StoreUnavailable(_unreachable(lake, exc)) from None
    finally:
        cursor.close()


def forget_connections() -> None:
    """Close this process's shared lake connections (after a fresh start, at exit)."""
    with _shared_lock:
        for con in _shared.values():
            con.close()
        _shared.clear()


def signature(lake: Lake) -> tuple[int, int, int, int]:
    """The lake's current snapshot id: it changes with every commit (~2 ms to ask)."""
    with read_connection(lake) as con:
        row = con.execute(f"SELECT id FROM ducklake_current_snapshot('{ALIAS}')").fetchone()
    return (int(row[0]) if row else 0, 0, 0, 0)


# ------------------------------------------------------------------------------ the fence


def fence_table(topic: str, partition: int) -> str:
    """The one-row table holding ``topic``/``partition``'s next expected offset.

    Readable (``fence_market_ticks_p0_1a2b3c4d``) and unique: the CRC tells apart
    topics that the sanitising maps alike.
    """
    safe = re.sub(r"\W", "_", topic)[:40]
    return f"fence_{safe}_p{partition}_{zlib.crc32(topic.encode()):08x}"


def _fence_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The fence tables the lake has (a catalog listing: ~15 ms, so writers cache it)."""
    return {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ? "
            "AND table_name LIKE 'fence_%'",
            [ALIAS],
        ).fetchall()
    }


def _read_fences(
    con: duckdb.DuckDBPyConnection, partitions: Sequence[tuple[str, int]], known: set[str]
) -> dict[tuple[str, int], int | None]:
    """Each partition's fence (``None``: no table yet). ``known`` caches which tables
    exist; it is refreshed when a partition's table is not in it (another writer may
    have created it since), and a fence table is never dropped while writers run."""
    if any(fence_table(*tp) not in known for tp in partitions):
        known |= _fence_tables(con)
    found: dict[tuple[str, int], int | None] = {}
    for tp in partitions:
        table = fence_table(*tp)
        if table in known:
            row = con.execute(f"SELECT max(next_offset) FROM {table}").fetchone()
            found[tp] = None if row is None or row[0] is None else int(row[0])
        else:
            found[tp] = None
    return found


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    row = con.execute(sql).fetchone()
    return None if row is None else row[0]


def _below_fences(table: pa.Table, fences: Mapping[tuple[str, int], int | None]) -> pa.Table:
    """``table`` without the records below their partition's fence (already stored)."""
    mask = None
    for (topic, partition), fence in fences.items():
        if not fence:
            continue
        hit = pc.and_(
            pc.and_(pc.equal(table["topic"], topic), pc.equal(table["partition"], partition)),
            pc.less(table["offset"], fence),
        )
        mask = hit if mask is None else pc.or_(mask, hit)
    return table if mask is None else table.filter(pc.invert(mask))


def stored_positions(con: duckdb.DuckDBPyConnection) -> Positions:
    """Every fence's next offset: the lake's stream positions
    (:mod:`marketstream.store.positions`)."""
    out: Positions = {}
    for table in sorted(_fence_tables(con)):
        row = con.execute(
            f'SELECT topic, "partition", max(next_offset) FROM {ALIAS}.{table} GROUP BY ALL'
        ).fetchone()
        if row is not None:
            out[(row[0], int(row[1]))] = int(row[2])
    return out


def set_positions(lake: Lake, positions: Positions) -> None:
    """Move fences to exactly these offsets (``marketstream positions --set``)."""
    init_lake(lake)
    con = connect(lake)
    try:
        known = _fence_tables(con)
        con.execute("BEGIN TRANSACTION")
        for (topic, partition), offset in positions.items():
            table = fence_table(topic, partition)
            if table in known:
                con.execute(f"UPDATE {table} SET next_offset = ?", [int(offset)])
            else:
                LakeWriter._move_fence(con, topic, partition, None, int(offset))
        con.execute("COMMIT")
    finally:
        con.close()


_INSERT_TICKS = """
    INSERT INTO market_ticks
    SELECT b.symbol, b.event_time, b.price, b.volume, b.topic, b."partition", b."offset",
           b.received_at
    FROM (SELECT * FROM tick_batch
          QUALIFY row_number() OVER (PARTITION BY symbol, event_time ORDER BY "offset") = 1) b
    ANTI JOIN (SELECT symbol, event_time FROM market_ticks
               WHERE event_time BETWEEN ? AND ?
                 AND symbol IN ({marks})) s
          ON s.symbol = b.symbol AND s.event_time = b.event_time
"""

_INSERT_DEAD = """
    INSERT INTO dead_letters
    SELECT b.topic, b."partition", b."offset", b."key", b.raw, b.reason, b.received_at
    FROM dead_batch b
    ANTI JOIN (SELECT topic, "partition", "offset" FROM dead_letters) s
          ON s.topic = b.topic AND s."partition" = b."partition" AND s."offset" = b."offset"
"""


class LakeWriter:
    """One worker's writer: its own connection, its own transactions, fenced per partition."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        init_lake(lake)
        self._con: duckdb.DuckDBPyConnection | None = connect(lake)
        #: A second connection for :meth:`positions`: the rebalance listener reads there
        #: while the writer thread may be inside a transaction on the first.
        self._reader: duckdb.DuckDBPyConnection | None = self._con.cursor()
        self._reader.execute(f"USE {ALIAS}")
        self._reader_lock = threading.Lock()
        #: commits lost to another writer of the same partition (then retried)
        self.conflicts = 0
        self._fences: set[str] = set()
        #: the fences as this writer's last commit left them, and that commit's snapshot
        #: (:meth:`_fences_for`)
        self._left: dict[tuple[str, int], int | None] = {}
        self._left_at: int | None = None

    def positions(self, partitions: Iterable[Any]) -> dict[tuple[str, int], int | None]:
        """Where each partition resumes: its fence (:func:`.positions.resume_points`)."""
        with self._reader_lock:
            if self._reader is None:
                raise StoreUnavailable("the lake writer is closed")
            return resume_points(self._reader, stored_positions, partitions)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise StoreUnavailable("the lake writer is closed")
        return self._con

    def write_batch(
        self,
        ticks: pa.Table,
        dead: pa.Table | None = None,
        *,
        offsets: Mapping[tuple[str, int], int] | None = None,
        before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> int:
        """Store a batch in one transaction behind its partitions' fences; rows added.

        ``offsets`` maps each (topic, partition) of the batch to the offset after its
        last record, the fence the transaction leaves behind. ``before_commit`` runs
        inside the transaction, just before ``COMMIT`` (the fault-injection seam).
        """
        offsets = {(str(t), int(p)): int(o) for (t, p), o in (offsets or {}).items()}
        for attempt in range(MAX_FENCE_ATTEMPTS):
            try:
                return self._attempt(ticks, dead, offsets, before_commit)
            except duckdb.Error as exc:
                if not is_conflict(exc) or attempt + 1 == MAX_FENCE_ATTEMPTS:
                    raise
                self.conflicts += 1
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(
        self,
        ticks: pa.Table,
        dead: pa.Table | None,
        offsets: dict[tuple[str, int], int],
        before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None,
    ) -> int:
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            fences = self._fences_for(con, list(offsets))
            added = 0
            ticks = _below_fences(ticks, fences)
            if ticks.num_rows:
                lo, hi = pc.min_max(ticks["event_time"]).values()
                symbols = pc.unique(ticks["symbol"]).to_pylist()
                con.register("tick_batch", ticks)
                sql = _INSERT_TICKS.format(marks=", ".join("?" for _ in symbols))
                added = con.execute(sql, [lo.as_py(), hi.as_py(), *symbols]).fetchall()[0][0]
                con.unregister("tick_batch")
            if dead is not None and dead.num_rows:
                dead = _below_fences(dead, fences)
                if dead.num_rows:
                    con.register("dead_batch", dead)
                    con.execute(_INSERT_DEAD).fetchall()
                    con.unregister("dead_batch")
            for (topic, partition), next_offset in offsets.items():
                self._move_fence(con, topic, partition, fences[(topic, partition)], next_offset)
            if before_commit is not None:
                before_commit(con)
            con.execute("COMMIT")
        except BaseException:
            self._left_at = None
            with contextlib.suppress(duckdb.Error):  # a failed COMMIT has rolled back already
                con.execute("ROLLBACK")
            raise
        for tp, next_offset in offsets.items():
            old = fences[tp]
            self._left[tp] = next_offset if old is None else max(old, next_offset)
        self._left_at = _scalar(con, f"FROM ducklake_last_committed_snapshot('{ALIAS}')")
        return int(added)

    def _fences_for(
        self, con: duckdb.DuckDBPyConnection, partitions: list[tuple[str, int]]
    ) -> dict[tuple[str, int], int | None]:
        """The partitions' fences in this transaction's snapshot.

        Why not always read them: a fence read costs ~11 ms of CPU (a DuckLake scan
        goes to the catalog for the table's files and inlined rows), a third of a
        5,000-row batch's write, where asking for the snapshot costs ~1.2 ms. If the
        lake is still at the snapshot this writer's last commit made, nobody has
        moved a fence since, and the fences are what that commit left. Any other
        commit in between (another worker, ``positions --set``, upkeep) means they
        are read; a commit after this transaction began is DuckLake's conflict.
        """
        if self._left_at is not None and all(tp in self._left for tp in partitions):
            now = _scalar(con, f"FROM ducklake_current_snapshot('{ALIAS}')")
            if now == self._left_at:
                return {tp: self._left[tp] for tp in partitions}
        return _read_fences(con, partitions, self._fences)

    @staticmethod
    def _move_fence(
        con: duckdb.DuckDBPyConnection, topic: str, partition: int, old: int | None, new: int
    ) -> None:
        table = fence_table(topic, partition)
        if old is None:
            con.execute(
                f'CREATE TABLE IF NOT EXISTS {table} (topic VARCHAR, "partition" INTEGER, '
                "next_offset BIGINT)"
            )
            con.execute(f"INSERT INTO {table} VALUES (?, ?, ?)", [topic, partition, new])
        elif new > old:
            con.execute(f"UPDATE {table} SET next_offset = ?", [new])

    def record_run(self, run: RunMetrics) -> None:
        """Store one row of run metrics (a run's id is new: no upsert needed)."""
        sql, params = run_insert(run)
        for attempt in range(MAX_FENCE_ATTEMPTS):
            try:
                self.con.execute(sql, params)
                return
            except duckdb.Error as exc:
                if not is_conflict(exc) or attempt + 1 == MAX_FENCE_ATTEMPTS:
                    raise

    def close(self) -> None:
        """Close the connection (the lake needs no checkpoint)."""
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> LakeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ upkeep


@dataclass(frozen=True)
class Upkeep:
    """What one round of upkeep did."""

    files_before: int
    files_after: int
    snapshots_expired: int
    files_deleted: int


def _data_files(con: duckdb.DuckDBPyConnection) -> int:
    total = 0
    for table in ("market_ticks", "dead_letters", "pipeline_metrics"):
        total += con.execute(
            f"SELECT count(*) FROM ducklake_list_files('{ALIAS}', '{table}')"
        ).fetchone()[0]
    return total


def upkeep(lake: Lake, keep_snapshots_s: float = 60.0) -> Upkeep:
    """Merge small Parquet files, expire old snapshots and delete the files they held.

    Why: every committed batch is a Parquet file and a snapshot (a live run at
    1,000 ticks/s commits ~10 of each a second), and a reader opens every file
    it cannot skip. Merging keeps a table at a few files; expiring snapshots older
    than ``keep_snapshots_s`` gives up time travel beyond that, which the kit does
    not use. Safe beside running writers: a merge that loses a race is skipped and
    the next round does it.
    """
    con = connect(lake)
    try:
        before = _data_files(con)
        try:
            con.execute(f"CALL ducklake_merge_adjacent_files('{ALIAS}')").fetchall()
        except duckdb.Error as exc:
            if not is_conflict(exc):
                raise
        expired = con.execute(
            f"CALL ducklake_expire_snapshots('{ALIAS}', older_than => "
            f"now() - to_microseconds({int(keep_snapshots_s * 1e6)}))"
        ).fetchall()
        deleted = con.execute(
            f"CALL ducklake_cleanup_old_files('{ALIAS}', cleanup_all => true)"
        ).fetchall()
        after = _data_files(con)
    finally:
        con.close()
    return Upkeep(before, after, len(expired), len(deleted))


def drop_lake(lake: Lake) -> None:
    """Drop the kit's tables, views and fences from the lake, and delete their files."""
    con = connect(lake)
    try:
        for name, kind in con.execute(
            "SELECT table_name, 'TABLE' FROM duckdb_tables() WHERE database_name = ? "
            "UNION ALL SELECT view_name, 'VIEW' FROM duckdb_views() WHERE database_name = ? "
            "AND NOT internal",
            [ALIAS, ALIAS],
        ).fetchall():
            con.execute(f"DROP {kind} IF EXISTS {name}")
        con.execute(f"CALL ducklake_expire_snapshots('{ALIAS}', older_than => now())").fetchall()
        con.execute(f"CALL ducklake_cleanup_old_files('{ALIAS}', cleanup_all => true)").fetchall()
    finally:
        con.close()
    forget_connections()


def lake_info(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Files and snapshots, for ``marketstream stats``."""
    snapshots = con.execute(f"SELECT count(*) FROM ducklake_snapshots('{ALIAS}')").fetchone()[0]
    return {"data_files": _data_files(con), "snapshots": int(snapshots)}


class LakeBackend:
    """DuckLake as a :class:`~marketstream.store.backend.Backend`."""

    name = "ducklake"
    #: Many writers share the catalog, which takes 86-130 commits/s here (bench/README.md,
    #: "The scaling model"): a live worker commits at most every 0.1 s, and readers need
    #: no gap (they read a snapshot, never a lock).
    live_write_gap_s = 0.1

    def describe(self, at: Lake) -> str:
        return at.describe()

    def init(self, at: Lake) -> None:
        init_lake(at)

    def exists(self, at: Lake) -> bool:
        with read_connection(at) as con:
            found = con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? "
                "AND table_name = 'market_ticks'",
                [ALIAS],
            ).fetchone()
        return bool(found and found[0])

    def read_connection(self, at: Lake, timeout_s: float) -> Any:
        return read_connection(at)

    def signature(self, at: Lake) -> tuple[int, int, int, int]:
        return signature(at)

    def open_writer(self, at: Lake, *, hold: bool) -> LakeWriter:
        return LakeWriter(at)

    def remove(self, at: Lake) -> None:
        drop_lake(at)

    def stored_positions(self, con: duckdb.DuckDBPyConnection) -> Positions:
        return stored_positions(con)

    def set_positions(self, at: Lake, positions: Positions) -> None:
        set_positions(at, positions)

    def extra_stats(self, con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        return lake_info(con)


BACKEND = LakeBackend()
