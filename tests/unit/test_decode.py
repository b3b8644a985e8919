"""The consumer's decoder (:mod:`marketstream.decode`): Kafka records into Arrow ticks and
dead letters, per batch.

* Every kind of bad message (:data:`support.bad_messages.BAD_KINDS`) becomes a dead
  letter with its bytes, coordinates and reason, and never stops the good ones
  around it.
* The batch decoder (a fast Arrow path with a per-message fallback) must accept
  exactly what the per-message rules accept, with the same values, and give the
  same dead-letter reasons: checked on hand-picked edge cases, on thousands of
  random mutations of valid messages, and on Hypothesis-drawn batches.

Through a real broker: tests/integration/test_dead_letters.py.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import TopicPartition

from marketstream.decode import MAX_MESSAGE_BYTES, decode_records, decode_value
from marketstream.ticks import TickError, generate_ticks
from support.bad_messages import BAD_KINDS, tick_json
from support.factories import Record

GOOD_TICK = (
    b'{"timestamp":"2025-01-06T14:30:00.000000Z","symbol":"SP500","price":5900.25,"volume":10}'
)


def reference(value: bytes | None) -> tuple:
    """What the consumer must make of one message: the per-message rules, no fast path
    (decode_value: what the consumer did before the batch decoder, one by one)."""
    try:
        tick = decode_value(value)
    except TickError as exc:
        return ("dead", str(exc))
    return ("tick", tick.symbol, tick.timestamp.replace(tzinfo=None), tick.price, tick.volume)


def per_message(records: list[Record]) -> tuple[list[tuple], list[tuple]]:
    """:func:`reference` over records: (symbol, event time, price, volume, offset) of the
    good ones, (offset, reason) of the dead ones."""
    good, dead = [], []
    for r in records:
        kind, *rest = reference(r.value)
        if kind == "dead":
            dead.append((r.offset, *rest))
        else:
            good.append((*rest, r.offset))
    return good, dead


def batch_decoded(records: list[Record]) -> tuple[list[tuple], list[tuple]]:
    """The same two lists from the batch decoder."""
    batch = decode_records(records, datetime.now(UTC))
    columns = ("symbol", "event_time", "price", "volume", "offset")
    good = list(zip(*(batch.ticks.column(c).to_pylist() for c in columns), strict=True))
    dead = list(
        zip(batch.dead["offset"].to_pylist(), batch.dead["reason"].to_pylist(), strict=True)
    )
    return good, dead


# --------------------------------------------------------------------------- dead letters


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


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.lists(st.one_of(tick_texts(), st.just(GOOD_TICK)), min_size=1, max_size=25))
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


# --------------------------------------------------------------------------- edge cases


#: A good tick that each edge case below alters in one place.
EDGE_GOOD = (
    b'{"timestamp":"2025-01-06T14:30:00.000000Z","symbol":"SP500","price":5900.5,"volume":7}'
)
EDGE_CASES = [
    EDGE_GOOD,
    EDGE_GOOD.replace(b"5900.5", b"5900"),  # integer price
    EDGE_GOOD.replace(b"5900.5", b"5.9005e3"),
    EDGE_GOOD.replace(b"5900.5", b"-0.0"),
    EDGE_GOOD.replace(b"5900.5", b"NaN"),
    EDGE_GOOD.replace(b"5900.5", b"1e999"),
    EDGE_GOOD.replace(b"5900.5", b'"5900.5"'),
    EDGE_GOOD.replace(b"5900.5", b"true"),
    EDGE_GOOD.replace(b":7}", b":7.0}"),  # integral float volume: valid, per-message path
    EDGE_GOOD.replace(b":7}", b":7.5}"),
    EDGE_GOOD.replace(b":7}", b":-7}"),
    EDGE_GOOD.replace(b":7}", b":null}"),
    EDGE_GOOD.replace(b":7}", b':7,"extra":{"a":1}}'),
    EDGE_GOOD.replace(b'"volume":7', b'"price":-1,"volume":7'),  # duplicate key
    EDGE_GOOD.replace(b"SP500", b"sp500"),
    EDGE_GOOD.replace(b"SP500", b"SP\\u0035"),  # an escape: per-message path
    EDGE_GOOD.replace(b"SP500", b"S\xffP"),
    EDGE_GOOD.replace(b"SP500", b"{}"),
    EDGE_GOOD.replace(b"SP500", b"X" * 33),
    EDGE_GOOD.replace(b"000000Z", b"000000+00:00"),  # other ISO forms: per-message path
    EDGE_GOOD.replace(b".000000Z", b"Z"),
    EDGE_GOOD.replace(b"2025-01-06", b"2025-02-30"),
    EDGE_GOOD.replace(b"14:30", b"24:30"),
    EDGE_GOOD.replace(b"2025", b"1969"),
    EDGE_GOOD.replace(b"2025", b"2201"),
    EDGE_GOOD.replace(b"2025", b"2200"),
    EDGE_GOOD + b"{}",
    EDGE_GOOD + EDGE_GOOD,
    EDGE_GOOD + b"\n",
    b" " + EDGE_GOOD,
    EDGE_GOOD[:-1],
    b"null",
    b"{}null",
    b"{}",
    b"[]",
    b"5",
    b"",
    b"\xff\xfe",
    None,
    EDGE_GOOD.replace(b"SP500", b"P" * 30).replace(
        b"7}", b"7" + b" " * (MAX_MESSAGE_BYTES + 1) + b"}"
    ),
]


@pytest.mark.parametrize("value", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_batch_decoder_matches_per_message_on_edge_cases(value):
    # each case between good ticks, so a bad one cannot hide in an all-bad batch
    ticks = generate_ticks(("A", "B"), 3, seed=1)
    values = [t.to_message() for t in ticks[:3]] + [value] + [t.to_message() for t in ticks[3:]]
    records = [Record("t", i % 2, i, b"k", v) for i, v in enumerate(values)]
    assert batch_decoded(records) == per_message(records)


def test_batch_decoder_matches_per_message_on_random_mutations():
    rng = random.Random(20250106)
    base = [t.to_message() for t in generate_ticks(("SP500", "A.B-C_9", "X"), 100, seed=3)]
    alphabet = [*b'{}[]",:0123456789.eE+- \t\\nulltrfsZT', 0xFF, 0xC3, 0x00, 0x0A]
    snippets = [b"null", b"true", b"1e999", b"NaN", b"-0", b'"x"', b"{}", b",", b'"a":1,']

    def mutate(value: bytes) -> bytes:
        out = bytearray(value)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(out) + 1)
            roll = rng.random()
            if roll < 0.3 and out:
                out[min(pos, len(out) - 1)] = rng.choice(alphabet)
            elif roll < 0.5 and out:
                del out[min(pos, len(out) - 1)]
            elif roll < 0.75:
                out[pos:pos] = bytes([rng.choice(alphabet)])
            else:
                out[pos:pos] = rng.choice(snippets)
        return bytes(out)

    for _ in range(1_500):
        records = []
        for offset in range(rng.randint(1, 40)):
            roll = rng.random()
            value = rng.choice(base) if roll < 0.5 else mutate(rng.choice(base))
            records.append(Record("t", rng.randrange(3), offset, b"k", value))
        assert batch_decoded(records) == per_message(records), [r.value for r in records]


def test_batch_decoder_keeps_record_order_and_offsets_per_partition():
    ticks = generate_ticks(("A", "B", "C"), 50, seed=2)
    records = [Record("t", i % 3, 100 + i, t.key, t.to_message()) for i, t in enumerate(ticks)]
    records.insert(7, Record("t", 1, 99, None, b"junk"))  # a slow-path row amid fast ones
    batch = decode_records(records, datetime.now(UTC))
    assert batch.ticks["offset"].to_pylist() == [r.offset for r in records if r.value != b"junk"]
    # the offset committed per partition is the next one to read: highest seen + 1
    assert {tp.partition: o for tp, o in batch.offsets.items()} == {0: 248, 1: 249, 2: 250}


@pytest.mark.parametrize("symbol", ["SP500\n", "SP500\r", " SP500", "SP500 ", "SP\t500", "ＳＰ500"])
def test_a_symbol_that_is_almost_right_is_a_dead_letter_on_both_paths(symbol: str) -> None:
    """Python's ``$`` also matches before a final newline: "SP500\\n" was stored as a new
    series. Escaped (\\n in the JSON: the per-message path) or not, it is a dead letter."""
    value = orjson.dumps(
        {"timestamp": "2025-01-06T14:30:00Z", "symbol": symbol, "price": 1.0, "volume": 1}
    )
    batch = decode_records([Record("t", 0, 0, b"k", value)], datetime.now(UTC))
    assert batch.ticks.num_rows == 0 and batch.dead.num_rows == 1
    assert "symbol" in batch.dead["reason"][0].as_py()
    with pytest.raises(TickError, match="symbol"):
        decode_value(value)
