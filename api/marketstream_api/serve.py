"""Run the API under granian, a production WSGI server (Flask's own server is for debugging).

``marketstream api`` (or ``python -m marketstream_api.serve``, which live mode
starts) reads the same environment variables as the rest of the kit
(``MARKET_API_HOST``, ``MARKET_API_PORT``, ``MARKET_DB_PATH``...); flags
override them for one run.

Why granian: its HTTP layer is Rust, so a worker spends its Python time on the
app only. Measured here with wrk, 100 connections on cached answers: waitress
(16 threads) ~2,900 req/s with p99 ~130 ms, granian ~18,000 req/s with p99
~20 ms through Flask, ~39,000 req/s with p99 ~5 ms since the cache answers in
front of Flask (bench/README.md).

Why one worker by default: each worker keeps its own read cache, so each
re-reads the store after every live write; a second worker doubled those
DuckDB reads, which compete with the live pipeline for the same two cores and
for the file, and made the tail worse (p99 during ingest ~120-250 ms with two
workers, ~15-50 ms with one). ``--workers`` adds more where cores are spare.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from marketstream import servers, store
from marketstream.addresses import connect_host, join_host_port
from marketstream.errors import MarketstreamError
from marketstream.processes import port_open
from marketstream.settings import Settings, SettingsError

#: Worker processes: one, see above; one worker serves far more than Grafana asks.
DEFAULT_WORKERS = 1
#: Threads per worker running the app; DuckDB releases the GIL while it reads.
DEFAULT_THREADS = 4
#: The WSGI objects granian's workers import (see :mod:`.wsgi`).
WSGI_APP = "marketstream_api.wsgi:app"
WSGI_ORIGINAL_PATHS_APP = "marketstream_api.wsgi:original_paths_app"


#: The API for the kit's one address rule (:func:`marketstream.servers.claim_address`);
#: granian runs it, so only the rule is shared, not the lifecycle.
API_SERVER = servers.ServerSpec(
    name="the API",
    run_dir=Path(),
    marker="",
    error=SettingsError,
    hint="set MARKET_API_HOST / MARKET_API_PORT, or pass --host / --port (0 picks a free one)",
)


def claim_port(host: str, port: int) -> int:
    """Check that ``host:port`` can be bound (port 0: find a free one) and return the port.

    Granian binds in its own process; checking first turns a taken port into
    one clear line instead of a worker traceback.
    """
    return servers.claim_address(host, port, API_SERVER)


def _announce_when_listening(host: str, port: int, line: str, timeout_s: float = 60.0) -> None:
    """Print ``line`` once a worker answers: callers (live mode, the benchmark,
    tests) read it as "ready", and granian's workers listen only after start-up."""
    target = connect_host(host)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(target, port, timeout_s=0.5):
            print(line, flush=True)
            return
        time.sleep(0.02)
    where = join_host_port(host, port)
    print(f"error: the API did not start listening on {where}", file=sys.stderr, flush=True)


def serve(
    settings: Settings,
    *,
    workers: int = DEFAULT_WORKERS,
    threads: int = DEFAULT_THREADS,
    target: str = WSGI_APP,
) -> None:
    """Serve ``target`` until interrupted (Ctrl-C or SIGTERM stop granian and its workers
    cleanly)."""
    from granian import Granian
    from granian.constants import Interfaces

    port = claim_port(settings.api_host, settings.api_port)
    settings = settings.with_(api_port=port)
    # Workers build the app with Settings.from_env(): give them these very settings.
    os.environ.update(settings.to_env())
    url = f"http://{join_host_port(settings.api_host, port)}"
    # Workers are spawned, not forked: a fork while the announcing thread holds
    # an interpreter lock (imports, stdout) would leave the worker deadlocked.
    multiprocessing.set_start_method("spawn", force=True)
    host = settings.api_host
    server = Granian(
        target,
        address=settings.api_host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        log_level="warning",
        respawn_failed_workers=True,
        workers_kill_timeout=5,
    )

    line = f"marketstream API on {url} ({store.describe(store.locate(settings))})"
    threading.Thread(target=_announce_when_listening, args=(host, port, line), daemon=True).start()
    server.serve()


def run(
    settings: Settings,
    *,
    workers: int = DEFAULT_WORKERS,
    threads: int = DEFAULT_THREADS,
    target: str = WSGI_APP,
) -> int:
    """Serve until Ctrl-C or SIGTERM; the exit status (1 with one line if the port is taken).

    The one body of ``marketstream api`` and ``python -m marketstream_api.serve``.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # until granian takes over
    try:
        # A lake without a catalog: the kit's PostgreSQL, started for as long as we serve.
        with store.owned_store(settings) as settings:
            serve(settings, workers=workers, threads=threads, target=target)
    except OSError as exc:  # typically the port is taken
        where = join_host_port(settings.api_host, settings.api_port)
        print(
            f"error: cannot listen on {where}: {exc.strerror}; set MARKET_API_PORT or pass --port",
            file=sys.stderr,
        )
        return 1
    except MarketstreamError as exc:  # e.g. the lake's catalog cannot be reached
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m marketstream_api.serve", description="Serve the marketstream API."
    )
    parser.add_argument("--host", help="bind address (MARKET_API_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port, 0 for a free one (MARKET_API_PORT)")
    parser.add_argument("--db", help="DuckDB file (MARKET_DB_PATH)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="per worker")
    parser.add_argument(
        "--original-paths",
        action="store_true",
        help="answer /live and /metrics in the original kit's shape (as /v0/live, /v0/metrics)",
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(api_host=args.host, api_port=args.port, db_path=args.db)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = WSGI_ORIGINAL_PATHS_APP if args.original_paths else WSGI_APP
    return run(settings, workers=args.workers, threads=args.threads, target=target)


if __name__ == "__main__":
    sys.exit(main())
