"""Run the API under waitress, a production WSGI server (Flask's own server is for debugging).

``python -m marketstream_api.serve`` reads the same environment variables as
the rest of the kit (``MARKET_API_HOST``, ``MARKET_API_PORT``,
``MARKET_DB_PATH``...); flags override them for one run.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

from waitress import create_server

from marketstream.settings import Settings, SettingsError

from .app import create_app

#: Grafana refreshes several panels at once; each request holds a thread while DuckDB reads.
DEFAULT_THREADS = 16


def make_server(settings: Settings, *, threads: int = DEFAULT_THREADS) -> Any:
    """A bound, not yet running waitress server; port 0 picks a free one (see :func:`listening`)."""
    return create_server(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        threads=threads,
        ident="marketstream",
    )


def listening(server: Any) -> list[tuple[str, int]]:
    """Where ``server`` listens: a host name like ``localhost`` may bind IPv4 and IPv6."""
    many = getattr(server, "effective_listen", None)
    return list(many) if many else [(server.effective_host, server.effective_port)]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(settings: Settings, *, threads: int = DEFAULT_THREADS) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM both stop it cleanly)."""
    server = make_server(settings, threads=threads)
    urls = ", ".join(f"http://{_url_host(h)}:{p}" for h, p in listening(server))
    print(f"marketstream API on {urls} (db {settings.db_path})", flush=True)
    server.run()  # returns after SystemExit/KeyboardInterrupt, having stopped its threads


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, which waitress's loop catches to shut down its workers."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m marketstream_api.serve", description="Serve the marketstream API."
    )
    parser.add_argument("--host", help="bind address (MARKET_API_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port, 0 for a free one (MARKET_API_PORT)")
    parser.add_argument("--db", help="DuckDB file (MARKET_DB_PATH)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(api_host=args.host, api_port=args.port, db_path=args.db)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _stop_on_sigterm()
    try:
        serve(settings, threads=args.threads)
    except OSError as exc:  # typically the port is taken
        print(
            f"error: cannot listen on {settings.api_host}:{settings.api_port}: {exc.strerror}; "
            "set MARKET_API_PORT or pass --port",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
