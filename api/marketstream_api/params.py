"""Query parameters, checked before anything reaches the store.

Every parameter is validated here against the bounds :mod:`.openapi` publishes,
so user text reaches DuckDB only as a value of the right type (and then only
as a bound parameter, see :mod:`marketstream.store`). A value that cannot be
used is a :class:`BadParameter`, which the app turns into a 400 naming it.

Grafana sends unset dashboard variables as empty values (``limit=``), so an
empty value means "absent" everywhere.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from flask import request

from marketstream.errors import MarketstreamError
from marketstream.ticks import SYMBOL_RE, TickError, parse_timestamp

from .openapi import INTERVAL_DEFAULT, INTERVAL_MAX_S, INTERVAL_MIN_S, IntBound

_INTERVAL_RE = re.compile(r"^(\d{1,6})([smh])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
#: ``+00:00`` sent unencoded in a query string arrives as `` 00:00``; this spots it.
_SPACED_OFFSET_RE = re.compile(r"^(.*\d) (\d{2}(?::?\d{2})?)$")


class BadParameter(MarketstreamError, ValueError):
    """A query parameter that cannot be used; becomes a 400 naming the parameter."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


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


def instant_param(name: str) -> datetime | None:
    """An instant as naive UTC (how the store keeps times): ISO-8601 or epoch milliseconds
    (what Grafana's ``${__from}``/``${__to}`` and Infinity's ``${__timeFrom}``/``${__timeTo}``
    give), or None when absent."""
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


def since_param(name: str = "since") -> datetime | None:
    """The start of a time range, exclusive (see :func:`instant_param`)."""
    return instant_param(name)


def until_param(name: str = "until") -> datetime | None:
    """The end of a time range, inclusive (see :func:`instant_param`)."""
    return instant_param(name)


def time_range_params() -> tuple[datetime | None, datetime | None]:
    """``since`` and ``until``; a range that ends before it starts is a 400 naming ``until``."""
    since, until = since_param(), until_param()
    if since is not None and until is not None and until < since:
        raise BadParameter("until", f"until ({until:%Y-%m-%dT%H:%M:%S}Z) is before since")
    return since, until


def symbol_param(name: str = "symbol") -> str:
    """A required symbol in the tick format; checked here so nothing odd reaches a query."""
    raw = _arg(name)
    if raw is None:
        raise BadParameter(name, f"{name} is required, e.g. {name}=SP500")
    if not SYMBOL_RE.fullmatch(raw):
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
