"""The store: the one seam between the pipeline and where ticks are kept.

Callers hand it Arrow/pandas columns and get DataFrames back, never SQL, and
they do not know which backend they talk to: :func:`locate` turns the
settings into a :data:`Where` and every function takes one.

* ``MARKET_STORE=duckdb`` (default): one DuckDB file (:mod:`.files`), one
  writing process at a time, readers in between; no server needed.
* ``MARKET_STORE=ducklake``: DuckLake (:mod:`.lake`), Parquet files plus a
  catalog in PostgreSQL, for several writing processes at once.

Modules: :mod:`.schema` (tables, views, batch shapes), :mod:`.files` and
:mod:`.lake` (the backends, each a :class:`.backend.Backend`), :mod:`.where`
(dispatch, the kit's own catalog server), :mod:`.positions` (where a consumer
resumes: the store's own stream positions), :mod:`.reads` (every query),
:mod:`.stats` (what is stored).
"""

from marketstream.store.backend import Backend, Signature, Writer
from marketstream.store.files import (
    NO_SIGNATURE,
    FileWriter,
    db_files,
    init_db,
    observe_connections,
    remove_db,
)
from marketstream.store.lake import Lake, LakeWriter, Upkeep, upkeep
from marketstream.store.positions import Positions
from marketstream.store.reads import (
    INGEST_WINDOW_S,
    HealthSnapshot,
    candles,
    dead_letters,
    health,
    health_snapshot,
    live_v0,
    live_wide,
    market_metrics,
    metrics_v0,
    partition_positions,
    pipeline_runs,
    pivot_wide,
    stored_offsets,
    symbols_present,
    tick_count,
    ticks,
)
from marketstream.store.schema import (
    DEAD_LETTER_SCHEMA,
    LAKE_SCHEMA,
    METRIC_COLUMNS,
    SCHEMA,
    TICK_BATCH_SCHEMA,
    RunMetrics,
)
from marketstream.store.stats import render as render_stats
from marketstream.store.stats import stats
from marketstream.store.where import (
    Where,
    backend,
    describe,
    exists,
    init_store,
    locate,
    open_writer,
    owned_store,
    read_connection,
    remove_store,
    set_positions,
    signature,
)

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "INGEST_WINDOW_S",
    "LAKE_SCHEMA",
    "METRIC_COLUMNS",
    "NO_SIGNATURE",
    "SCHEMA",
    "TICK_BATCH_SCHEMA",
    "Backend",
    "FileWriter",
    "HealthSnapshot",
    "Lake",
    "LakeWriter",
    "Positions",
    "RunMetrics",
    "Signature",
    "Upkeep",
    "Where",
    "Writer",
    "backend",
    "candles",
    "db_files",
    "dead_letters",
    "describe",
    "exists",
    "health",
    "health_snapshot",
    "init_db",
    "init_store",
    "live_v0",
    "live_wide",
    "locate",
    "market_metrics",
    "metrics_v0",
    "observe_connections",
    "open_writer",
    "owned_store",
    "partition_positions",
    "pipeline_runs",
    "pivot_wide",
    "read_connection",
    "remove_db",
    "remove_store",
    "render_stats",
    "set_positions",
    "signature",
    "stats",
    "stored_offsets",
    "symbols_present",
    "tick_count",
    "ticks",
    "upkeep",
]
