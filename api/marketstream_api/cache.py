"""Answers computed once per change of the store, shared by every request that asks.

Why: Grafana, the Voila page and anyone else poll the same few URLs, often many
at once (a dashboard refreshes all its panels together, several people look at
it). Each answer costs a DuckDB open (~15 ms) and a query over the whole table
(tens to hundreds of ms at a million ticks), and every open also competes with
the live consumer for the file lock. Computing the same answer a hundred times
a second made a 100-connection load take seconds per request and stalled the
writer behind the readers.

So an answer is kept with the store's *signature* (:func:`marketstream.store.signature`:
size and mtime of the DuckDB file and its WAL, one ``stat`` each): while it is
unchanged the data is unchanged and the kept answer is exact. When the writer
has committed since, the first request recomputes while concurrent requests
for the same key get the previous answer at once (stale-while-revalidate), and
an answer younger than ``min_age_s`` is served even if the store moved on.
Staleness is therefore bounded by ``min_age_s`` plus one query (plus
``max_stale_s`` under load, see :class:`ReadCache`), and the API opens the file
at most a few times a second per distinct question, whatever the load.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from marketstream import store
from marketstream.store import Signature, Where

T = TypeVar("T")


@dataclass
class _Entry:
    signature: Signature
    computed_at: float
    value: Any


@dataclass
class _Slot:
    """One key: its lock (one computation at a time) and its latest answer, if any."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    entry: _Entry | None = None


class ReadCache:
    """Computed answers per key, valid while the store's signature holds.

    ``max_entries`` bounds memory: keys include query parameters (Grafana's
    ``since`` changes every refresh), so the least recently used are dropped.
    ``min_age_s=0`` still shares one computation among concurrent requests.

    An answer that is out of date but younger than ``max_stale_s`` (the API:
    ``MARKET_API_STALE_S``) is returned at once while a background thread
    recomputes it: under load (answers are
    refreshed many times a second) no request waits for DuckDB, whose open can
    stall for as long as the live writer holds the file. An older answer (a
    dashboard polling every few seconds) is recomputed before answering, so a
    slow poller never sees data one poll behind.
    """

    def __init__(
        self,
        at: Where,
        *,
        min_age_s: float = 0.25,
        max_stale_s: float = 0.0,
        max_entries: int = 256,
    ):
        self.at = at
        self.min_age_s = min_age_s
        self.max_stale_s = max_stale_s
        self.max_entries = max_entries
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.refresh_errors = 0

    def _usable(self, entry: _Entry | None, signature: Signature) -> bool:
        return entry is not None and (
            entry.signature == signature or time.monotonic() - entry.computed_at < self.min_age_s
        )

    def _compute_into(self, slot: _Slot, compute: Callable[[], T]) -> T:
        """Run ``compute`` for ``slot`` (whose lock the caller holds) and keep the answer."""
        self.misses += 1
        # Sign before reading: a commit during the query then shows as a new
        # signature next time, so the answer is recomputed, never kept too long.
        signature = store.signature(self.at)
        value = compute()
        slot.entry = _Entry(signature, time.monotonic(), value)
        return value

    def _refresh(self, slot: _Slot, compute: Callable[[], object]) -> None:
        """Background recomputation; on failure the old answer ages out and a request retries."""
        try:
            self._compute_into(slot, compute)
        except Exception:  # the next synchronous computation reports it
            self.refresh_errors += 1
        finally:
            slot.lock.release()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The answer for ``key``: kept, or computed by ``compute`` (exceptions propagate)."""
        signature = store.signature(self.at)
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
            if (
                signature != store.NO_SIGNATURE
                and time.monotonic() - entry.computed_at < self.max_stale_s
            ):
                self.hits += 1
                threading.Thread(
                    target=self._refresh, args=(slot, compute), daemon=True, name="cache-refresh"
                ).start()  # the thread releases the slot's lock
                return entry.value
        else:
            slot.lock.acquire()  # the first answer: wait for whoever computes it
        try:
            if self._usable(slot.entry, store.signature(self.at)):
                self.hits += 1
                return slot.entry.value  # type: ignore[union-attr]  (computed while we waited)
            return self._compute_into(slot, compute)
        finally:
            slot.lock.release()

    def clear(self) -> None:
        """Forget every answer (tests, or after replacing the store file)."""
        with self._lock:
            self._slots.clear()


#: What a WSGI app answered: status line, headers, body.
_Response = tuple[str, list[tuple[str, str]], bytes]


class _NotKept(Exception):
    """A response that must not be replayed (anything but 200); carries it out of the cache."""

    def __init__(self, response: _Response):
        super().__init__(response[0])
        self.response = response


class ReplayCache:
    """WSGI middleware: a repeated GET of a cached path gets Flask's own earlier response.

    Why: with answers already cached, Flask's request handling (routing,
    request and response objects, after-request hooks) became ~85 % of a
    worker's time, and a 100-connection load saturated the CPU the live
    pipeline also needs (measured on a static store: ~8,900 req/s through
    Flask, ~65,000 for a bare WSGI callable under the same granian). This
    layer keys on the raw path and query string and replays status, headers
    and body exactly as Flask produced them, under the same validity rule as
    :class:`ReadCache` (store unchanged, or younger than ``min_age_s``;
    stale-while-revalidate). Only 200 answers are kept: a bad parameter or a
    missing store goes through Flask every time and gets its JSON error.
    """

    def __init__(self, app: Callable, cache: ReadCache, paths: frozenset[str]):
        self.app = app
        self.cache = cache
        self.paths = paths

    def _through_app(self, environ: dict) -> _Response:
        captured: list = []

        def start_response(status: str, headers: list, exc_info: object = None) -> Callable:
            captured[:] = [status, list(headers)]
            return lambda data: None  # Flask never uses the legacy write() callable

        result = self.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        response = (captured[0], captured[1], body)
        if not captured[0].startswith("200"):
            raise _NotKept(response)
        return response

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or path not in self.paths:
            return self.app(environ, start_response)
        key = ("replay", path, environ.get("QUERY_STRING", ""))
        # A copy: a background refresh may run after this request (and its environ) ended.
        request_environ = dict(environ)
        try:
            status, headers, body = self.cache.get(key, lambda: self._through_app(request_environ))
        except _NotKept as not_kept:
            status, headers, body = not_kept.response
        start_response(status, headers)
        return [body]
