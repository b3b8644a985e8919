"""Answers computed once per change of the store, shared by every request that asks.

Why: Grafana, the Voila page and anyone else poll the same few URLs, often many
at once (a dashboard refreshes all its panels together, several people look at
it). Each answer costs a DuckDB open (~15 ms) and a query over the whole table
(tens to hundreds of ms at a million ticks), and every open also competes with
the live consumer for the file lock. Computing the same answer a hundred times
a second made a 100-connection load take seconds per request and stalled the
writer behind the readers.

So an answer is kept with the store's *signature* (size and modification time
of the DuckDB file and its WAL, one ``stat`` each): while the signature is
unchanged the data is unchanged and the kept answer is exact. When the writer
has committed since, the first request recomputes while concurrent requests
for the same key get the previous answer at once (stale-while-revalidate), and
an answer younger than ``min_age_s`` is served even if the store moved on.
Staleness is therefore bounded by ``min_age_s`` plus one query, and the API
opens the file at most a few times a second per distinct question, whatever
the load.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

#: A store's state as ``stat`` sees it; equal signatures mean equal data.
Signature = tuple[int, int, int, int]


def store_signature(db_path: Path) -> Signature:
    """Size and mtime (ns) of the DuckDB file and of its write-ahead log (0, 0 if absent)."""
    out: list[int] = []
    for path in (db_path, db_path.with_name(db_path.name + ".wal")):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            out += [0, 0]
        else:
            out += [st.st_size, st.st_mtime_ns]
    return (out[0], out[1], out[2], out[3])


@dataclass
class _Entry:
    signature: Signature
    computed_at: float
    value: bytes


@dataclass
class _Slot:
    """One key: its lock (one computation at a time) and its latest answer, if any."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    entry: _Entry | None = None


class ReadCache:
    """Computed answers (bytes) per key, valid while the store's signature holds.

    ``max_entries`` bounds memory: keys include query parameters (Grafana's
    ``since`` changes every refresh), so the least recently used are dropped.
    ``min_age_s=0`` still shares one computation among concurrent requests.
    """

    def __init__(self, db_path: Path, *, min_age_s: float = 0.25, max_entries: int = 256):
        self.db_path = db_path
        self.min_age_s = min_age_s
        self.max_entries = max_entries
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _usable(self, entry: _Entry | None, signature: Signature) -> bool:
        return entry is not None and (
            entry.signature == signature or time.monotonic() - entry.computed_at < self.min_age_s
        )

    def get(self, key: Hashable, compute: Callable[[], bytes]) -> bytes:
        """The answer for ``key``: kept, or computed by ``compute`` (exceptions propagate)."""
        signature = store_signature(self.db_path)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
                while len(self._slots) > self.max_entries:
                    self._slots.popitem(last=False)
            self._slots.move_to_end(key)
            entry = slot.entry
        if self._usable(entry, signature):
            self.hits += 1
            return entry.value  # type: ignore[union-attr]
        if entry is not None:
            if not slot.lock.acquire(blocking=False):
                self.hits += 1
                return entry.value  # someone is recomputing: the previous answer, at once
        else:
            slot.lock.acquire()  # the first answer: wait for whoever computes it
        try:
            if self._usable(slot.entry, store_signature(self.db_path)):
                self.hits += 1
                return slot.entry.value  # type: ignore[union-attr]  (computed while we waited)
            self.misses += 1
            # Sign before reading: a commit during the query then shows as a new
            # signature next time, so the answer is recomputed, never kept too long.
            signature = store_signature(self.db_path)
            value = compute()
            slot.entry = _Entry(signature, time.monotonic(), value)
            return value
        finally:
            slot.lock.release()

    def clear(self) -> None:
        """Forget every answer (tests, or after replacing the store file)."""
        with self._lock:
            self._slots.clear()
