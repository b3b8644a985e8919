"""What a storage backend offers: the one interface the file and the lake both implement.

Callers never ask which backend they have. :func:`marketstream.store.where.backend`
picks the implementation for a :data:`~marketstream.store.where.Where` once,
and every operation goes through it. A third backend is one module with a
class that satisfies :class:`Backend` and a :class:`Writer`, plus one line in
``where.BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

import pyarrow as pa

from marketstream.store.positions import Positions
from marketstream.store.schema import RunMetrics

#: A store's state in four numbers; equal signatures mean equal data.
Signature = tuple[int, int, int, int]


class Writer(Protocol):
    """Stores batches and their stream positions in one transaction each."""

    #: commits lost to another writer and retried (only a lake has other writers)
    conflicts: int

    def write_batch(
        self,
        ticks: pa.Table,
        dead: pa.Table | None = None,
        *,
        offsets: Mapping[Any, int] | None = None,
        before_commit: Callable[[Any], None] | None = None,
    ) -> int:
        """Store ticks and dead letters, and move each partition's position to
        ``offsets``, in one transaction; return the ticks added."""
        ...

    def positions(self, partitions: Iterable[Any]) -> dict[tuple[str, int], int | None]:
        """Where each partition resumes (:func:`.positions.resume_points`)."""
        ...

    def record_run(self, run: RunMetrics) -> None:
        """Store one ``pipeline_metrics`` row."""
        ...

    def close(self) -> None:
        """Let go of the store."""
        ...


class Backend(Protocol):
    """The operations on one kind of store (``at`` is that backend's kind of Where)."""

    #: ``duckdb`` or ``ducklake``: the ``MARKET_STORE`` value, and the ``store`` of stats.
    name: str
    #: Live mode waits at least this long after a write before the next one (seconds).
    live_write_gap_s: float

    def describe(self, at: Any) -> str:
        """The store for a person (never a password)."""
        ...

    def init(self, at: Any) -> None:
        """Create the tables and views if missing (idempotent)."""
        ...

    def exists(self, at: Any) -> bool:
        """Whether anything has been stored there yet."""
        ...

    def read_connection(self, at: Any, timeout_s: float) -> AbstractContextManager[Any]:
        """A connection for reading: never a half-written batch, never a writer kept waiting."""
        ...

    def signature(self, at: Any) -> Signature:
        """Changes whenever the data does; cheap enough to ask per request."""
        ...

    def open_writer(self, at: Any, *, hold: bool) -> Writer:
        """A writer for this process."""
        ...

    def remove(self, at: Any) -> None:
        """Delete everything stored."""
        ...

    def stored_positions(self, con: Any) -> Positions:
        """Every position the store holds, read on ``con``."""
        ...

    def set_positions(self, at: Any, positions: Positions) -> None:
        """Move positions to exactly these offsets (back to replay, on to skip)."""
        ...

    def extra_stats(self, con: Any) -> dict[str, Any]:
        """What ``marketstream stats`` shows of this backend alone."""
        ...
