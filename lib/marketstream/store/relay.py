"""One writer process for a DuckDB file that several consumer workers share.

Why: a DuckDB file allows one writing process. Workers that took turns on its
lock had to open and close the file for every batch, 81 ms for 5,000 rows
against 16 ms with the file held open (measured here), so two or three
workers stored *less* per second than one (bench/README.md, Scaling). Here
the workers poll and decode in their own processes (the part that takes a
core: kafka-python's parsing) and hand their Arrow batches to this process,
which holds the file and commits them one at a time. Each worker commits its
Kafka offsets only after this process has answered that the batch is stored,
so the delivery order is the same as in one process: poll, decode, store
commit, Kafka commit; the file's primary keys skip what a replay brings twice,
and each batch moves the file's stream positions in its transaction.

The channel is :mod:`multiprocessing.connection` on a unix socket in the
store's folder, with a random key (``MARKET_STORE_RELAY_KEY``) that only the
kit's own processes get: the messages are pickles, which must not come from
anyone else. Tables travel as pickled Arrow (its IPC buffers).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import pyarrow as pa

from marketstream.errors import MarketstreamError, StoreUnavailable
from marketstream.settings import variable
from marketstream.store.failures import explain
from marketstream.store.files import FileWriter
from marketstream.store.positions import as_key
from marketstream.store.schema import RunMetrics

#: The environment variables a worker finds the writer process by (set by the kit).
ADDRESS_ENV = variable("MARKET_STORE_RELAY")
KEY_ENV = variable("MARKET_STORE_RELAY_KEY")

#: How long a worker waits for the writer process to listen.
READY_TIMEOUT_S = 60.0


def new_address(db_path: Path) -> tuple[str, str]:
    """A fresh socket path beside the file (short: a unix socket path has 107 bytes) and key."""
    folder = db_path.parent
    name = f".relay-{os.getpid()}-{secrets.token_hex(3)}.sock"
    address = str(folder / name)
    if len(address.encode()) > 100:  # a deep folder: use /tmp instead
        address = f"/tmp/marketstream{name}"
    return address, secrets.token_hex(16)


def relay_command(*, hold: bool) -> list[str]:
    """The writer process's command line (the file and address come through the env)."""
    return [sys.executable, "-m", "marketstream.store.relay", *(["--hold"] if hold else [])]


def wait_listening(
    address: str, alive: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Wait until the writer process has made its socket (or died: then say so)."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(address):
        if not alive():
            raise StoreUnavailable("the store's writer process exited before it listened")
        if time.monotonic() > deadline:
            raise StoreUnavailable(f"the store's writer process did not listen at {address}")
        time.sleep(0.05)


class RelayWriter:
    """A worker's writer: each batch goes to the writer process, which answers rows added."""

    def __init__(self, address: str, key: str) -> None:
        #: the file's writer process has no other writer to conflict with
        self.conflicts = 0
        self._lock = threading.Lock()
        try:
            self._conn: Connection | None = Client(address, family="AF_UNIX", authkey=key.encode())
        except AuthenticationError:
            raise StoreUnavailable(
                f"the store's writer process at {address} refused this process's key"
            ) from None
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot reach the store's writer process at {address}: {exc}"
            ) from None

    def _call(self, *message: Any) -> Any:
        if self._conn is None:
            raise StoreUnavailable("the relay writer is closed")
        try:
            with self._lock:  # the rebalance listener asks positions beside the writer thread
                self._conn.send(message)
                status, value = self._conn.recv()
        except (OSError, EOFError) as exc:
            raise StoreUnavailable(f"the store's writer process went away: {exc}") from None
        if status != "ok":
            raise StoreUnavailable(f"the store's writer process failed: {value}")
        return value

    def write_batch(
        self,
        ticks: pa.Table,
        dead: pa.Table | None = None,
        *,
        offsets: Mapping[tuple[str, int], int] | None = None,
        before_commit: Callable[[Any], None] | None = None,
    ) -> int:
        """Store a batch through the writer process; rows added (``before_commit`` cannot
        run inside another process's transaction, so it is refused)."""
        if before_commit is not None:
            raise StoreUnavailable("before_commit runs only with the writer in this process")
        moved = {as_key(tp): int(o) for tp, o in (offsets or {}).items()}
        return int(self._call("write", ticks, dead, moved))

    def positions(self, partitions: Iterable[Any]) -> dict[tuple[str, int], int | None]:
        """Where each partition resumes, as the writer process reads its file."""
        return dict(self._call("positions", [as_key(tp) for tp in partitions]))

    def record_run(self, run: RunMetrics) -> None:
        """Store one row of run metrics."""
        self._call("run", run)

    def close(self) -> None:
        """Close the connection (the writer process keeps the file)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> RelayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve_one(conn: Connection, writer: FileWriter, lock: threading.Lock) -> None:
    """Answer one worker until it hangs up."""
    with conn:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            try:
                with lock:  # one transaction at a time: the file has one connection
                    if message[0] == "write":
                        answer: Any = writer.write_batch(message[1], message[2], offsets=message[3])
                    elif message[0] == "positions":
                        answer = writer.positions(message[1])
                    else:
                        writer.record_run(message[1])
                        answer = None
                conn.send(("ok", answer))
            except Exception as exc:  # the worker raises it, with the reason named
                conn.send(("error", explain(exc, writer.path)))


#: After SIGTERM, how long the writer process waits for its workers to hang up.
DRAIN_TIMEOUT_S = 60.0


def serve(db_path: Path, address: str, key: str, *, hold: bool) -> None:
    """Hold the file and store what the workers send until SIGTERM.

    SIGTERM stops the accepting, not the storing: workers stopped at the same
    moment still send the batch in hand, so the file is closed only once every
    worker has hung up (or after :data:`DRAIN_TIMEOUT_S`).
    """
    writer = FileWriter(db_path, hold=hold)
    lock = threading.Lock()
    listener = Listener(address, family="AF_UNIX", authkey=key.encode())
    served: list[threading.Thread] = []
    try:
        while True:
            try:
                conn = listener.accept()
            except AuthenticationError:  # not one of ours: refused, and the others go on
                continue
            thread = threading.Thread(target=_serve_one, args=(conn, writer, lock), daemon=True)
            thread.start()
            served.append(thread)
    finally:
        listener.close()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for thread in served:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with lock:
            writer.close()


def main(argv: Sequence[str] | None = None) -> int:
    """The writer process: the settings' DuckDB file, the address and key from the env."""
    parser = argparse.ArgumentParser(prog="python -m marketstream.store.relay")
    parser.add_argument("--hold", action="store_true", help="keep the file open (batch runs)")
    args = parser.parse_args(argv)
    from marketstream.settings import Settings

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, after its workers
    try:
        settings = Settings.from_env()
        serve(settings.db_path, os.environ[ADDRESS_ENV], os.environ[KEY_ENV], hold=args.hold)
    except MarketstreamError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
