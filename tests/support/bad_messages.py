"""Every kind of message that must become a dead letter, and the reason it must get.

The decoder's unit tests (tests/unit/test_decode.py) check each kind alone between
good ticks; the integration test (tests/integration/test_dead_letters.py) sends
thousands of them through a real broker.
"""

from __future__ import annotations

import orjson

from marketstream.decode import MAX_MESSAGE_BYTES

GOOD_TS = "2025-01-06T14:30:00.000000Z"


def tick_json(**fields: object) -> bytes:
    """A tick message with some fields replaced (``None`` drops a field)."""
    base: dict[str, object] = {
        "timestamp": GOOD_TS,
        "symbol": "SP500",
        "price": 5900.25,
        "volume": 10,
    }
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


def raw_json(text: str) -> bytes:
    return text.encode()


#: kind -> (a function of a serial number giving a distinct bad payload, reason substring).
#: The serial number keeps every bad message unique so its row can be matched by bytes.
BAD_KINDS: dict[str, tuple] = {
    "not json": (lambda i: f"this is not json {i}".encode(), "not valid UTF-8 JSON"),
    "truncated json": (lambda i: tick_json(volume=i)[:-3], "not valid UTF-8 JSON"),
    "not utf-8": (lambda i: b"\xff\xfe" + str(i).encode() + b"\x80", "not valid UTF-8 JSON"),
    "latin-1 inside json": (
        lambda i: tick_json(volume=i).replace(b"SP500", b"SP\xe9500"),
        "not valid UTF-8 JSON",
    ),
    "empty payload": (lambda i: b"", "not valid UTF-8 JSON"),
    "null value (tombstone)": (lambda i: None, "empty message"),
    "json array": (lambda i: orjson.dumps([GOOD_TS, "SP500", 1.0, i]), "not a JSON object"),
    "json scalar": (lambda i: str(i).encode(), "not a JSON object"),
    "missing price": (lambda i: tick_json(price=None, volume=i), "missing field(s): price"),
    "missing timestamp and volume": (
        lambda i: tick_json(timestamp=None, volume=None, price=1.0 + i),
        "missing field(s): timestamp, volume",
    ),
    "price as string": (lambda i: tick_json(price=str(i + 1.5), volume=i), "is not a number"),
    "price as bool": (lambda i: tick_json(price=True, volume=i), "is not a number"),
    "volume as string": (lambda i: tick_json(volume=str(i)), "is not an integer"),
    "fractional volume": (lambda i: tick_json(volume=i + 0.5), "is not an integer"),
    "symbol as number": (lambda i: tick_json(symbol=i), "is not 1-32 upper-case"),
    "timestamp as number": (lambda i: tick_json(timestamp=1736173800 + i), "not a string"),
    "NaN price": (
        lambda i: raw_json(
            f'{{"timestamp":"{GOOD_TS}","symbol":"SP500","price":NaN,"volume":{i}}}'
        ),
        "not valid UTF-8 JSON",
    ),
    "infinite price": (
        lambda i: raw_json(
            f'{{"timestamp":"{GOOD_TS}","symbol":"SP500","price":1e999,"volume":{i}}}'
        ),
        "not valid UTF-8 JSON",
    ),
    "negative price": (lambda i: tick_json(price=-1.0 - i), "must be a positive finite number"),
    "zero price": (lambda i: tick_json(price=0, volume=i), "must be a positive finite number"),
    "negative volume": (lambda i: tick_json(volume=-1 - i), "must not be negative"),
    "unparsable timestamp": (
        lambda i: tick_json(timestamp=f"yesterday at {i}"),
        "is not ISO-8601",
    ),
    "impossible date": (lambda i: tick_json(timestamp="2025-02-30T00:00:00Z", volume=i), "ISO"),
    "absurd timestamp (year 9999)": (
        lambda i: tick_json(timestamp=f"9999-01-01T00:00:{i % 60:02d}Z", volume=i),
        "out of range",
    ),
    "absurd timestamp (year 1066)": (
        lambda i: tick_json(timestamp=f"1066-10-14T09:00:{i % 60:02d}Z", volume=i),
        "out of range",
    ),
    "oversized payload": (
        lambda i: tick_json(volume=i, padding="x" * (MAX_MESSAGE_BYTES + 1000)),
        f"exceeds {MAX_MESSAGE_BYTES}",
    ),
    "lower-case symbol": (lambda i: tick_json(symbol="sp500", volume=i), "upper-case"),
    "symbol too long": (lambda i: tick_json(symbol="X" * 33, volume=i), "upper-case"),
    "empty symbol": (lambda i: tick_json(symbol="", volume=i), "upper-case"),
    "symbol with space": (lambda i: tick_json(symbol="S P", volume=i), "upper-case"),
    "symbol with SQL": (lambda i: tick_json(symbol="SP500'; DROP TABLE x;--", volume=i), "upper"),
}
