"""DataFrames and answers to JSON bytes, in the one format Grafana's panels were built against.

Times are ISO-8601 UTC with microseconds and a ``Z``; missing numbers (NaN,
``pd.NA``, infinities) are ``null``; counts are integers even where DuckDB
handed pandas a float. Serialisation is orjson's: much faster than Flask's
json for the thousands of rows ``/live`` and ``/candles`` return.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
from flask import Response

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATETIME


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


def first_line(exc: BaseException) -> str:
    """An error as the JSON answers show it: its first line, at most 300 characters."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
