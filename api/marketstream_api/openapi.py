"""The API's contract: parameter bounds and the OpenAPI 3.1 document built from them.

The bounds live here, not in the handlers, so the validation the app enforces
and the limits a client reads from ``/openapi.json`` cannot drift apart: the
app imports :data:`LIVE_LIMIT` & co. and the document is generated from them.
Likewise for the answers: the ``Metric`` schema lists the store's
:data:`~marketstream.store.METRIC_COLUMNS`, and the fields a schema declares
integers are the ones the app writes as integers (:func:`integer_properties`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from marketstream.store import METRIC_COLUMNS
from marketstream.ticks import SYMBOL_RE


@dataclass(frozen=True)
class IntBound:
    """An integer query parameter's default and inclusive range."""

    default: int
    minimum: int
    maximum: int

    def schema(self) -> dict[str, Any]:
        return {
            "type": "integer",
            "default": self.default,
            "minimum": self.minimum,
            "maximum": self.maximum,
        }


LIVE_LIMIT = IntBound(default=300, minimum=1, maximum=5000)
CANDLES_LIMIT = IntBound(default=500, minimum=1, maximum=5000)
RUNS_LIMIT = IntBound(default=50, minimum=1, maximum=1000)
#: ``/v0/live`` answers the original kit's 50 rows unless asked for more.
V0_LIVE_LIMIT = IntBound(default=50, minimum=1, maximum=5000)

#: Candle widths in seconds: one second up to one day.
INTERVAL_MIN_S = 1
INTERVAL_MAX_S = 86_400
INTERVAL_DEFAULT = "1m"
INTERVAL_PATTERN = r"^[1-9][0-9]{0,4}[smh]$"

SYMBOL_PATTERN = SYMBOL_RE.pattern

_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
_TIME = {"type": "string", "format": "date-time", "example": "2025-01-06T14:30:00.000000Z"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


#: The JSON type of each ``market_metrics`` column (:data:`store.METRIC_COLUMNS`) that is
#: not a price; prices are numbers, null for a symbol without ticks.
_METRIC_TYPES: dict[str, dict[str, Any]] = {
    "symbol": {"type": "string", "pattern": SYMBOL_PATTERN},
    "tickcount": {"type": "integer"},
    "totalvolume": _NULLABLE_INT,
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _array_of(name: str, description: str) -> dict[str, Any]:
    return _json({"type": "array", "items": _ref(name)}, description)


def _errors(*codes: int) -> dict[str, Any]:
    """The JSON error responses every data endpoint can give."""
    texts = {
        400: ("BadParameter", "a query parameter is invalid; `parameter` names it"),
        503: ("Error", "no database yet, or it stayed locked by the writer"),
        500: ("Error", "unexpected failure (short message, no traceback)"),
    }
    return {str(c): _json(_ref(texts[c][0]), texts[c][1]) for c in codes}


def _limit(bound: IntBound, what: str) -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"at most this many {what}",
        "schema": bound.schema(),
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "BadParameter": {
        "type": "object",
        "required": ["error", "parameter"],
        "properties": {"error": {"type": "string"}, "parameter": {"type": "string"}},
    },
    "Metric": {
        "type": "object",
        "required": list(METRIC_COLUMNS),
        "properties": {
            **{column: _METRIC_TYPES.get(column, _NULLABLE_NUMBER) for column in METRIC_COLUMNS},
            "time": {**_TIME, "description": "event time of the symbol's last tick (UTC)"},
        },
    },
    "LiveRow": {
        "type": "object",
        "required": ["time"],
        "description": (
            "One second of ticks: `time`, then for every symbol present a price column "
            "named after the symbol (last price in that second) and a `<SYMBOL>volume` "
            "column (summed volume); null where a symbol had no tick in that second."
        ),
        "properties": {"time": _TIME},
        "additionalProperties": {"type": ["number", "integer", "null"]},
        "example": {
            "time": "2025-01-06T14:30:00.000000Z",
            "SP500": 5901.25,
            "SP500volume": 2100,
        },
    },
    "V0Metric": {
        "type": "object",
        "description": (
            "The original kit's per-symbol statistics: its field names, prices rounded "
            "to 2 decimals, `time` the moment of the answer."
        ),
        "required": ["symbol", "tick_count", "avg_price", "max_price", "min_price", "time"],
        "properties": {
            "symbol": {"type": "string", "pattern": SYMBOL_PATTERN},
            "tick_count": {"type": "integer"},
            "avg_price": {"type": "number"},
            "max_price": {"type": "number"},
            "min_price": {"type": "number"},
            "time": {**_TIME, "description": "when the answer was given (UTC)"},
        },
    },
    "V0LiveRow": {
        "type": "object",
        "required": ["time"],
        "description": (
            "The original kit's `/live` row: a second in which every symbol of the store "
            "ticked, `time`, a price column named after each symbol (last price) and a "
            "`<SYMBOL>_volume` column (summed volume)."
        ),
        "properties": {"time": _TIME},
        "additionalProperties": {"type": ["number", "integer"]},
        "example": {
            "time": "2025-01-06T14:30:00.000000Z",
            "SP500": 5901.25,
            "SP500_volume": 2100,
        },
    },
    "Candle": {
        "type": "object",
        "required": ["time", "open", "high", "low", "close", "volume", "vwap", "ticks"],
        "properties": {
            "time": {**_TIME, "description": "start of the bucket (UTC)"},
            "open": {"type": "number"},
            "high": {"type": "number"},
            "low": {"type": "number"},
            "close": {"type": "number"},
            "volume": {"type": "integer"},
            "vwap": {**_NULLABLE_NUMBER, "description": "null when the bucket's volume is 0"},
            "ticks": {"type": "integer"},
        },
    },
    "Run": {
        "type": "object",
        "description": "one consumer run (a row of pipeline_metrics)",
        "properties": {
            "run_id": {"type": "string"},
            "mode": {"type": ["string", "null"]},
            "topic": {"type": ["string", "null"]},
            "started_at": _NULLABLE_TIME,
            "ended_at": _NULLABLE_TIME,
            "elapsed_s": _NULLABLE_NUMBER,
            "messages_processed": _NULLABLE_INT,
            "rows_inserted": _NULLABLE_INT,
            "duplicates": _NULLABLE_INT,
            "errors": _NULLABLE_INT,
            "max_event_time": _NULLABLE_TIME,
            "throughput_per_s": _NULLABLE_NUMBER,
            "status": {"type": ["string", "null"]},
            "lost_commits": {
                **_NULLABLE_INT,
                "description": "Kafka commits refused because the group had moved on",
            },
            "conflicts": {
                **_NULLABLE_INT,
                "description": "lake commits lost to another writer, then retried",
            },
        },
    },
    "StoreHealth": {
        "type": "object",
        "required": [
            "ticks",
            "dead_letters",
            "errors",
            "throughput_per_s",
            "ingest_rate_per_s",
            "freshness_s",
            "newest_event_time",
        ],
        "properties": {
            "ticks": {"type": "integer"},
            "dead_letters": {"type": "integer"},
            "errors": {"type": "integer", "description": "sum of errors over all runs"},
            "throughput_per_s": {**_NULLABLE_NUMBER, "description": "of the newest finished run"},
            "ingest_rate_per_s": {
                "type": "number",
                "description": "ticks stored per second over the last 10 s (live throughput)",
            },
            "freshness_s": {**_NULLABLE_NUMBER, "description": "now minus newest event time"},
            "newest_event_time": _NULLABLE_TIME,
        },
    },
    "Runs": {
        "type": "object",
        "required": ["health", "runs"],
        "properties": {
            "health": _ref("StoreHealth"),
            "runs": {"type": "array", "items": _ref("Run")},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "store", "broker"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "empty", "degraded"]},
            "store": {
                "type": "object",
                "required": ["reachable", "path", "ticks", "error"],
                "properties": {
                    "reachable": {"type": "boolean"},
                    "path": {"type": "string"},
                    "ticks": _NULLABLE_INT,
                    "error": {"type": ["string", "null"]},
                },
            },
            "broker": {
                "type": "object",
                "required": ["reachable", "bootstrap_servers"],
                "properties": {
                    "reachable": {"type": "boolean"},
                    "bootstrap_servers": {"type": "string"},
                },
            },
        },
    },
    "PartitionLag": {
        "type": "object",
        "required": [
            "topic",
            "partition",
            "end_offset",
            "stored_position",
            "lag",
            "newest_tick_age_s",
        ],
        "properties": {
            "topic": {"type": "string"},
            "partition": {"type": "integer"},
            "end_offset": _NULLABLE_INT,
            "stored_position": _NULLABLE_INT,
            "lag": _NULLABLE_INT,
            "newest_tick_age_s": {"type": ["number", "null"]},
        },
    },
    "Lag": {
        "type": "object",
        "required": ["topic", "lag", "partitions", "error"],
        "properties": {
            "topic": {"type": "string"},
            "lag": _NULLABLE_INT,
            "partitions": {"type": "array", "items": _ref("PartitionLag")},
            "error": {"type": ["string", "null"]},
        },
    },
    "Index": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "openapi": {"type": "string"},
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "summary": {"type": "string"}},
                },
            },
        },
    },
}


def _paths() -> dict[str, Any]:
    since = {
        "name": "since",
        "in": "query",
        "required": False,
        "description": (
            "only ticks strictly after this instant: ISO-8601 (naive = UTC, e.g. "
            "2025-01-06T14:30:00Z) or epoch milliseconds as Grafana's ${__from} "
            "(Infinity: ${__timeFrom}) gives"
        ),
        "schema": {"type": "string", "example": "2025-01-06T14:30:00Z"},
    }
    until = {
        "name": "until",
        "in": "query",
        "required": False,
        "description": (
            "only ticks at or before this instant, in the same formats as since "
            "(Grafana's ${__to}, Infinity's ${__timeTo}); not before since"
        ),
        "schema": {"type": "string", "example": "2025-01-06T14:45:00Z"},
    }
    time_range = [since, until]
    symbol = {
        "name": "symbol",
        "in": "query",
        "required": True,
        "schema": {"type": "string", "pattern": SYMBOL_PATTERN, "example": "SP500"},
    }
    interval = {
        "name": "interval",
        "in": "query",
        "required": False,
        "description": (
            f"bucket width: N seconds/minutes/hours (1s, 5s, 1m, 5m, 1h), "
            f"{INTERVAL_MIN_S}s to {INTERVAL_MAX_S // 3600}h"
        ),
        "schema": {"type": "string", "pattern": INTERVAL_PATTERN, "default": INTERVAL_DEFAULT},
    }
    return {
        "/": {
            "get": {
                "summary": "this index of endpoints",
                "responses": {"200": _json(_ref("Index"), "endpoint list")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "per-symbol tick count, average/max/min price, total volume",
                "description": "over every tick, or over the ticks in (since, until]",
                "parameters": time_range,
                "responses": {
                    "200": _array_of("Metric", "one object per symbol, by symbol"),
                    **_errors(400, 503, 500),
                },
            }
        },
        "/live": {
            "get": {
                "summary": "recent ticks per second, one wide row per second (Grafana)",
                "parameters": [_limit(LIVE_LIMIT, "seconds (newest kept)"), *time_range],
                "responses": {
                    "200": _array_of("LiveRow", "oldest first"),
                    **_errors(400, 503, 500),
                },
            }
        },
        "/candles": {
            "get": {
                "summary": "OHLCV candles with VWAP for one symbol",
                "parameters": [
                    symbol,
                    interval,
                    _limit(CANDLES_LIMIT, "candles (newest kept)"),
                    *time_range,
                ],
                "responses": {
                    "200": _array_of("Candle", "oldest first; [] for an unknown symbol"),
                    **_errors(400, 503, 500),
                },
            }
        },
        "/runs": {
            "get": {
                "summary": "store health and the newest consumer runs",
                "description": (
                    "health is always now; with since/until, runs are those that ran "
                    "during (since, until]"
                ),
                "parameters": [_limit(RUNS_LIMIT, "runs"), *time_range],
                "responses": {
                    "200": _json(_ref("Runs"), "health plus runs, newest first"),
                    **_errors(400, 503, 500),
                },
            }
        },
        "/v0/live": {
            "get": {
                "summary": "the original kit's /live: seconds every symbol ticked in",
                "parameters": [_limit(V0_LIVE_LIMIT, "seconds (newest kept)")],
                "responses": {
                    "200": _array_of("V0LiveRow", "newest first"),
                    **_errors(400, 503, 500),
                },
            }
        },
        "/v0/metrics": {
            "get": {
                "summary": "the original kit's /metrics: tick_count, avg/max/min_price",
                "responses": {
                    "200": _array_of("V0Metric", "one object per symbol, by symbol"),
                    **_errors(503, 500),
                },
            }
        },
        "/lag": {
            "get": {
                "summary": "per partition: the topic's end offset, the store's position, lag",
                "description": (
                    "lag is measured from the store's own position (where a consumer resumes), "
                    "not from a consumer group; with read_committed the end offset is the last "
                    "stable offset. newest_tick_age_s is now minus the newest stored tick's "
                    "event time."
                ),
                "responses": {
                    "200": _json(_ref("Lag"), "one object per partition, by partition"),
                    "503": _json(
                        _ref("Lag"),
                        "Kafka did not answer (error names it): the store's positions are "
                        "still given, end offsets and lag are null; or the store is unreadable",
                    ),
                    "500": _json(_ref("Error"), "unexpected failure (short message)"),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "is the store readable, is the broker reachable",
                "responses": {
                    "200": _json(_ref("Health"), "store readable, ticks stored"),
                    "503": _json(
                        _ref("Health"),
                        "no ticks stored yet (status empty), or the store unreadable "
                        "(status degraded)",
                    ),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this OpenAPI document",
                "responses": {"200": {"description": "OpenAPI 3.1 JSON"}},
            }
        },
    }


def build_spec(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document; built fresh so callers may not mutate a shared copy."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "marketstream API",
            "version": version,
            "description": (
                "Read-only JSON over the marketstream DuckDB store, shaped for Grafana's "
                "Infinity datasource. Times are ISO-8601 UTC with a Z suffix; missing "
                "numbers are null. Unknown query parameters are ignored."
            ),
        },
        "paths": _paths(),
        "components": {"schemas": copy.deepcopy(_SCHEMAS)},
    }


def _types(prop: dict[str, Any]) -> list[str]:
    kind = prop.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def integer_properties(schema: str) -> frozenset[str]:
    """The properties the named response schema declares integers (nullable or not).

    The app turns exactly these into ``int`` (DuckDB's ``sum(BIGINT)`` reaches
    pandas as a float), so the document and the answers cannot disagree.
    """
    properties = _SCHEMAS[schema]["properties"]
    return frozenset(name for name, prop in properties.items() if "integer" in _types(prop))
