"""Synthetic market-index ticks: the pure part of the pipeline.

Nothing here touches Kafka or DuckDB, so the random walk, the CSV format and
the message (de)serialisation are unit-testable on their own. A tick's
identity is (symbol, event timestamp); the Kafka key is the symbol.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson

#: CSV columns, as in the seed's ``indices_sample.csv``.
CSV_COLUMNS = ("timestamp", "symbol", "price", "volume")

#: Realistic start levels and daily-ish volatility for the default symbols; any
#: other symbol gets a level derived from its name so runs stay deterministic.
START_LEVELS = {"SP500": 5900.0, "STOXX600": 520.0, "NIKKEI225": 38500.0}
BASE_VOLUMES = {"SP500": 2_000, "STOXX600": 800, "NIKKEI225": 1_200}

#: Default start of a generated batch: fixed, so the same seed gives the same
#: CSV and re-running the pipeline re-sends the same ticks (which dedupe).
DEFAULT_START = datetime(2025, 1, 6, 14, 30, tzinfo=UTC)

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9._-]{0,31}$")

#: A message's timestamp, in one form: ISO-8601's extended date-time as RFC 3339 profiles
#: it, the offset optional (naive is UTC): ``YYYY-MM-DDTHH:MM:SS[.fraction][Z|±HH:MM]``.
#: ``fromisoformat`` alone also takes any character as the separator ("X", NUL), a date
#: alone, week dates, the basic format, offset seconds and minute 75 (+05:75 as +06:15),
#: and after parse_timestamp's strip, a padded or "\n"-ended text. A CSV cell or an API
#: query may still be written loosely: only messages are held to this.
MESSAGE_TIMESTAMP_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.(?P<fraction>[0-9]+))?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)

#: Largest volume accepted: 2**53 - 1, the largest integer a JSON reader that uses
#: doubles (Grafana, any browser) still reads exactly; far below BIGINT's limit, so
#: an absurd volume is a dead letter instead of an overflow in the Arrow batch.
MAX_VOLUME = 2**53 - 1

#: Event years accepted: a tick from before the epoch or centuries ahead is a typo
#: (or a unit mix-up), not market data. The consumer's vectorised check reads these too.
MIN_YEAR, MAX_YEAR = 1970, 2200


class TickError(ValueError):  # a dead-letter reason, not a MarketstreamError: never raised to users
    """A value that is not a valid tick; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Tick:
    """One market-index tick."""

    timestamp: datetime
    symbol: str
    price: float
    volume: int

    def to_message(self) -> bytes:
        """The Kafka message value: compact JSON with an ISO-8601 UTC timestamp.

        The one serialiser of a tick, for the batch producer and live mode alike.
        """
        return orjson.dumps(
            {
                "timestamp": format_timestamp(self.timestamp),
                "symbol": self.symbol,
                "price": self.price,
                "volume": self.volume,
            }
        )

    @property
    def key(self) -> bytes:
        """The Kafka key: the symbol, so one symbol's ticks stay ordered in one partition."""
        return self.symbol.encode()


def format_timestamp(ts: datetime) -> str:
    """ISO-8601 in UTC with microseconds and a ``Z``, the one format on the wire and in CSV.

    Speed: ``astimezone`` + ``strftime`` cost ~12 us a tick, more than
    kafka-python's whole ``send``; for a UTC (or naive, taken as UTC) time from
    year 1000 on, ``isoformat`` (C) gives the same text ~10x faster.
    """
    if ts.year >= 1000:
        if ts.tzinfo is UTC:
            return ts.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"
        if ts.tzinfo is None:
            return ts.isoformat(timespec="microseconds") + "Z"
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(raw: str) -> datetime:
    """Parse an ISO-8601 timestamp; naive values are taken as UTC."""
    try:
        ts = datetime.fromisoformat(raw.strip())
    except (ValueError, AttributeError):
        raise TickError(f"timestamp {raw!r} is not ISO-8601") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    try:  # the range is of the UTC year: "1970-01-01T00:30+01:00" is before the epoch
        utc = ts.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 pushed out of datetime's range by its offset
        utc = None
    if utc is None or not MIN_YEAR <= utc.year <= MAX_YEAR:
        raise TickError(f"timestamp {raw!r} is out of range ({MIN_YEAR}-{MAX_YEAR})")
    return utc


def validate(timestamp: datetime, symbol: str, price: float, volume: int) -> Tick:
    """Check one tick's fields and return it; raise :class:`TickError` naming the bad field."""
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):  # `$` allows a final \n
        raise TickError(f"symbol {symbol!r} is not 1-32 upper-case letters/digits/._-")
    if isinstance(price, bool) or not isinstance(price, int | float):
        raise TickError(f"price {price!r} is not a number")
    if not math.isfinite(price) or price <= 0:
        raise TickError(f"price {price!r} must be a positive finite number")
    if isinstance(volume, bool) or not isinstance(volume, int):
        if isinstance(volume, float) and volume.is_integer():
            volume = int(volume)
        else:
            raise TickError(f"volume {volume!r} is not an integer")
    if volume < 0:
        raise TickError(f"volume {volume!r} must not be negative")
    if volume > MAX_VOLUME:
        raise TickError(f"volume {volume!r} is absurd (more than {MAX_VOLUME})")
    return Tick(timestamp, symbol, float(price), volume)


def tick_from_message(value: bytes) -> Tick:
    """Decode and validate one Kafka message value; :class:`TickError` on anything invalid."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise TickError(f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TickError("message is not a JSON object")
    missing = [c for c in CSV_COLUMNS if c not in data]
    if missing:
        raise TickError(f"missing field(s): {', '.join(missing)}")
    raw = data["timestamp"]
    if not isinstance(raw, str):
        raise TickError("timestamp is not a string")
    form = MESSAGE_TIMESTAMP_RE.fullmatch(raw)
    if form is None:
        raise TickError(
            f"timestamp {raw!r} is not ISO-8601 (YYYY-MM-DDTHH:MM:SS[.ffffff][Z|±HH:MM])"
        )
    if (form["fraction"] or "")[6:].strip("0"):  # the store keeps microseconds: no rounding
        raise TickError(f"timestamp {raw!r} is more precise than microseconds")
    return validate(parse_timestamp(raw), data["symbol"], data["price"], data["volume"])


def start_level(symbol: str) -> float:
    """A plausible index level for any symbol (known ones use their real ballpark)."""
    if symbol in START_LEVELS:
        return START_LEVELS[symbol]
    return 100.0 + (sum(symbol.encode()) * 37) % 9_900


def generate_ticks(
    symbols: Sequence[str],
    ticks_per_symbol: int,
    *,
    seed: int = 42,
    start: datetime = DEFAULT_START,
    interval: timedelta = timedelta(seconds=1),
    volatility: float = 0.0004,
) -> list[Tick]:
    """A geometric random walk per symbol, interleaved in time order.

    Deterministic for a given seed. Prices are rounded to cents; volumes follow
    a log-normal around a per-symbol base, which is how index tick volumes look.
    """
    rng = np.random.default_rng(seed)
    n = ticks_per_symbol
    ticks: list[Tick] = []
    columns = []
    for symbol in symbols:
        validate(start, symbol, 1.0, 0)
        shocks = rng.normal(-0.5 * volatility**2, volatility, n)
        prices = np.round(start_level(symbol) * np.exp(np.cumsum(shocks)), 2)
        base = BASE_VOLUMES.get(symbol, 1_000)
        volumes = np.maximum(1, rng.lognormal(math.log(base), 0.5, n)).astype(np.int64)
        columns.append((symbol, prices.tolist(), volumes.tolist()))
    for i in range(n):
        ts = start + i * interval
        for symbol, prices, volumes in columns:
            ticks.append(Tick(ts, symbol, prices[i], volumes[i]))
    return ticks


class RandomWalk:
    """An endless random walk for live mode: call :meth:`step` to get the next tick of a symbol."""

    def __init__(self, symbols: Sequence[str], *, seed: int | None = None, volatility=0.0004):
        self._rng = np.random.default_rng(seed)
        self._levels = {s: start_level(s) for s in symbols}
        self._volatility = volatility

    def step(self, symbol: str, now: datetime | None = None) -> Tick:
        """Move one symbol one step and return the tick, stamped ``now`` (UTC)."""
        v = self._volatility
        self._levels[symbol] *= math.exp(self._rng.normal(-0.5 * v * v, v))
        base = BASE_VOLUMES.get(symbol, 1_000)
        volume = max(1, int(self._rng.lognormal(math.log(base), 0.5)))
        return Tick(now or datetime.now(UTC), symbol, round(self._levels[symbol], 2), volume)


def write_csv(ticks: Iterable[Tick], path: Path) -> int:
    """Write ticks in the seed's CSV columns; returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for t in ticks:
            writer.writerow((format_timestamp(t.timestamp), t.symbol, f"{t.price:.2f}", t.volume))
            count += 1
    return count


@dataclass(frozen=True)
class CsvProblem:
    """A CSV line that could not be read as a tick (1-based line number, header is line 1)."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def read_csv(path: Path) -> Iterator[Tick | CsvProblem]:
    """Yield a :class:`Tick` per good row and a :class:`CsvProblem` per bad one.

    Bad rows never stop the good ones: the caller decides what to report.
    """
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return
        names = [h.strip().lower() for h in header]
        missing = [c for c in CSV_COLUMNS if c not in names]
        if missing:
            yield CsvProblem(1, f"header lacks column(s) {', '.join(missing)}")
            return
        idx = [names.index(c) for c in CSV_COLUMNS]
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(names):
                yield CsvProblem(line, f"expected {len(names)} fields, got {len(row)}")
                continue
            ts_raw, symbol, price_raw, volume_raw = (row[i].strip() for i in idx)
            try:
                try:
                    price = float(price_raw)
                except ValueError:
                    raise TickError(f"price {price_raw!r} is not a number") from None
                try:
                    volume = int(volume_raw)
                except ValueError:
                    raise TickError(f"volume {volume_raw!r} is not an integer") from None
                yield validate(parse_timestamp(ts_raw), symbol, price, volume)
            except TickError as exc:
                yield CsvProblem(line, str(exc))
