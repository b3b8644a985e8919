"""``/health``: can the store be read, does the broker answer.

The two halves differ on purpose. The store is what the API serves, so an
unreadable store makes the answer a 503 (``degraded``), and so does one with no
ticks yet (``empty``: nothing to serve); the broker is only
reported, since every other endpoint works without it.

The broker half is :meth:`marketstream.clients.KafkaClients.reachable`, the
kit's one probe, with the settings' SASL/SSL options (a secured cluster reads
as up). Its answer is kept for ``ttl_s`` (2 s), so however often a dashboard
polls ``/health``, Kafka is asked about once per ttl, and a request never
waits behind another's probe (which may take ``timeout_s``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from marketstream import store
from marketstream.clients import DEFAULT_CLIENTS
from marketstream.settings import Settings
from marketstream.store import HealthSnapshot

from .encode import first_line

#: What an empty store's ``/health`` says, so a person knows what to run.
EMPTY = "no ticks stored yet: run `make demo`, or `marketstream live`"

#: ``(settings, timeout_s) -> reachable``, as :meth:`KafkaClients.reachable`.
BrokerCheck = Callable[[Settings, float], bool]

#: ``db_path -> snapshot``, as :func:`marketstream.store.health_snapshot`.
SnapshotReader = Callable[[Path], HealthSnapshot]


class BrokerProbe:
    """Broker reachability, cached for ``ttl_s`` so a busy /health asks Kafka ~once per ttl.

    While one request probes, the others answer with the previous result
    instead of queueing behind a probe that may take ``timeout_s``.
    """

    def __init__(
        self,
        settings: Settings,
        check: BrokerCheck = DEFAULT_CLIENTS.reachable,
        *,
        ttl_s: float = 2.0,
        timeout_s: float = 1.0,
    ):
        self.settings = settings
        self.check = check
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._value: bool | None = None
        self._checked_at = 0.0

    def _fresh(self) -> bool:
        return self._value is not None and time.monotonic() - self._checked_at < self.ttl_s

    def reachable(self) -> bool:
        """The latest answer, probing first if it is older than ``ttl_s``."""
        if self._fresh():
            return bool(self._value)
        if not self._lock.acquire(blocking=self._value is None):
            return bool(self._value)
        try:
            if not self._fresh():
                self._value = self._probe()
                self._checked_at = time.monotonic()
            return bool(self._value)
        finally:
            self._lock.release()

    def _probe(self) -> bool:
        try:
            return bool(self.check(self.settings, self.timeout_s))
        except Exception:  # a malformed server list, a check that fails: "not reachable"
            return False


def store_health(settings: Settings, snapshot: SnapshotReader) -> dict[str, Any]:
    """The store half of /health; any failure to read is reported, never raised."""
    state: dict[str, Any] = {
        "reachable": False,
        "path": "",
        "ticks": None,
        "error": None,
    }
    try:
        at = store.locate(settings)
        state["path"] = store.describe(at)
        state["ticks"] = snapshot(at).ticks
        state["reachable"] = True
    except Exception as exc:
        state["error"] = first_line(exc)
    return state


def health_report(
    settings: Settings, probe: BrokerProbe, snapshot: SnapshotReader
) -> tuple[dict[str, Any], int]:
    """The /health body and its status: 200 if the store is readable and holds ticks;
    else 503, ``empty`` (nothing stored yet: ``marketstream api`` creates the store it
    serves, so after ``make clean`` it answered 200 ``ok`` with nothing to serve) or
    ``degraded`` (the store cannot be read)."""
    store_state = store_health(settings, snapshot)
    if not store_state["reachable"]:
        status = "degraded"
    elif not store_state["ticks"]:
        status = "empty"
        store_state["error"] = EMPTY
    else:
        status = "ok"
    body = {
        "status": status,
        "store": store_state,
        "broker": {
            "reachable": probe.reachable(),
            "bootstrap_servers": settings.bootstrap_servers,
        },
    }
    return body, 200 if status == "ok" else 503
