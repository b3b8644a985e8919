"""The tick contract, stated once as a test oracle, and both decode paths held to it.

Why an oracle: the older property test (test_decode.py) compares the fast decoder with
the per-message one, so a mistake they share passes it ("SP500\\n" did: both stored it
as a new series). :func:`contract` is the contract of README.md (Delivery guarantee: what
is not a valid tick is a dead letter; Your own data: ISO-8601, naive times are UTC) and
of ``ticks.validate``, written again with the standard library only. It shares no code
with the kit: no orjson, no Arrow, no ``fromisoformat``, no ``SYMBOL_RE``.

Hypothesis draws messages around every edge of it: almost-symbols, numbers at and past
the limits of a double and of a 64-bit integer, almost-ISO-8601 timestamps, values that
are not UTF-8 JSON objects, and well-formed ticks written every legal way. Each must get
the oracle's verdict from the per-message path (:func:`decode_value`) and from the batch
decoder (:func:`decode_records`: the Arrow fast path, falling back per message): the
same good/dead decision, the same stored values, and a reason for every dead letter.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from marketstream.decode import _fast_decode, decode_records, decode_value
from marketstream.ticks import Tick, TickError
from support.factories import Record

# --------------------------------------------------------------------------- the contract

FIELDS = ("timestamp", "symbol", "price", "volume")
MAX_MESSAGE_BYTES = 64 * 1024  # README: "over 64 KiB" is a dead letter
MAX_VOLUME = 2**53 - 1  # the largest integer a double (Grafana, a browser) reads exactly
FIRST_YEAR, LAST_YEAR = 1970, 2200  # of the event time, in UTC
SYMBOL_FIRST = frozenset(string.ascii_uppercase + string.digits)
SYMBOL_REST = SYMBOL_FIRST | frozenset("._-")
TIMESTAMP = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})T(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?(?P<offset>Z|[+-][0-9]{2}:[0-9]{2})?"
)


class Stored(NamedTuple):
    """A good tick as ``market_ticks`` keeps it: event time in naive UTC."""

    symbol: str
    event_time: datetime
    price: float
    volume: int


class Dead(NamedTuple):
    """A dead letter, as a decoder gives it."""

    reason: str


def _not_json(literal: str) -> None:
    raise ValueError(f"{literal} is not JSON")  # Python's json reads NaN and Infinity


def _double(literal: str) -> float:
    """A number with a fraction or an exponent: the nearest double, if one is that large."""
    number = float(literal)
    if math.isinf(number):
        raise ValueError(f"{literal} is past the largest double")
    return number


def _integer(literal: str) -> int:
    """An integer literal: exact, if a double is that large (OverflowError past it)."""
    number = int(literal)
    float(number)
    return number


def _event_time(text: object) -> datetime | None:
    """``YYYY-MM-DDTHH:MM:SS[.fraction][Z|±HH:MM]`` (ISO-8601's extended form, RFC 3339's
    profile), naive meaning UTC, as naive UTC; None if it is anything else, finer than the
    microseconds the store keeps, or outside 1970-2200 in UTC."""
    match = TIMESTAMP.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    year, month, day = (int(part) for part in match["date"].split("-"))
    hour, minute, second = (int(part) for part in match["time"].split(":"))
    fraction = match["fraction"] or ""
    offset = match["offset"] or "Z"
    if fraction[6:].strip("0"):  # .0000001 cannot be stored exactly; .000000000 can
        return None
    offset_hours, offset_minutes = (0, 0) if offset == "Z" else (int(offset[1:3]), int(offset[4:]))
    if offset_hours > 23 or offset_minutes > 59:
        return None
    sign = -1 if offset.startswith("-") else 1
    try:
        local = datetime(year, month, day, hour, minute, second, int(fraction[:6].ljust(6, "0")))
        utc = local - sign * timedelta(hours=offset_hours, minutes=offset_minutes)
    except (ValueError, OverflowError):  # month 13, day 32, hour 24, second 60, year 0...
        return None
    return utc if FIRST_YEAR <= utc.year <= LAST_YEAR else None


def _price(value: object) -> float | None:
    """A JSON number (not a bool) whose double is positive (finite: see :func:`contract`)."""
    if type(value) not in (int, float):
        return None
    price = float(value)
    return price if price > 0 else None


def _volume(value: object) -> int | None:
    """A JSON number (not a bool) that is a whole number 0..2**53-1; ``7.0`` is 7."""
    if type(value) is float and value.is_integer():
        value = int(value)
    return value if type(value) is int and 0 <= value <= MAX_VOLUME else None


def _is_symbol(value: object) -> bool:
    """1-32 of A-Z 0-9 . _ -, starting with a letter or digit (after JSON unescaping)."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 32
        and value[0] in SYMBOL_FIRST
        and set(value) <= SYMBOL_REST
    )


def contract(value: bytes | None) -> Stored | None:
    """What the store must keep of one Kafka message value: the tick, or None (a dead letter).

    A value is a tick if it is at most 64 KiB of UTF-8 JSON (RFC 8259: no BOM, no NaN or
    Infinity, no lone surrogate) holding an object with at least the four fields; other
    fields and the field order do not matter, and of a repeated name the last one counts
    (as in orjson, Python and JavaScript). Numbers read as JSON readers read them: an
    integer literal as an integer, anything else as the nearest double. A number no double
    can hold (1e400, in any field, an extra one too) makes the value a dead letter: RFC 8259
    lets a reader limit the range, and the kit's does (1e-400 is 0.0, not an error).
    """
    if value is None or len(value) > MAX_MESSAGE_BYTES:
        return None
    try:
        text = value.decode("utf-8")
        data = json.loads(text, parse_float=_double, parse_int=_integer, parse_constant=_not_json)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # "\ud800" is no character
    except (ValueError, OverflowError, RecursionError):  # UnicodeError is a ValueError
        return None
    if not isinstance(data, dict) or not all(name in data for name in FIELDS):
        return None
    tick = Stored(
        data["symbol"],
        _event_time(data["timestamp"]),
        _price(data["price"]),
        _volume(data["volume"]),
    )
    if not _is_symbol(tick.symbol) or None in (tick.event_time, tick.price, tick.volume):
        return None
    return tick


# --------------------------------------------------------------------------- the decoders

RECEIVED = datetime(2025, 1, 6, 15, tzinfo=UTC)


def per_message(value: bytes | None) -> Stored | Dead:
    """The per-message path: what the consumer makes of a value the fast path leaves."""
    try:
        tick = decode_value(value)
    except TickError as exc:
        return Dead(str(exc))
    assert tick.timestamp.utcoffset() == timedelta(0)  # the store drops the zone
    return Stored(tick.symbol, tick.timestamp.replace(tzinfo=None), tick.price, tick.volume)


def batch(values: list[bytes | None]) -> list[Stored | Dead]:
    """The batch decoder's verdict per value, in order (each value once, dead ones kept)."""
    records = [Record("t", 0, i, b"k", v) for i, v in enumerate(values)]
    decoded = decode_records(records, RECEIVED)
    ticks = {
        row["offset"]: Stored(row["symbol"], row["event_time"], row["price"], row["volume"])
        for row in decoded.ticks.to_pylist()
    }
    dead = {}
    for row in decoded.dead.to_pylist():
        value = values[row["offset"]]
        assert row["raw"] == (None if value is None else value[:MAX_MESSAGE_BYTES])
        dead[row["offset"]] = Dead(row["reason"])
    assert not ticks.keys() & dead.keys()
    assert ticks.keys() | dead.keys() == set(range(len(values)))
    return [ticks[i] if i in ticks else dead[i] for i in range(len(values))]


def assert_keeps_contract(value: bytes | None, got: Stored | Dead, path: str) -> None:
    """``got`` is the oracle's verdict: the same tick, value for value and type for type,
    or a dead letter with a reason."""
    expected = contract(value)
    if expected is None:
        assert isinstance(got, Dead), f"{path} stored a dead letter {value!r} as {got}"
        assert got.reason.strip(), f"{path} gave no reason for {value!r}"
    else:
        assert got == expected, f"{path}: {value!r}"
        assert [type(v) for v in got] == [type(v) for v in expected], f"{path}: {value!r}"


def assert_both_paths_keep_contract(value: bytes | None) -> None:
    """Per message, and through the batch decoder alone (its fast path if it takes it)."""
    assert_keeps_contract(value, per_message(value), "per-message path")
    assert_keeps_contract(value, batch([value])[0], "batch decoder")


# --------------------------------------------------------------------------- JSON text

#: JSON's own whitespace, and characters that only look like it.
JSON_SPACE = ["", " ", "\t", "\n", "\r\n", "  "]
NOT_JSON_SPACE = ["\x0b", "\x0c", "\u00a0", "\u2028", "\u3000", "\ufeff"]


def _escape(char: str) -> str:
    """A character as a JSON escape: ``\\uXXXX`` (either case), a surrogate pair past U+FFFF."""
    if ord(char) > 0xFFFF:
        return json.dumps(char)[1:-1]
    return f"\\u{ord(char):04x}" if ord(char) % 2 else f"\\u{ord(char):04X}"


@st.composite
def json_strings(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> str:
    """A JSON string literal of a drawn text, written one of the ways a producer might:
    raw UTF-8, ASCII with escapes, some characters escaped, or (invalid JSON when the text
    holds a control character or a quote) nothing escaped at all."""
    text = draw(texts)
    mode = draw(st.sampled_from(["utf-8", "utf-8", "ascii", "some escaped", "unescaped"]))
    if mode == "utf-8":
        return json.dumps(text, ensure_ascii=False)
    if mode == "ascii":
        return json.dumps(text)
    if mode == "unescaped":
        return f'"{text}"'
    escaped = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    plain = (json.dumps(c, ensure_ascii=False)[1:-1] for c in text)
    return (
        '"'
        + "".join(_escape(c) if e else p for c, e, p in zip(text, escaped, plain, strict=True))
        + '"'
    )


def _object(items: list[tuple[str, str]], space: str) -> str:
    """A JSON object from (key literal, value text) pairs, ``space`` around every token."""
    s = space
    return "{" + s + f",{s}".join(f"{k}{s}:{s}{v}" for k, v in items) + s + "}"


def _encode(text: str) -> bytes:
    """UTF-8; a lone surrogate becomes its (invalid) three-byte form instead of an error."""
    return text.encode("utf-8", "surrogatepass")


#: Any JSON value, nested a little: the extra fields a producer may add.
any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=5,
).map(lambda v: json.dumps(v, ensure_ascii=False))
extra_names = st.sampled_from(["exchange", "note", "", "Price", "SYMBOL", "volume ", " timestamp"])
extra_names |= st.text(max_size=8).filter(lambda name: name not in FIELDS)

# --------------------------------------------------------------------------- good values

good_symbols = st.from_regex(r"[A-Z0-9][A-Z0-9._-]{0,31}", fullmatch=True) | st.sampled_from(
    ["SP500", "STOXX600", "NIKKEI225", "A", "0", "X" * 32, "A.B-C_9"]
)
#: Event times in the contract's years, thickest at its two ends.
good_times = st.one_of(
    st.datetimes(datetime(1970, 1, 1), datetime(2200, 12, 31, 23, 59, 59, 999999)),
    st.sampled_from([datetime(1970, 1, 1), datetime(2201, 1, 1) - timedelta(microseconds=1)]),
    st.sampled_from([datetime(1970, 1, 1), datetime(2200, 12, 31)]).flatmap(
        lambda edge: st.datetimes(edge, edge + timedelta(days=1) - timedelta(microseconds=1))
    ),
)
good_prices = st.one_of(
    st.floats(0.01, 1e6).map(lambda p: round(p, 2)),
    st.floats(min_value=5e-324, allow_infinity=False),  # every positive finite double
    st.sampled_from([5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 2.0**53]),
)
good_volumes = st.integers(0, 10**6) | st.integers(0, MAX_VOLUME) | st.sampled_from([0, MAX_VOLUME])
utc_offsets = st.one_of(
    st.sampled_from([timedelta(0), timedelta(hours=14), -timedelta(hours=12)]),
    st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timedelta(minutes=m)),
)


def _offset_text(offset: timedelta | None, zero: str) -> str:
    """``±HH:MM`` for an offset, ``zero`` (``Z``, ``+00:00``, ``-00:00``) for UTC, none if naive."""
    if offset is None:
        return ""
    if not offset:
        return zero
    minutes = int(offset.total_seconds()) // 60
    return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@st.composite
def timestamp_texts(draw: st.DrawFn, utc: datetime) -> str:
    """One legal text for the instant ``utc``: half the time the producer's own (6 digits and
    ``Z``: the fast path's), else any offset (or none) and 0-6 fraction digits (more if
    they are zeros), as long as the text says exactly that instant."""
    if draw(st.booleans()):
        return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S.%f}Z"
    offset = draw(st.none() | utc_offsets)
    local = utc + (offset or timedelta(0))
    digits = draw(st.integers(len(f"{utc.microsecond:06d}".rstrip("0")), 6))
    fraction = f"{utc.microsecond:06d}"[:digits] + "0" * draw(st.sampled_from([0, 0, 1, 3]))
    return (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}T"
        f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
        + (f".{fraction}" if fraction else "")
        + _offset_text(offset, draw(st.sampled_from(["Z", "+00:00", "-00:00"])))
    )


def _price_text(price: float, form: int) -> str:
    """A JSON number that reads back as exactly ``price``: shortest, 17 digits, or integer."""
    if form == 1:
        return f"{price:.17g}"
    if form == 2 and price.is_integer() and price < 1e30:
        return str(int(price))
    return repr(price)


class WellFormed(NamedTuple):
    """A good tick's message, written some legal way, and what the store must keep of it."""

    value: bytes
    stored: Stored


@st.composite
def well_formed_ticks(draw: st.DrawFn) -> WellFormed:
    """A good tick with extra fields, fields in any order, escapes in keys and strings, JSON
    whitespace, any UTC offset: still that tick, stored exactly. Half are written plainly,
    as the producer does (its timestamp form, no escape, no extra field): the fast path's
    share."""
    stored = Stored(draw(good_symbols), draw(good_times), draw(good_prices), draw(good_volumes))
    plain = draw(st.booleans())
    strings = (lambda texts: texts.map(json.dumps)) if plain else json_strings
    volume = str(stored.volume)
    volume = volume if plain else draw(st.sampled_from([volume, f"{volume}.0", f"{volume}e0"]))
    utc = stored.event_time
    producers = st.just(f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S.%f}Z")
    fields = {
        "timestamp": draw(strings(producers if plain else timestamp_texts(utc))),
        "symbol": draw(strings(st.just(stored.symbol))),
        "price": _price_text(stored.price, draw(st.integers(0, 2))),
        "volume": volume,
    }
    items = [(draw(strings(st.just(name))), v) for name, v in fields.items()]
    for _ in range(0 if plain else draw(st.sampled_from([0, 1, 3]))):
        items.append((json.dumps(draw(extra_names), ensure_ascii=False), draw(any_json)))
    items = draw(st.permutations(items))
    space = draw(st.sampled_from(["", " "] if plain else JSON_SPACE))
    return WellFormed(_encode(_object(items, space)), stored)


# --------------------------------------------------------------------------- edge values

#: Characters a symbol must not hold, and look-alikes of the ones it may.
NEAR_SYMBOL_CHARS = [
    *" \n\r\t\x00\x0b\x0c\x1f\x7f\x85\u00a0\u2028\u200b\ufeff\ud800",
    *"az/+:,'\"\\é",
    *"АВЕКМНОРСТХ",  # Cyrillic capitals
    *"ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",  # Greek capitals
    *"ＳＰ５０",  # fullwidth
    "\U0001d400",  # mathematical bold A
    *"٣۳३²①",  # digits that are not 0-9
    "\u0307",  # a combining dot
]


@st.composite
def almost_symbols(draw: st.DrawFn) -> str:
    """A good symbol one character off: padded, broken, a look-alike, too long or empty."""
    symbol = draw(good_symbols)
    char = draw(st.sampled_from(NEAR_SYMBOL_CHARS))
    at = draw(st.integers(0, len(symbol)))
    return draw(
        st.sampled_from(
            [
                symbol + char,
                char + symbol,
                symbol[:at] + char + symbol[at:],
                symbol[:at] + char + symbol[at + 1 :],
                symbol.lower(),
                symbol + "X" * (33 - len(symbol)),
                "",
                draw(st.sampled_from("._-")) + symbol,
            ]
        )
    )


#: Texts that are not a JSON number, or not a number at all.
NOT_NUMBERS = [
    "NaN", "-NaN", "Infinity", "-Infinity", "inf", "+1", ".5", "5.", "01", "-01", "0x10",
    "1_000", "1e", "1e+", "--1", "1.5.5", "١", "１", "true", "false", "null", '"5900.5"',
    '"1e3"', '"NaN"', "[5900.5]", '{"value":1}', "",
]  # fmt: skip
#: Numbers at and past the limits of a double and of a 64-bit integer.
EDGE_NUMBERS = [
    "0", "-0", "0.0", "-0.0", "0e0", "1", "-1", "7.0", "7e0", "1e3", "1E+2", "0.5", "7.5",
    "7.0000000000000001", "1e-2", "1e-400", "5e-324", "4.9406564584124654e-324",
    "2.4703282292062328e-324", "2.4703282292062327e-324", "2.2250738585072014e-308",
    "1e308", "1.7976931348623157e308", "1.7976931348623158e308", "1.7976931348623159e308",
    "1.8e308", "1e309", "1e999", "-1e999", "1e0000000000000000000000001",
    "1" + "0" * 400, "0." + "0" * 400 + "1", "1e16", "9007199254740991.0",
    "9007199254740992.0", "9007199254740993.0",
    *(str(n) for n in (2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64)),
    *(str(n) for n in (-(2**63), -(2**63) - 1, 10**308, 10**309)),
    *(str(n) for n in (2**1024 - 2**970 - 1, 2**1024 - 2**970)),  # the double's last half-ulp
]  # fmt: skip
edge_numbers = st.one_of(
    st.sampled_from(EDGE_NUMBERS),
    st.sampled_from(NOT_NUMBERS),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(2**65), 2**65).map(str),
)

#: One change to a good timestamp text: wrong separators, fields out of range, other
#: ISO-8601 forms outside the contract, junk around it, digits that are not 0-9.
SEPARATORS = [" ", "t", "X", "_", "\u00a0", "\x00", "TT", ""]
TWO_DIGITS = ["00", "13", "24", "29", "30", "31", "32", "59", "60", "61", "99"]
YEARS = ["0000", "0001", "1969", "1970", "2200", "2201", "9999"]
JUNK = [" ", "\n", "\r", "\t", "\u00a0", "\u200b", "\ufeff", "x", "\x00", "Z"]
TIMESTAMP_CHANGES: list[Callable[[str], str]] = [
    *(lambda t, s=s: t.replace("T", s, 1) for s in SEPARATORS),
    *(lambda t, s=s: t[:4] + s + t[5:7] + s + t[8:] for s in ["/", ".", ""]),
    *(lambda t, s=s: t[:13] + s + t[14:16] + s + t[17:] for s in [".", ""]),
    lambda t: t[:16] + t[19:],  # no seconds
    lambda t: t[:10],  # a date alone
    lambda t: t[:19],  # no fraction, no offset: still good
    lambda t: t.replace("Z", "z").replace("+00:00", "z"),
    lambda t: t.replace(".", ",", 1),
    lambda t: t[:19] + ".1234567" + t[19:].lstrip(".0123456789"),
    lambda t: t[:19] + ".000000000" + t[19:].lstrip(".0123456789"),
    lambda t: t[:19] + "." + t[19:].lstrip(".0123456789"),
    *(lambda t, o=o: t[:19] + o for o in ["+0100", "+01", "+01:00:30", "+24:00", "-23:59"]),
    *(lambda t, o=o: t[:19] + o for o in ["+05:75", " UTC", "ZZ", "+00:00Z"]),
    lambda t: t.replace("0", "٠", 1),
    lambda t: t.replace("1", "１", 1),
    lambda t: "+" + t,
    lambda t: "0" + t,
    *(lambda t, i=i, v=v: t[:i] + v + t[i + 2 :] for i in (5, 8, 11, 14, 17) for v in TWO_DIGITS),
    *(lambda t, y=y: y + t[4:] for y in YEARS),
    *(lambda t, j=j: j + t for j in JUNK),
    *(lambda t, j=j: t + j for j in JUNK),
]


@st.composite
def almost_timestamps(draw: st.DrawFn) -> str:
    """A legal timestamp text with one or two of :data:`TIMESTAMP_CHANGES`."""
    text = draw(good_times.flatmap(timestamp_texts))
    for change in draw(st.lists(st.sampled_from(TIMESTAMP_CHANGES), min_size=1, max_size=2)):
        text = change(text)
    return text


#: A field's value written some legal way...
good_fields = {
    "timestamp": json_strings(good_times.flatmap(timestamp_texts)),
    "symbol": json_strings(good_symbols),
    "price": good_prices.map(repr),
    "volume": good_volumes.map(str),
}
#: ...and at an edge of the contract, or of another JSON type.
edge_fields = {
    "timestamp": json_strings(almost_timestamps())
    | st.sampled_from(['""', "1736173800", "null", '["2025-01-06T14:30:00Z"]']),
    "symbol": json_strings(almost_symbols())
    | st.sampled_from(["500", "5.0", "true", "null", '["SP500"]', '{"s":"SP500"}']),
    "price": edge_numbers,
    "volume": edge_numbers,
}


@st.composite
def tick_like(draw: st.DrawFn) -> bytes:
    """A tick with one or two fields at an edge (the others good, so the edge decides), and
    perhaps a field missing, repeated (the last one counts) or renamed, extra fields, or
    whitespace JSON does not allow."""
    at_edge = draw(st.sets(st.sampled_from(FIELDS), min_size=1, max_size=2))
    items = [
        (json.dumps(name), draw(edge_fields[name] if name in at_edge else good_fields[name]))
        for name in FIELDS
    ]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        name = draw(st.sampled_from(FIELDS))
        key = json.dumps(name)
        change = draw(st.sampled_from(["drop", "repeat", "rename", "extra"]))
        if change == "drop":
            items = [(k, v) for k, v in items if k != key]
        elif change == "repeat":
            items.append((key, draw(edge_fields[name] | good_fields[name])))
        elif change == "rename":
            other = draw(st.sampled_from([name.upper(), name + " ", name[:-1], name + "\u200b"]))
            items = [(json.dumps(other) if k == key else k, v) for k, v in items]
        else:
            items.append((json.dumps(draw(extra_names)), draw(any_json | edge_numbers)))
    items = draw(st.permutations(items))
    return _encode(_object(items, draw(st.sampled_from(JSON_SPACE * 3 + NOT_JSON_SPACE))))


def _padded(message: bytes, size: int) -> bytes:
    """``message`` (an object) with a padding field that makes it exactly ``size`` bytes."""
    head = message.rstrip()[:-1] + b',"pad":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


#: One change to a whole good message that (mostly) stops it being a UTF-8 JSON object.
VALUE_CHANGES: list[Callable[[bytes], bytes | None]] = [
    lambda m: b"\xef\xbb\xbf" + m,  # a UTF-8 BOM
    lambda m: m.decode().encode("utf-16"),
    lambda m: m.decode().encode("utf-16-le"),
    lambda m: m.replace(b'":', b'":\xff', 1),
    lambda m: m.replace(b'":"', b'":"\xc3', 1),
    lambda m: m.replace(b'":"', b'":"\xed\xa0\x80', 1),  # an encoded surrogate
    lambda m: m.replace(b'":"', b'":"\xc0\xaf', 1),  # an overlong encoding
    lambda m: m.replace(b'":"', b'":"\xe9', 1),  # Latin-1
    lambda m: b"[" + m + b"]",
    lambda m: json.dumps(m.decode()).encode(),  # the message as a JSON string
    lambda m: b'{"tick":' + m + b"}",
    lambda m: m + b"\n" + m,
    lambda m: m + m,
    lambda m: m + b",",
    lambda m: m + b"x",
    lambda m: m + b"{}",
    lambda m: m + b"\x00",
    lambda m: m + b"null",
    lambda m: b" \t\r\n" + m + b"\n",  # JSON whitespace around it: still good
    lambda m: b"\x0c" + m,
    lambda m: m[: len(m) // 2],
    lambda m: m[:-1],
    lambda m: m[1:],
    lambda m: m.replace(b"{", b'{"deep":' + b"[" * 60 + b"]" * 60 + b",", 1),
    lambda m: _padded(m, MAX_MESSAGE_BYTES - 1),
    lambda m: _padded(m, MAX_MESSAGE_BYTES),
    lambda m: _padded(m, MAX_MESSAGE_BYTES + 1),
    *(lambda m, v=v: v for v in [None, b"", b" ", b"null", b"true", b"5", b'"SP5"', b"[]", b"{}"]),
]


@st.composite
def changed_values(draw: st.DrawFn) -> bytes | None:
    """A good message with one of :data:`VALUE_CHANGES`."""
    return draw(st.sampled_from(VALUE_CHANGES))(draw(well_formed_ticks()).value)


@st.composite
def odd_extras(draw: st.DrawFn) -> bytes:
    """A good message with an extra field holding an edge number (or something not JSON)."""
    extra = f'"x":{draw(edge_numbers)},'.encode()
    return draw(well_formed_ticks()).value.replace(b"{", b"{" + extra, 1)


#: Every kind of message, in even shares: good ones, edge values, broken wholes.
messages = st.one_of(
    well_formed_ticks().map(lambda t: t.value), tick_like(), changed_values(), odd_extras()
)

# --------------------------------------------------------------------------- properties

#: Fixed examples (derandomized, no example database; tests/conftest.py has no profile):
#: the same inputs every run, and a known runtime. With the batches' ~400 and the named
#: edges, ~1,500 messages a run, 8-14 s on 2 busy cores. A wider search, same strategies:
#: ``settings(max_examples=8000, derandomize=False)`` (none found after the fixes).
CONTRACT_SETTINGS = settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@CONTRACT_SETTINGS
@given(value=messages)
def test_every_message_gets_the_contracts_verdict_on_both_paths(value: bytes | None) -> None:
    """Alone, a message takes the fast path if it can: both paths give the oracle's verdict."""
    fast = value is not None and bool(_fast_decode([value])[0][0])
    event("fast path" if fast else "per-message path")
    event("good tick" if contract(value) else "dead letter")
    assert_both_paths_keep_contract(value)


@settings(CONTRACT_SETTINGS, max_examples=100)
@given(values=st.lists(messages | well_formed_ticks().map(lambda t: t.value), max_size=8))
def test_a_batch_decodes_every_message_as_the_contract_says(values: list[bytes | None]) -> None:
    """Mixed in one batch (the fast path takes the whole batch or leaves it), each message
    still gets its own verdict."""
    for value, got in zip(values, batch(values), strict=True):
        assert_keeps_contract(value, got, "batch decoder")


@settings(CONTRACT_SETTINGS, max_examples=200)
@given(tick=well_formed_ticks())
def test_a_well_formed_tick_is_stored_exactly_as_written(tick: WellFormed) -> None:
    """Extra fields, field order, escapes, offsets, JSON whitespace: the same tick, exactly.
    (This also holds the oracle to what the strategy meant to write.)"""
    assert contract(tick.value) == tick.stored
    assert per_message(tick.value) == tick.stored
    assert batch([tick.value]) == [tick.stored]


@settings(CONTRACT_SETTINGS, max_examples=200)
@given(symbol=good_symbols, event_time=good_times, price=good_prices, volume=good_volumes)
def test_the_producers_own_messages_take_the_fast_path(
    symbol: str, event_time: datetime, price: float, volume: int
) -> None:
    """The fast path stays fast: every tick the kit's producer writes is decoded in Arrow,
    never left to the per-message path."""
    value = Tick(event_time.replace(tzinfo=UTC), symbol, price, volume).to_message()
    accepted, columns = _fast_decode([value])
    assert accepted.tolist() == [True]
    assert (
        Stored(**columns.to_pylist()[0]) == contract(value) == (symbol, event_time, price, volume)
    )


# --------------------------------------------------------------------------- named edges

GOOD = '{"timestamp":"2025-01-06T14:30:00.000000Z","symbol":"SP500","price":5900.5,"volume":7}'
AT = datetime(2025, 1, 6, 14, 30)
SP500 = Stored("SP500", AT, 5900.5, 7)
MAX_DOUBLE = 1.7976931348623157e308

#: The contract by example, each case written by hand: (message, what the store keeps).
NAMED_EDGES: list[tuple[bytes | None, Stored | None]] = [
    (GOOD.encode(), SP500),
    # symbols: only an exact one, but JSON escapes are read first
    (GOOD.replace("SP500", "SP500\\n").encode(), None),
    (GOOD.replace("SP500", "SP500\\u0000").encode(), None),
    (GOOD.replace("SP500", " SP500").encode(), None),
    (GOOD.replace("SP500", "\u0405P500").encode(), None),  # Cyrillic DZE looks like S
    (GOOD.replace("SP500", "ＳＰ500").encode(), None),
    (GOOD.replace("SP500", "\\u0053P500").encode(), SP500),
    (GOOD.replace("SP500", "\\u0053\\u0050\\u0035\\u0030\\u0030").encode(), SP500),
    # numbers
    (GOOD.replace("5900.5", "1.7976931348623157e308").encode(), SP500._replace(price=MAX_DOUBLE)),
    (GOOD.replace("5900.5", "1.8e308").encode(), None),
    (GOOD.replace("5900.5", "1e-400").encode(), None),  # 0 as a double
    (GOOD.replace("5900.5", "5e-324").encode(), SP500._replace(price=5e-324)),
    (GOOD.replace("5900.5", "-0.0").encode(), None),
    (GOOD.replace("5900.5", "NaN").encode(), None),
    (GOOD.replace("5900.5", "true").encode(), None),
    (GOOD.replace("5900.5", '"5900.5"').encode(), None),
    (GOOD.replace("5900.5", str(2**64 + 1)).encode(), SP500._replace(price=float(2**64))),
    (GOOD.replace(":7}", ":7.0}").encode(), SP500),
    (GOOD.replace(":7}", ":7e0}").encode(), SP500),
    (GOOD.replace(":7}", f":{2**53 - 1}}}").encode(), SP500._replace(volume=2**53 - 1)),
    (GOOD.replace(":7}", f":{2**53}}}").encode(), None),
    (GOOD.replace(":7}", f":{2**63}}}").encode(), None),
    (GOOD.replace(":7}", f":{2**64}}}").encode(), None),
    (GOOD.replace(":7}", ":false}").encode(), None),
    # timestamps: one form, any offset, years 1970-2200 in UTC
    (GOOD.replace(".000000Z", "Z").encode(), SP500),
    (GOOD.replace(".000000Z", "").encode(), SP500),  # naive is UTC
    (GOOD.replace("14:30:00.000000Z", "15:30:00+01:00").encode(), SP500),
    (GOOD.replace("14:30:00.000000Z", "09:00:00-05:30").encode(), SP500),
    (GOOD.replace("14:30:00.000000Z", "14:30:00-00:00").encode(), SP500),
    (GOOD.replace("T14", "\\u005414").encode(), SP500),
    (GOOD.replace(".000000Z", ".000000000Z").encode(), SP500),
    (GOOD.replace(".000000Z", ".0000001Z").encode(), None),  # finer than the store keeps
    (GOOD.replace("Z", "Z\\n").encode(), None),
    (GOOD.replace('"2025', '" 2025').encode(), None),
    (GOOD.replace('"2025', '"\\u00a02025').encode(), None),
    (GOOD.replace("T14", " 14").encode(), None),
    (GOOD.replace("T14", "X14").encode(), None),
    (GOOD.replace("T14", "\\u000014").encode(), None),
    (GOOD.replace("2025-01-06", "20250106").encode(), None),
    (GOOD.replace("2025-01-06", "2025-W02-1").encode(), None),
    (GOOD.replace(":00.000000Z", "Z").encode(), None),  # no seconds
    (GOOD.replace(".000000Z", ",5Z").encode(), None),
    (GOOD.replace(".000000Z", "+05:75").encode(), None),
    (GOOD.replace(".000000Z", "+01:00:30").encode(), None),
    (GOOD.replace("14:30:00", "24:00:00").encode(), None),
    (GOOD.replace("14:30:00", "23:59:60").encode(), None),
    (GOOD.replace("01-06", "01-32").encode(), None),
    (GOOD.replace("01-06", "13-06").encode(), None),
    (GOOD.replace("2025-01-06T14:30:00.000000Z", "1970-01-01T00:30:00+01:00").encode(), None),
    (GOOD.replace("2025-01-06T14:30:00.000000Z", "2200-12-31T23:30:00-01:00").encode(), None),
    (
        GOOD.replace("2025-01-06T14:30:00.000000Z", "1969-12-31T23:30:00-01:00").encode(),
        SP500._replace(event_time=datetime(1970, 1, 1, 0, 30)),
    ),
    # whole values
    (b"\xef\xbb\xbf" + GOOD.encode(), None),
    (GOOD.encode("utf-16"), None),
    (GOOD.replace("SP500", "SP\xe9").encode("latin-1"), None),
    (GOOD.replace(":7}", ':7,"note":"\\ud800"}').encode(), None),
    (GOOD.replace(":7}", ':7,"note":"\\ud83d\\ude00"}').encode(), SP500),
    (GOOD.replace(":7}", ':7,"x":{"y":[1,{"z":null}]}}').encode(), SP500),
    (GOOD.replace(":7}", ':7,"x":1e400}').encode(), None),  # past any double, even unused
    (GOOD.replace(":7}", ':7,"x":1e-400}').encode(), SP500),
    (GOOD.replace('"volume":7', '"price":-1,"volume":7').encode(), None),  # the last counts
    (GOOD.replace('"price":5900.5', '"price":-1,"price":5900.5').encode(), SP500),
    (b" " + GOOD.encode() + b"\r\n", SP500),
    (GOOD.encode()[:-1], None),
    (b"[" + GOOD.encode() + b"]", None),
    (b"null", None),
    (b"", None),
    (None, None),
    (_padded(GOOD.encode(), MAX_MESSAGE_BYTES), SP500),
    (_padded(GOOD.encode(), MAX_MESSAGE_BYTES + 1), None),
]  # fmt: skip


@pytest.mark.parametrize(("value", "stored"), NAMED_EDGES, ids=range(len(NAMED_EDGES)))
def test_named_edges(value: bytes | None, stored: Stored | None) -> None:
    """The oracle says what a person reading the README says, and both paths agree."""
    assert contract(value) == stored
    assert_both_paths_keep_contract(value)
