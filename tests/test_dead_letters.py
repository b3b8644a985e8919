"""Dead letters: every message that is not a valid tick is kept with its bytes,
coordinates and reason, and never stops the good ones around it.

The integration test sends thousands of good ticks and bad messages of every kind,
interleaved, keyed and unkeyed, to a real broker; each send's (partition, offset)
comes back from the broker, so every message is followed to the one row it must
become: a tick in ``market_ticks`` or a dead letter in ``dead_letters``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer, TopicPartition

from helpers import Record
from marketstream import store
from marketstream.clients import connection_config
from marketstream.consume import MAX_MESSAGE_BYTES, consume, decode_records
from marketstream.produce import ensure_topic
from marketstream.ticks import TickError, generate_ticks, tick_from_message

GOOD_TS = "2025-01-06T14:30:00.000000Z"
GOOD = b'{"timestamp":"2025-01-06T14:30:00.000000Z","symbol":"SP500","price":5900.25,"volume":10}'


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


@dataclass
class Sent:
    """One message as sent, and where the broker put it."""

    kind: str  # "good" or a key of BAD_KINDS
    key: bytes | None
    value: bytes | None
    partition: int = -1
    offset: int = -1


# --------------------------------------------------------------------------- unit


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_each_bad_kind_becomes_a_dead_letter_with_its_reason(kind: str) -> None:
    make, reason = BAD_KINDS[kind]
    value = make(7)
    good = tick_json(timestamp="2025-01-06T14:31:00Z")
    records = [
        Record("t", 0, 41, b"SP500", good),
        Record("t", 0, 42, b"SP500", value),
        Record("t", 0, 43, None, tick_json(timestamp="2025-01-06T14:32:00Z")),
    ]
    batch = decode_records(records, datetime.now(UTC))
    assert batch.ticks.num_rows == 2
    assert batch.ticks["offset"].to_pylist() == [41, 43]
    [row] = batch.dead.to_pylist()
    assert (row["topic"], row["partition"], row["offset"]) == ("t", 0, 42)
    assert row["key"] == records[1].key
    assert reason in row["reason"]
    if value is None:
        assert row["raw"] is None
    else:
        assert row["raw"] == value[:MAX_MESSAGE_BYTES]
    assert batch.offsets == {TopicPartition("t", 0): 44}  # the bad one is consumed too


def test_extra_fields_are_ignored_and_integral_float_volume_accepted() -> None:
    value = tick_json(volume=12.0, exchange="CME", note=None)
    batch = decode_records([Record("t", 0, 0, None, value)], datetime.now(UTC))
    assert batch.dead.num_rows == 0
    assert batch.ticks["volume"].to_pylist() == [12]


@pytest.mark.parametrize("volume", [2**63, 2**64 - 1, 1.8e19])
def test_absurd_volume_is_a_dead_letter_not_a_crash(volume: float) -> None:
    records = [
        Record("t", 0, 0, None, tick_json(volume=5)),
        Record("t", 0, 1, None, tick_json(timestamp="2025-01-06T14:31:00Z", volume=volume)),
    ]
    batch = decode_records(records, datetime.now(UTC))
    assert batch.ticks.num_rows == 1
    assert batch.dead.num_rows == 1


# --------------------------------------------------------------------------- differential


#: Pieces of tick messages near the edges of what the consumer's fast (Arrow) path
#: and its per-message path accept; a drawn message is a JSON object written by
#: hand so that duplicate keys, odd spacing and escapes are possible.
def _wire(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_TIMESTAMPS = st.one_of(
    st.datetimes(min_value=datetime(1969, 12, 31), max_value=datetime(2201, 1, 2)).map(_wire),
    st.sampled_from([1969, 1970, 2200, 2201]).flatmap(
        lambda y: st.datetimes(datetime(y, 1, 1), datetime(y, 12, 31, 23, 59, 59)).map(_wire)
    ),
    st.sampled_from(
        [
            "2025-01-06T14:30:00.000000Z",
            "2025-01-06T14:30:00Z",
            "2025-01-06T14:30:00.5+02:00",
            "2025-01-06 14:30:00",
            "2025-01-06",
            "2025-02-29T00:00:00.000000Z",
            "2024-02-29T00:00:00.000000Z",
            "2025-01-06T24:00:00.000000Z",
            "2025-01-06T14:30:60.000000Z",
            "1970-01-01T00:00:00.000000Z",
            "1969-12-31T23:59:59.999999Z",
            "2200-12-31T23:59:59.999999Z",
            "2201-01-01T00:00:00.000000Z",
            "0000-01-01T00:00:00.000000Z",
            "2025-1-6T14:30:00.000000Z",
            "2025-01-06T14:30:00.000000z",
            "",
        ]
    ),
)
_SYMBOLS = st.one_of(
    st.sampled_from(["SP500", "STOXX600", "A", "X" * 32, "X" * 33, "sp500", "", "A B", "É"]),
    st.from_regex(r"[A-Z0-9][A-Z0-9._-]{0,31}", fullmatch=True),
    st.text(max_size=5),
)
_PRICES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(-5, 10**6),
    st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308, 0.01]),
)
_VOLUMES = st.one_of(st.integers(-5, 2**62), st.sampled_from([0, -1, 2**62]))
_OTHER = st.sampled_from(
    ["null", "true", '"1"', "[]", "{}", '"x\\"', "1e999", "NaN", '"\\u0041"', "3.0", "3.5"]
)


def _json_value(value: object) -> str:
    return orjson.dumps(value).decode()


@st.composite
def tick_texts(draw: st.DrawFn) -> bytes | None:
    """One message: usually tick-shaped with one or two fields odd, sometimes garbage."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.one_of(st.none(), st.binary(max_size=40)))
    fields = {
        "timestamp": _json_value(draw(_TIMESTAMPS)),
        "symbol": _json_value(draw(_SYMBOLS)),
        "price": draw(_PRICES.map(_json_value) | st.sampled_from(["1e999", "-1E400", "1e-400"])),
        "volume": _json_value(draw(_VOLUMES)),
    }
    items = list(fields.items())
    # most messages keep the JSON types of a tick (edge values only), so that whole
    # batches reach the fast path; some get an odd value, a missing, extra or
    # repeated key, or another field order
    for _ in range(draw(st.integers(0, 2)) if kind >= 7 else 0):
        action = draw(st.integers(0, 3))
        name = draw(st.sampled_from(list(fields)))
        if action == 0:
            items = [(k, draw(_OTHER) if k == name else v) for k, v in items]
        elif action == 1:
            items = [(k, v) for k, v in items if k != name]
        elif action == 2:
            items.append((draw(st.sampled_from(["extra", "x", name])), draw(_OTHER)))
        else:
            items = draw(st.permutations(items))
    space = draw(st.sampled_from(["", " ", "\n"]))
    body = ("," + space).join(f'"{k}":{space}{v}' for k, v in items)
    return ("{" + space + body + space + "}").encode()


def reference(value: bytes | None) -> tuple:
    """What the consumer must make of one message: the per-message rules, no fast path."""
    try:
        if value is None:
            raise TickError("empty message (null value)")
        if len(value) > MAX_MESSAGE_BYTES:
            raise TickError(f"message of {len(value)} bytes exceeds {MAX_MESSAGE_BYTES}")
        tick = tick_from_message(value)
    except TickError as exc:
        return ("dead", str(exc))
    return ("tick", tick.symbol, tick.timestamp.replace(tzinfo=None), tick.price, tick.volume)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.lists(st.one_of(tick_texts(), st.just(GOOD)), min_size=1, max_size=25))
def test_batch_decoding_matches_the_per_message_rules(values: list[bytes | None]) -> None:
    """The consumer decodes a batch at once (Arrow) and falls back per message: whatever
    the mix, each message ends as the tick or the dead letter its own rules give."""
    records = [Record("t", i % 3, i, None, v) for i, v in enumerate(values)]
    batch = decode_records(records, datetime.now(UTC))
    ticks = {r["offset"]: r for r in batch.ticks.to_pylist()}
    dead = {r["offset"]: r for r in batch.dead.to_pylist()}
    assert not set(ticks) & set(dead)
    assert len(ticks) + len(dead) == len(values)
    for i, value in enumerate(values):
        expected = reference(value)
        if i in ticks:
            row = ticks[i]
            got = ("tick", row["symbol"], row["event_time"], row["price"], row["volume"])
        else:
            got = ("dead", dead[i]["reason"])
            assert dead[i]["raw"] == (None if value is None else value[:MAX_MESSAGE_BYTES])
        assert got == expected, value
    assert batch.offsets == {
        TopicPartition("t", p): max(i for i in range(len(values)) if i % 3 == p) + 1
        for p in {i % 3 for i in range(len(values))}
    }


# --------------------------------------------------------------------------- integration


def mixed_stream(seed: int = 5) -> list[Sent]:
    """3,000 good ticks and 2,480 bad messages (80 of each of 31 kinds), shuffled;
    half the messages of each kind keyed, half not (tombstones are all keyed)."""
    rng = random.Random(seed)
    ticks = generate_ticks(("SP500", "STOXX600", "NIKKEI225"), 1_000, seed=seed)
    messages: list[Sent] = []
    for n, tick in enumerate(ticks):
        messages.append(Sent("good", tick.key if n % 2 else None, tick.to_message()))
    serial = 0
    for kind, (make, _reason) in BAD_KINDS.items():
        for n in range(80):
            serial += 1
            value = make(serial)
            key = b"SP500" if n % 2 or value is None else None  # a null value needs a key
            messages.append(Sent(kind, key, value))
    rng.shuffle(messages)
    return messages


@pytest.mark.integration
def test_mixed_stream_every_message_accounted_for(fresh):
    messages = mixed_stream()
    good = [m for m in messages if m.kind == "good"]
    bad = [m for m in messages if m.kind != "good"]
    assert len(good) == 3_000 and len(bad) == 80 * len(BAD_KINDS)

    ensure_topic(fresh)
    producer = KafkaProducer(
        **connection_config(fresh), acks="all", linger_ms=20, max_request_size=1 << 20
    )
    try:
        futures = [(m, producer.send(fresh.topic, key=m.key, value=m.value)) for m in messages]
        producer.flush()
        for m, future in futures:
            meta = future.get(timeout=30)
            m.partition, m.offset = meta.partition, meta.offset
    finally:
        producer.close()
    assert len({(m.partition, m.offset) for m in messages}) == len(messages)

    run = consume(fresh, progress=False)
    assert run.messages_processed == len(messages)
    assert run.rows_inserted == len(good)
    assert run.errors == len(bad)
    assert run.duplicates == 0

    with store.read_connection(fresh.db_path) as con:
        tick_rows = con.execute(
            'SELECT "partition", "offset", symbol, event_time, price, volume, topic '
            "FROM market_ticks"
        ).fetchall()
        dead_rows = con.execute(
            'SELECT "partition", "offset", "key", raw, reason, topic FROM dead_letters'
        ).fetchall()
        [metrics] = con.execute(
            "SELECT messages_processed, rows_inserted, errors, status FROM pipeline_metrics"
        ).fetchall()
    assert metrics == (len(messages), len(good), len(bad), "ok")

    # every good message is one tick row at its own coordinates, with its own values
    by_coord = {(p, o): rest for p, o, *rest in tick_rows}
    assert len(tick_rows) == len(by_coord) == len(good)
    for m in good:
        symbol, event_time, price, volume, topic = by_coord[(m.partition, m.offset)]
        sent = orjson.loads(m.value)
        assert (symbol, price, volume, topic) == (
            sent["symbol"],
            sent["price"],
            sent["volume"],
            fresh.topic,
        )
        assert event_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ") == sent["timestamp"]

    # every bad message is one dead letter at its own coordinates: bytes, key, reason
    dead_by_coord = {(p, o): rest for p, o, *rest in dead_rows}
    assert len(dead_rows) == len(dead_by_coord) == len(bad)
    assert not set(dead_by_coord) & set(by_coord)
    reasons_seen: Counter[str] = Counter()
    for m in bad:
        key, raw, reason, topic = dead_by_coord[(m.partition, m.offset)]
        assert topic == fresh.topic
        assert key == m.key
        if m.value is None:
            assert raw is None
        else:
            assert raw == m.value[:MAX_MESSAGE_BYTES]  # oversized payloads keep their head
        assert BAD_KINDS[m.kind][1] in reason, (m.kind, reason)
        reasons_seen[m.kind] += 1
    assert reasons_seen == Counter({kind: 80 for kind in BAD_KINDS})

    health = store.health(fresh.db_path)
    assert (health["ticks"], health["dead_letters"], health["errors"]) == (
        len(good),
        len(bad),
        len(bad),
    )

    # a replay by another group re-reads everything and changes nothing in the store
    replay = consume(fresh.with_(consumer_group=fresh.consumer_group + "-replay"), progress=False)
    assert (replay.messages_processed, replay.rows_inserted, replay.duplicates) == (
        len(messages),
        0,
        len(good),
    )
    assert replay.errors == len(bad)
    assert store.tick_count(fresh.db_path) == len(good)
    with store.read_connection(fresh.db_path) as con:
        assert con.execute("SELECT count(*) FROM dead_letters").fetchall()[0][0] == len(bad)
