"""The Flask app Grafana's Infinity datasource reads: JSON over the DuckDB store, read-only.

Handlers only validate parameters, call :mod:`marketstream.store` (where all
SQL lives) and shape frames into the JSON Grafana panels were built against.
Every outcome is JSON, errors included, because Infinity shows a JSON error
message to the user but chokes on an HTML traceback page.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, NotFound

from marketstream import __version__, store
from marketstream.logs import get_logger
from marketstream.settings import Settings
from marketstream.ticks import SYMBOL_RE, TickError, parse_timestamp

from .cache import ReadCache, ReplayCache
from .openapi import (
    CANDLES_LIMIT,
    INTERVAL_DEFAULT,
    INTERVAL_MAX_S,
    INTERVAL_MIN_S,
    LIVE_LIMIT,
    RUNS_LIMIT,
    IntBound,
    build_spec,
)

#: ``(bootstrap_servers, timeout_s) -> reachable``; the default is marketstream.broker's.
BrokerCheck = Callable[[str, float], bool]

#: The paths whose 200 answers the read cache keeps and replays (they only read the store).
CACHED_PATHS = frozenset({"/metrics", "/live", "/candles"})

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATETIME
_INTERVAL_RE = re.compile(r"^(\d{1,6})([smh])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
#: ``+00:00`` sent unencoded in a query string arrives as `` 00:00``; this spots it.
_SPACED_OFFSET_RE = re.compile(r"^(.*\d) (\d{2}(?::?\d{2})?)$")


class BadParameter(ValueError):
    """A query parameter that cannot be used; becomes a 400 naming the parameter."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


# --------------------------------------------------------------------------- JSON


def iso(ts: datetime | pd.Timestamp | None) -> str | None:
    """ISO-8601 UTC with microseconds and ``Z`` (naive values are UTC, as in the store)."""
    if ts is None or ts is pd.NaT:
        return None
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(value: Any) -> Any:
    """orjson's fallback: datetimes in our one format, pandas missing values as null."""
    if isinstance(value, datetime):
        return iso(value)
    if value is pd.NA or value is pd.NaT:
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_bytes(payload: Any) -> bytes:
    """Serialise with orjson (much faster than Flask's json for thousands of rows)."""
    return orjson.dumps(payload, default=_json_default, option=_JSON_OPTIONS)


def json_response(payload: Any, status: int = 200) -> Response:
    """``payload`` as a JSON response (bytes already serialised are sent as they are)."""
    body = payload if isinstance(payload, bytes) else json_bytes(payload)
    return Response(body, status=status, mimetype="application/json")


def _time_strings(series: pd.Series) -> list[str | None]:
    """A datetime column as ISO strings, vectorised (per-value strftime is slow at 5000 rows)."""
    if getattr(series.dt, "tz", None) is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    text = np.datetime_as_string(series.to_numpy(dtype="datetime64[us]"), unit="us")
    return [None if t == "NaT" else f"{t}Z" for t in text]


def _column_values(series: pd.Series, as_int: bool) -> list[Any]:
    """One column as JSON-ready Python values: missing -> None, counts -> int."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return _time_strings(series)
    missing = series.isna().to_numpy()
    values = series.tolist()
    if as_int:
        return [None if m else int(v) for v, m in zip(values, missing, strict=True)]
    if pd.api.types.is_float_dtype(series):
        return [
            None if m or not math.isfinite(v) else v for v, m in zip(values, missing, strict=True)
        ]
    return [None if m else v for v, m in zip(values, missing, strict=True)]


def frame_records(
    frame: pd.DataFrame, int_columns: Collection[str] | Callable[[str], bool] = ()
) -> list[dict[str, Any]]:
    """Rows as dicts in column order; ``int_columns`` names counts DuckDB returned as floats.

    DuckDB's ``sum(BIGINT)`` is a HUGEINT that reaches pandas as float64, and a
    pivot fills gaps with NaN, so volumes would otherwise come out as ``1066.0``.
    """
    is_int = int_columns if callable(int_columns) else int_columns.__contains__
    names = [str(c) for c in frame.columns]
    columns = [_column_values(frame.iloc[:, i], is_int(n)) for i, n in enumerate(names)]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


# --------------------------------------------------------------------------- parameters


def _arg(name: str) -> str | None:
    """A query parameter, with empty values treated as absent (Grafana sends ``x=``)."""
    value = request.args.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def int_param(name: str, bound: IntBound) -> int:
    """An integer within ``bound``, or its default when absent."""
    raw = _arg(name)
    if raw is None:
        return bound.default
    expected = f"{name} must be an integer from {bound.minimum} to {bound.maximum}"
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(name, f"{expected}, got {raw!r}") from None
    if not bound.minimum <= value <= bound.maximum:
        raise BadParameter(name, f"{expected}, got {value}")
    return value


def since_param(name: str = "since") -> datetime | None:
    """An instant as naive UTC (how the store keeps times): ISO-8601 or epoch milliseconds."""
    raw = _arg(name)
    if raw is None:
        return None
    expected = f"{name} must be ISO-8601 (e.g. 2025-01-06T14:30:00Z) or epoch milliseconds"
    if raw.isascii() and raw.isdigit():  # not "²" or "①": isdigit() alone says yes to those
        if len(raw) > 14:
            raise BadParameter(name, f"{expected}, got {raw!r}")
        return datetime.fromtimestamp(int(raw) / 1000, UTC).replace(tzinfo=None)
    spaced = _SPACED_OFFSET_RE.match(raw)
    candidates = [raw, f"{spaced.group(1)}+{spaced.group(2)}"] if spaced else [raw]
    for candidate in candidates:
        try:
            return parse_timestamp(candidate).replace(tzinfo=None)
        except TickError:
            continue
    raise BadParameter(name, f"{expected}, got {raw!r}")


def symbol_param(name: str = "symbol") -> str:
    """A required symbol in the tick format; checked here so nothing odd reaches a query."""
    raw = _arg(name)
    if raw is None:
        raise BadParameter(name, f"{name} is required, e.g. {name}=SP500")
    if not SYMBOL_RE.match(raw):
        raise BadParameter(name, f"{name} must be 1-32 of A-Z 0-9 . _ -, got {raw!r}")
    return raw


def interval_param(name: str = "interval") -> int:
    """A candle width like ``5s``, ``1m`` or ``1h``, in seconds."""
    raw = _arg(name) or INTERVAL_DEFAULT
    expected = (
        f"{name} must be N followed by s, m or h (e.g. 1s, 5m, 1h), "
        f"from {INTERVAL_MIN_S}s to {INTERVAL_MAX_S // 3600}h"
    )
    match = _INTERVAL_RE.match(raw)
    if not match:
        raise BadParameter(name, f"{expected}, got {raw!r}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not INTERVAL_MIN_S <= seconds <= INTERVAL_MAX_S:
        raise BadParameter(name, f"{expected}, got {raw!r}")
    return seconds


# --------------------------------------------------------------------------- broker


def _default_broker_check(bootstrap_servers: str, timeout_s: float) -> bool:
    """marketstream.broker's probe, imported late so the API runs even without that module."""
    from marketstream.broker import is_reachable

    return bool(is_reachable(bootstrap_servers, timeout_s))


def _settings_broker_check(settings: Settings) -> BrokerCheck:
    """The probe with the settings' SASL/SSL options, so a secured cluster reads as up."""

    def check(bootstrap_servers: str, timeout_s: float) -> bool:
        from marketstream.broker import _settings_reachable

        local = settings.with_(bootstrap_servers=bootstrap_servers)
        return bool(_settings_reachable(local, timeout_s))

    return check


class BrokerProbe:
    """Broker reachability, cached for ``ttl_s`` so a busy /health asks Kafka ~once per ttl.

    While one request probes, the others answer with the previous result
    instead of queueing behind a probe that may take ``timeout_s``.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        check: BrokerCheck | None = None,
        *,
        ttl_s: float = 2.0,
        timeout_s: float = 1.0,
    ):
        self.bootstrap_servers = bootstrap_servers
        self.check = check or _default_broker_check
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._value: bool | None = None
        self._checked_at = 0.0

    def _fresh(self) -> bool:
        return self._value is not None and time.monotonic() - self._checked_at < self.ttl_s

    def reachable(self) -> bool:
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
            return bool(self.check(self.bootstrap_servers, self.timeout_s))
        except Exception:  # ImportError, KafkaTimeoutError, OSError: all mean "not reachable"
            return False


# --------------------------------------------------------------------------- handlers


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _store_health(settings: Settings) -> dict[str, Any]:
    """The store half of /health; any failure to read is reported, never raised."""
    state: dict[str, Any] = {
        "reachable": False,
        "path": str(settings.db_path),
        "ticks": None,
        "error": None,
    }
    try:
        state["ticks"] = store.health(settings.db_path)["ticks"]
        state["reachable"] = True
    except Exception as exc:
        state["error"] = _first_line(exc)
    return state


def _metrics(settings: Settings) -> bytes:
    frame = store.market_metrics(settings.db_path)
    columns = ["symbol", "tickcount", "avgprice", "maxprice", "minprice", "totalvolume"]
    frame = frame[[*columns, "last_tick"]].rename(columns={"last_tick": "time"})
    return json_bytes(frame_records(frame, {"tickcount", "totalvolume"}))


def _live(settings: Settings) -> bytes:
    limit = int_param("limit", LIVE_LIMIT)
    since = since_param("since")
    frame = store.live_wide(settings.db_path, limit=limit, since=since)
    # Symbols are upper-case, so only the volume columns end in lower-case "volume".
    return json_bytes(frame_records(frame, lambda name: name.endswith("volume")))


def _candles(settings: Settings) -> bytes:
    symbol = symbol_param("symbol")
    interval_s = interval_param("interval")
    limit = int_param("limit", CANDLES_LIMIT)
    frame = store.candles(settings.db_path, symbol, interval_s, limit)
    return json_bytes(frame_records(frame, {"volume", "ticks"}))


def _runs(settings: Settings, cache: ReadCache) -> dict[str, Any]:
    """Run metrics and health; kept like the other answers, clock-dependent figures taken
    at answer time (:meth:`store.HealthSnapshot.at`).

    Kept because Grafana's health panels poll it with the rest of the dashboard
    and every uncached read competes with the live writer for the file.
    """
    limit = int_param("limit", RUNS_LIMIT)

    def compute() -> tuple[store.HealthSnapshot, list[dict[str, Any]]]:
        snapshot = store.health_snapshot(settings.db_path)
        runs = frame_records(
            store.pipeline_runs(settings.db_path, limit),
            {"messages_processed", "rows_inserted", "duplicates", "errors"},
        )
        return snapshot, runs

    snapshot, runs = cache.get(("runs", limit), compute)
    health = snapshot.at(datetime.now(UTC).replace(tzinfo=None))
    health["newest_event_time"] = iso(health["newest_event_time"])
    return {"health": health, "runs": runs}


def _register_routes(app: Flask, settings: Settings, probe: BrokerProbe, cache: ReadCache) -> None:
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
        return json_response(_metrics(settings))

    @app.get("/live")
    def live() -> Response:
        return json_response(_live(settings))

    @app.get("/candles")
    def candles() -> Response:
        return json_response(_candles(settings))

    @app.get("/runs")
    def runs() -> Response:
        return json_response(_runs(settings, cache))

    @app.get("/health")
    def health() -> Response:
        store_state = _store_health(settings)
        body = {
            "status": "ok" if store_state["reachable"] else "degraded",
            "store": store_state,
            "broker": {
                "reachable": probe.reachable(),
                "bootstrap_servers": settings.bootstrap_servers,
            },
        }
        return json_response(body, 200 if store_state["reachable"] else 503)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return json_response(build_spec(spec_version))


def _register_errors(app: Flask, settings: Settings) -> None:
    @app.errorhandler(BadParameter)
    def bad_parameter(exc: BadParameter) -> Response:
        return json_response({"error": str(exc), "parameter": exc.parameter}, 400)

    @app.errorhandler(store.StoreUnavailable)
    def unavailable(exc: store.StoreUnavailable) -> Response:
        return json_response({"error": _first_line(exc)}, 503)

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
    settings: Settings | None = None, *, broker_check: BrokerCheck | None = None
) -> Flask:
    """Build the app for ``settings`` (default: from the environment).

    ``broker_check`` replaces marketstream.broker's probe, for tests and for
    embedding where Kafka reachability is known some other way.
    """
    settings = settings or Settings.from_env()
    app = Flask("marketstream_api", static_folder=None)
    app.config["MARKETSTREAM_SETTINGS"] = settings
    check = broker_check or _settings_broker_check(settings)
    probe = BrokerProbe(settings.bootstrap_servers, check)
    app.extensions["marketstream_broker_probe"] = probe
    # The cache sits in front of Flask (see ReplayCache): a kept answer costs no Flask work.
    cache = ReadCache(
        settings.db_path, min_age_s=settings.api_cache_s, max_stale_s=settings.api_stale_s
    )
    app.extensions["marketstream_read_cache"] = cache
    _register_routes(app, settings, probe, cache)
    _register_errors(app, settings)

    @app.after_request
    def headers(response: Response) -> Response:
        # Grafana in browser-access mode fetches cross-origin; data is live, never cache it.
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Cache-Control"] = "no-store"
        return response

    app.wsgi_app = ReplayCache(app.wsgi_app, cache, CACHED_PATHS)  # type: ignore[method-assign]
    return app
