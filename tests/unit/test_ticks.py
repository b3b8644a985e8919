"""The pure tick logic (:mod:`marketstream.ticks`): random walk, CSV, wire format (and the
producer's fast timestamp format), validation."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketstream.ticks import (
    CsvProblem,
    RandomWalk,
    Tick,
    TickError,
    format_timestamp,
    generate_ticks,
    parse_timestamp,
    read_csv,
    tick_from_message,
    write_csv,
)


def test_default_sample_is_150_rows_of_three_indices():
    ticks = generate_ticks(("SP500", "STOXX600", "NIKKEI225"), 50)
    assert len(ticks) == 150
    assert {t.symbol for t in ticks} == {"SP500", "STOXX600", "NIKKEI225"}
    assert all(sum(t.symbol == s for t in ticks) == 50 for s in ("SP500", "STOXX600"))


def test_generation_is_deterministic_per_seed():
    a = generate_ticks(("SP500",), 100, seed=7)
    b = generate_ticks(("SP500",), 100, seed=7)
    c = generate_ticks(("SP500",), 100, seed=8)
    assert a == b
    assert [t.price for t in a] != [t.price for t in c]


def test_random_walk_stays_near_realistic_levels():
    ticks = generate_ticks(("SP500", "NIKKEI225"), 500, seed=1)
    sp = [t.price for t in ticks if t.symbol == "SP500"]
    nk = [t.price for t in ticks if t.symbol == "NIKKEI225"]
    assert min(sp) > 5000 and max(sp) < 7000
    assert min(nk) > 30000 and max(nk) < 47000
    steps = [abs(math.log(b / a)) for a, b in itertools.pairwise(sp)]
    assert max(steps) < 0.01  # ticks move by basis points, not percent
    assert all(t.volume > 0 for t in ticks)


def test_any_symbol_list_and_size():
    ticks = generate_ticks(("AAA", "B.B", "C-1", "DAX40"), 7, seed=3)
    assert len(ticks) == 28
    assert all(t.price > 0 for t in ticks)
    assert generate_ticks(("AAA",), 0) == []


def test_timestamps_are_interleaved_and_unique_per_symbol():
    ticks = generate_ticks(("A", "B"), 10, interval=timedelta(milliseconds=250))
    assert [t.timestamp for t in ticks] == sorted(t.timestamp for t in ticks)
    assert len({(t.symbol, t.timestamp) for t in ticks}) == 20


def test_invalid_symbol_in_generation_is_rejected():
    with pytest.raises(TickError, match="symbol"):
        generate_ticks(("lower case",), 1)


def test_message_round_trip():
    tick = Tick(datetime(2025, 1, 2, 3, 4, 5, 678900, tzinfo=UTC), "SP500", 5912.25, 1234)
    assert tick.key == b"SP500"
    payload = orjson.loads(tick.to_message())
    assert payload == {
        "timestamp": "2025-01-02T03:04:05.678900Z",
        "symbol": "SP500",
        "price": 5912.25,
        "volume": 1234,
    }
    assert tick_from_message(tick.to_message()) == tick


def _msg(**fields: object) -> bytes:
    base = {"timestamp": "2025-01-01T00:00:00Z", "symbol": "A", "price": 1, "volume": 1}
    return orjson.dumps({**base, **fields})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "JSON"),
        (b"\xff\xfe", "JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"symbol": "A"}', "missing"),
        (_msg(timestamp="x"), "ISO-8601"),
        (_msg(timestamp=5), "timestamp"),
        (_msg(timestamp="3025-01-01T00:00:00Z"), "range"),
        (_msg(price=-1), "price"),
        (_msg(price=0), "price"),
        (_msg(price="1"), "price"),
        (_msg(price=True), "price"),
        (_msg(volume=-5), "volume"),
        (_msg(volume=1.5), "volume"),
        (_msg(symbol="a b"), "symbol"),
        (_msg(symbol=7), "symbol"),
        # fromisoformat takes these, a message must not: one form, exactly
        (_msg(timestamp="2025-01-01X00:00:00Z"), "ISO-8601"),
        (_msg(timestamp="2025-01-01\x0000:00:00Z"), "ISO-8601"),
        (_msg(timestamp="2025-01-01 00:00:00Z"), "ISO-8601"),
        (_msg(timestamp="2025-01-01T00:00:00Z\n"), "ISO-8601"),
        (_msg(timestamp="\u00a02025-01-01T00:00:00Z"), "ISO-8601"),
        (_msg(timestamp="2025-01-01"), "ISO-8601"),
        (_msg(timestamp="2025-W01-3T00:00:00Z"), "ISO-8601"),
        (_msg(timestamp="20250101T000000Z"), "ISO-8601"),
        (_msg(timestamp="2025-01-01T00:00Z"), "ISO-8601"),
        (_msg(timestamp="2025-01-01T00:00:00,5Z"), "ISO-8601"),
        (_msg(timestamp="2025-01-01T00:00:00+05:75"), "ISO-8601"),
        (_msg(timestamp="2025-01-01T00:00:00+01:00:30"), "ISO-8601"),
        (_msg(timestamp="2025-01-01T00:00:00.1234567Z"), "microseconds"),
        (_msg(timestamp="1970-01-01T00:30:00+01:00"), "range"),
        (_msg(timestamp="2200-12-31T23:30:00-01:00"), "range"),
    ],
)
def test_invalid_messages_say_why(raw, reason):
    with pytest.raises(TickError, match=reason):
        tick_from_message(raw)


def test_nan_and_infinite_prices_are_rejected():
    for bad in ("NaN", "Infinity", "1e999"):
        raw = f'{{"timestamp": "2025-01-01T00:00:00Z", "symbol": "A", "price": {bad}, "volume": 1}}'
        with pytest.raises(TickError):
            tick_from_message(raw.encode())


@pytest.mark.parametrize(
    ("raw", "utc"),
    [
        ("2025-01-01T10:00:00.5Z", datetime(2025, 1, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2025-01-01T10:00:00.123456000Z", datetime(2025, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2025-01-01T15:30:00+05:30", datetime(2025, 1, 1, 10, tzinfo=UTC)),
        ("2025-01-01T10:00:00-00:00", datetime(2025, 1, 1, 10, tzinfo=UTC)),
        ("2025-01-01T10:00:00", datetime(2025, 1, 1, 10, tzinfo=UTC)),
        ("1969-12-31T23:30:00-01:00", datetime(1970, 1, 1, 0, 30, tzinfo=UTC)),
    ],
)
def test_message_timestamps_in_any_offset_or_none(raw: str, utc: datetime) -> None:
    assert tick_from_message(_msg(timestamp=raw)).timestamp == utc


def test_the_year_range_is_of_the_utc_time():
    """1970-01-01T00:30+01:00 is before the epoch: the range was checked on the local year."""
    with pytest.raises(TickError, match="range"):
        parse_timestamp("1970-01-01T00:30:00+01:00")
    assert parse_timestamp("2201-01-01T00:30:00+01:00") == datetime(
        2200, 12, 31, 23, 30, tzinfo=UTC
    )
    with pytest.raises(TickError, match="range"):  # not an OverflowError out of astimezone
        parse_timestamp("0001-01-01T00:30:00+01:00")


def test_csv_and_api_timestamps_stay_lenient():
    """Only a message must use the one form; a CSV cell or a query may be written loosely."""
    assert parse_timestamp(" 2025-01-01 10:00 ") == datetime(2025, 1, 1, 10, tzinfo=UTC)


def test_naive_timestamps_are_utc():
    assert parse_timestamp("2025-01-01T10:00:00") == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert parse_timestamp("2025-01-01T12:00:00+02:00") == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert format_timestamp(datetime(2025, 1, 1, 10)) == "2025-01-01T10:00:00.000000Z"


timestamps = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
) | st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), ZoneInfo("UTC")]),
)


@settings(max_examples=300, deadline=None)
@given(ts=timestamps)
def test_format_timestamp_fast_path_is_exactly_the_strftime_text(ts):
    """``isoformat`` for UTC and naive times from year 1000 on, strftime's text always."""
    aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)  # naive: taken as UTC
    assert format_timestamp(ts) == aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_csv_round_trip(tmp_path):
    ticks = generate_ticks(("SP500", "STOXX600"), 5)
    path = tmp_path / "t.csv"
    assert write_csv(ticks, path) == 10
    assert path.read_text().splitlines()[0] == "timestamp,symbol,price,volume"
    assert list(read_csv(path)) == ticks


def test_bad_csv_rows_are_reported_with_line_numbers_and_good_rows_kept(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "timestamp,symbol,price,volume\n"
        "2025-01-01T00:00:00Z,SP500,5900.5,10\n"
        "2025-01-01T00:00:01Z,SP500,abc,10\n"
        "not-a-time,SP500,1,1\n"
        "2025-01-01T00:00:02Z,SP500\n"
        "\n"
        "2025-01-01T00:00:03Z,SP500,5901,-3\n"
        "2025-01-01T00:00:04Z,SP500,5902,11\n"
    )
    items = list(read_csv(path))
    good = [i for i in items if isinstance(i, Tick)]
    bad = [i for i in items if isinstance(i, CsvProblem)]
    assert [t.price for t in good] == [5900.5, 5902.0]
    assert [(p.line, p.reason.split()[0]) for p in bad] == [
        (3, "price"),
        (4, "timestamp"),
        (5, "expected"),
        (7, "volume"),
    ]
    assert str(bad[0]).startswith("line 3: price")


def test_csv_with_wrong_header(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("time,sym,p\n1,2,3\n")
    (problem,) = list(read_csv(path))
    assert problem.line == 1 and "header" in problem.reason


def test_live_random_walk_moves_every_symbol():
    walk = RandomWalk(("A", "B"), seed=1)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    first = walk.step("A", now)
    second = walk.step("A", now + timedelta(seconds=1))
    assert first.symbol == "A" and first.timestamp == now
    assert first.price != second.price
    assert walk.step("B").timestamp.tzinfo is UTC
