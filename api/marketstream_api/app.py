"""The Flask app Grafana's Infinity datasource reads: JSON over the DuckDB store, read-only.

Handlers only validate parameters (:mod:`.params`), call :mod:`marketstream.store`
(where all SQL lives) and shape frames into the JSON Grafana panels were built
against (:mod:`.encode`). Every outcome is JSON, errors included, because
Infinity shows a JSON error message to the user but chokes on an HTML
traceback page.

Two seams, so tests (and embedders) pass collaborators instead of patching
module globals: ``clients`` / ``broker_check`` for the broker probe of
``/health`` (:mod:`.health`) and for ``/lag``'s end offsets, and ``reader``, the
store reads every endpoint makes.

Time ranges: ``/live``, ``/candles``, ``/metrics`` and ``/runs`` take ``since``
(exclusive) and ``until`` (inclusive), so a Grafana panel asking with the
dashboard's ``${__timeFrom}``/``${__timeTo}`` shows that range and nothing else.

The original kit's shape: ``/v0/live`` and ``/v0/metrics`` answer with its field
names (``tick_count``, ``<SYMBOL>_volume``, ...), its row order and its ``time``, so
dashboards saved against that kit keep working; :class:`OriginalPaths` serves them at
the original's own paths for dashboards that cannot be edited (api/README.md says why).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, NotFound

from marketstream import __version__, store
from marketstream.clients import DEFAULT_CLIENTS, KafkaClients
from marketstream.errors import StoreUnavailable
from marketstream.lag import LagReport
from marketstream.lag import end_offsets as read_end_offsets
from marketstream.lag import measure as measure_lag
from marketstream.logs import get_logger
from marketstream.settings import Settings

from .cache import ReadCache, ReplayCache
from .encode import first_line, frame_records, iso, json_bytes, json_response
from .health import BrokerCheck, BrokerProbe, health_report
from .openapi import (
    CANDLES_LIMIT,
    LIVE_LIMIT,
    RUNS_LIMIT,
    V0_LIVE_LIMIT,
    build_spec,
    integer_properties,
)
from .params import BadParameter, int_param, interval_param, symbol_param, time_range_params

__all__ = ["CACHED_PATHS", "ORIGINAL_PATHS", "OriginalPaths", "StoreReader", "create_app"]

#: The paths whose 200 answers the read cache keeps and replays (they only read the store).
CACHED_PATHS = frozenset({"/metrics", "/live", "/candles", "/v0/live"})

#: The original kit's paths and where this API serves their shape.
ORIGINAL_PATHS = {"/live": "/v0/live", "/metrics": "/v0/metrics"}

#: Counts written as integers, as the document declares them (see integer_properties).
_METRIC_INTS = integer_properties("Metric")
_CANDLE_INTS = integer_properties("Candle")
_RUN_INTS = integer_properties("Run")
_V0_METRIC_INTS = integer_properties("V0Metric")


@dataclass(frozen=True)
class StoreReader:
    """The store reads the endpoints make; :mod:`marketstream.store`'s unless replaced.

    The seam for a test that needs a read to fail (a 500 must stay a short
    JSON line) and for an embedder reading another store with the same shapes.
    """

    market_metrics: Callable[..., pd.DataFrame] = store.market_metrics
    live_wide: Callable[..., pd.DataFrame] = store.live_wide
    candles: Callable[..., pd.DataFrame] = store.candles
    pipeline_runs: Callable[..., pd.DataFrame] = store.pipeline_runs
    health_snapshot: Callable[[Path], store.HealthSnapshot] = store.health_snapshot
    metrics_v0: Callable[[Path], pd.DataFrame] = store.metrics_v0
    live_v0: Callable[[Path, int], pd.DataFrame] = store.live_v0


# --------------------------------------------------------------------------- answers


def _is_volume(name: str) -> bool:
    # Symbols are upper-case, so only the volume columns end in lower-case "volume".
    return name.endswith("volume")


def _metrics(settings: Settings, reader: StoreReader) -> bytes:
    since, until = time_range_params()
    if since is None and until is None:
        frame = reader.market_metrics(store.locate(settings))
    else:
        frame = reader.market_metrics(store.locate(settings), since=since, until=until)
    frame = frame[[*store.METRIC_COLUMNS, "last_tick"]].rename(columns={"last_tick": "time"})
    return json_bytes(frame_records(frame, _METRIC_INTS))


def _live(settings: Settings, reader: StoreReader) -> bytes:
    limit = int_param("limit", LIVE_LIMIT)
    since, until = time_range_params()
    frame = reader.live_wide(store.locate(settings), limit=limit, since=since, until=until)
    return json_bytes(frame_records(frame, _is_volume))


def _candles(settings: Settings, reader: StoreReader) -> bytes:
    symbol = symbol_param("symbol")
    interval_s = interval_param("interval")
    limit = int_param("limit", CANDLES_LIMIT)
    since, until = time_range_params()
    frame = reader.candles(
        store.locate(settings), symbol, interval_s, limit, since=since, until=until
    )
    return json_bytes(frame_records(frame, _CANDLE_INTS))


def _live_v0(settings: Settings, reader: StoreReader) -> bytes:
    frame = reader.live_v0(store.locate(settings), int_param("limit", V0_LIVE_LIMIT))
    return json_bytes(frame_records(frame, _is_volume))


def _metrics_v0(settings: Settings, reader: StoreReader, cache: ReadCache) -> list[dict[str, Any]]:
    """The original's statistics, stamped with the time of the answer as the original was
    (its "Price Trends" panel plots them against it); kept like ``/runs``, stamped after."""
    records = cache.get(
        ("v0-metrics",),
        lambda: frame_records(reader.metrics_v0(store.locate(settings)), _V0_METRIC_INTS),
    )
    now = iso(datetime.now(UTC))
    return [{**record, "time": now} for record in records]


def _runs(settings: Settings, reader: StoreReader, cache: ReadCache) -> dict[str, Any]:
    """Run metrics and health; kept like the other answers, clock-dependent figures taken
    at answer time (:meth:`store.HealthSnapshot.at`).

    Kept because Grafana's health panels poll it with the rest of the dashboard
    and every uncached read competes with the live writer for the file.
    """
    limit = int_param("limit", RUNS_LIMIT)
    since, until = time_range_params()

    def compute() -> tuple[store.HealthSnapshot, list[dict[str, Any]]]:
        snapshot = reader.health_snapshot(store.locate(settings))
        if since is None and until is None:
            frame = reader.pipeline_runs(store.locate(settings), limit)
        else:
            frame = reader.pipeline_runs(store.locate(settings), limit, since=since, until=until)
        return snapshot, frame_records(frame, _RUN_INTS)

    snapshot, runs = cache.get(("runs", limit, since, until), compute)
    health = snapshot.at(datetime.now(UTC).replace(tzinfo=None))
    health["newest_event_time"] = iso(health["newest_event_time"])
    return {"health": health, "runs": runs}


# --------------------------------------------------------------------------- routes


def _register_routes(
    app: Flask,
    settings: Settings,
    reader: StoreReader,
    probe: BrokerProbe,
    cache: ReadCache,
    lag_reader: Callable[[Settings, store.Where], LagReport],
) -> None:
    spec_version = __version__

    @app.get("/")
    def index() -> Response:
        paths = build_spec(spec_version)["paths"]
        endpoints = [{"path": p, "summary": op["get"]["summary"]} for p, op in paths.items()]
        return json_response(
            {
                "name": "marketstream API",
                "version": spec_version,
                "openapi": "/openapi.json",
                "endpoints": endpoints,
            }
        )

    @app.get("/metrics")
    def metrics() -> Response:
        return json_response(_metrics(settings, reader))

    @app.get("/live")
    def live() -> Response:
        return json_response(_live(settings, reader))

    @app.get("/candles")
    def candles() -> Response:
        return json_response(_candles(settings, reader))

    @app.get("/runs")
    def runs() -> Response:
        return json_response(_runs(settings, reader, cache))

    @app.get("/v0/live")
    def live_v0() -> Response:
        return json_response(_live_v0(settings, reader))

    @app.get("/v0/metrics")
    def metrics_v0() -> Response:
        return json_response(_metrics_v0(settings, reader, cache))

    @app.get("/lag")
    def lag() -> Response:
        measured = lag_reader(settings, store.locate(settings))
        body = {
            "topic": settings.topic,
            "lag": measured.total,
            "partitions": measured.rows(),
            "error": measured.broker_error,
        }
        return json_response(body, 503 if measured.broker_error else 200)

    @app.get("/health")
    def health() -> Response:
        body, status = health_report(settings, probe, reader.health_snapshot)
        return json_response(body, status)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return json_response(build_spec(spec_version))


def _register_errors(app: Flask, settings: Settings) -> None:
    @app.errorhandler(BadParameter)
    def bad_parameter(exc: BadParameter) -> Response:
        return json_response({"error": str(exc), "parameter": exc.parameter}, 400)

    @app.errorhandler(StoreUnavailable)
    def unavailable(exc: StoreUnavailable) -> Response:
        return json_response({"error": first_line(exc)}, 503)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        message = exc.description or exc.name
        if isinstance(exc, NotFound):
            message = f"no endpoint {request.path}; GET / lists them"
        response = json_response({"error": message}, exc.code or 500)
        for key, value in exc.get_headers():  # keeps e.g. Allow on a 405
            if key.lower() != "content-type":
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        with contextlib.suppress(OSError):  # an unwritable log must not crash the handler
            get_logger(settings.log_path).error(
                "api_error", exc_info=exc, extra={"path": request.path}
            )
        return json_response({"error": f"internal error ({type(exc).__name__}); see the log"}, 500)


def create_app(
    settings: Settings | None = None,
    *,
    clients: KafkaClients = DEFAULT_CLIENTS,
    broker_check: BrokerCheck | None = None,
    reader: StoreReader | None = None,
    end_offsets: Callable[[Settings], dict[tuple[str, int], int]] | None = None,
) -> Flask:
    """Build the app for ``settings`` (default: from the environment).

    ``/health`` probes the broker with ``clients.reachable`` (the settings'
    SASL/SSL options included), ``/lag`` reads end offsets with ``clients``;
    ``broker_check(settings, timeout_s)`` replaces that probe, for tests and for embedding
    where Kafka reachability is known some other way. ``reader`` replaces the store
    reads (see :class:`StoreReader`).
    """
    settings = settings or Settings.from_env()
    reader = reader or StoreReader()
    app = Flask("marketstream_api", static_folder=None)
    app.config["MARKETSTREAM_SETTINGS"] = settings
    probe = BrokerProbe(settings, broker_check or clients.reachable)
    app.extensions["marketstream_broker_probe"] = probe
    # The cache sits in front of Flask (see ReplayCache): a kept answer costs no Flask work.
    cache = ReadCache(
        store.locate(settings), min_age_s=settings.api_cache_s, max_stale_s=settings.api_stale_s
    )
    app.extensions["marketstream_read_cache"] = cache
    ends = end_offsets or (lambda s: read_end_offsets(s, clients))
    _register_routes(app, settings, reader, probe, cache, lambda s, at: measure_lag(s, at, ends))
    _register_errors(app, settings)

    @app.after_request
    def headers(response: Response) -> Response:
        # Grafana in browser-access mode fetches cross-origin; data is live, never cache it.
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Cache-Control"] = "no-store"
        return response

    app.wsgi_app = ReplayCache(app.wsgi_app, cache, CACHED_PATHS)  # type: ignore[method-assign]
    return app


class OriginalPaths:
    """WSGI wrapper: ``/live`` and ``/metrics`` answer as ``/v0/live`` and ``/v0/metrics``.

    For a dashboard saved against the original kit that its owner cannot or will not
    edit: its panels ask ``http://duckdb-api:8080/live`` and read ``SP500_volume``,
    ``tick_count``... A server run with ``serve --original-paths`` under that name
    answers them; every other path is this API's own. Wraps the app itself, so the
    two shapes share one read cache.
    """

    def __init__(self, app: Callable[..., Any]):
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        target = ORIGINAL_PATHS.get(environ.get("PATH_INFO", ""))
        if target is not None:
            environ = {**environ, "PATH_INFO": target}
        return self.app(environ, start_response)
