"""Dead letters through a real broker: every message that is not a valid tick is kept
with its bytes, coordinates and reason, and never stops the good ones around it.

The test sends thousands of good ticks and bad messages of every kind
(:data:`support.bad_messages.BAD_KINDS`), interleaved, keyed and unkeyed; each
send's (partition, offset) comes back from the broker, so every message is followed
to the one row it must become: a tick in ``market_ticks`` or a dead letter in
``dead_letters``. Each kind alone, and the decoder's rules: tests/unit/test_decode.py.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import orjson
from kafka import KafkaProducer

from marketstream import store
from marketstream.clients import connection_config
from marketstream.consume import consume
from marketstream.decode import MAX_MESSAGE_BYTES
from marketstream.produce import ensure_topic
from marketstream.ticks import generate_ticks
from support.bad_messages import BAD_KINDS


@dataclass
class Sent:
    """One message as sent, and where the broker put it."""

    kind: str  # "good" or a key of BAD_KINDS
    key: bytes | None
    value: bytes | None
    partition: int = -1
    offset: int = -1


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

    # another group resumes at the store's positions: nothing left to read
    other = consume(fresh.with_(consumer_group=fresh.consumer_group + "-other"), progress=False)
    assert (other.messages_processed, other.behind) == (0, 0)
    # a replay (the store's positions moved back to 0) re-reads everything, changes nothing
    store.set_positions(fresh.db_path, {(fresh.topic, p): 0 for p in range(fresh.partitions)})
    replay = consume(fresh, progress=False)
    assert (replay.messages_processed, replay.rows_inserted, replay.duplicates) == (
        len(messages),
        0,
        len(good),
    )
    assert replay.errors == len(bad)
    assert store.tick_count(fresh.db_path) == len(good)
    with store.read_connection(fresh.db_path) as con:
        assert con.execute("SELECT count(*) FROM dead_letters").fetchall()[0][0] == len(bad)
