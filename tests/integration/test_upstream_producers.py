"""Topics written by producers the kit did not write: every codec, and transactions.

The common upstream is a librdkafka-based producer (confluent-kafka here, the
same library behind most non-Java producers). It writes batches compressed with
any codec, and transactional producers commit and abort. On a real broker:

* each codec (gzip, snappy, lz4, zstd) from librdkafka lands exactly, no dead letters
  (kafka-python decodes them with its optional codec libraries, pinned in pyproject);
* the kit's own producer writes each codec too (``KAFKA_COMPRESSION``);
* a transactional producer that commits, aborts and commits again: the consumer
  (``read_committed`` by default) stores exactly the committed ticks; with
  ``KAFKA_ISOLATION_LEVEL=read_uncommitted`` it would store the aborted ones too.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from marketstream import store
from marketstream.consume import consume
from marketstream.produce import ensure_topic, produce_ticks
from marketstream.settings import Settings
from marketstream.ticks import Tick, generate_ticks

CODECS = ("gzip", "snappy", "lz4", "zstd")


def librdkafka_producer(settings: Settings, **config: object) -> Producer:
    """A librdkafka producer as an upstream team would configure it."""
    return Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "linger.ms": 20,
            "enable.idempotence": True,
            **config,
        }
    )


def send_all(producer: Producer, topic: str, ticks: list[Tick]) -> None:
    """Send and wait for every delivery report; fail on any error."""
    errors: list[str] = []

    def report(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for tick in ticks:
        producer.produce(topic, key=tick.key, value=tick.to_message(), on_delivery=report)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors[:3]


@pytest.mark.parametrize("codec", CODECS)
def test_librdkafka_batches_in_every_codec_land_exactly(fresh, codec):
    settings = fresh.with_(symbols=("SP500", "DAX", "FTSE100"))
    ensure_topic(settings)
    ticks = generate_ticks(settings.symbols, 1_000, seed=5)
    send_all(librdkafka_producer(settings, **{"compression.type": codec}), settings.topic, ticks)
    run = consume(settings, progress=False)
    assert (run.messages_processed, run.rows_inserted, run.errors) == (3_000, 3_000, 0)
    assert store.tick_count(settings.db_path) == 3_000


@pytest.mark.parametrize("codec", CODECS)
def test_the_kits_producer_writes_every_codec(fresh, codec):
    settings = fresh.with_(compression=codec)
    ticks = generate_ticks(settings.symbols, 500, seed=6)
    summary = produce_ticks(ticks, settings, progress=False)
    assert (summary.sent, summary.failed) == (1_500, 0)
    run = consume(settings, progress=False)
    assert (run.rows_inserted, run.errors) == (1_500, 0)


def test_aborted_transactions_never_land(fresh):
    """Commit 300 ticks, abort 300, commit 300: exactly the 600 committed are stored."""
    ensure_topic(fresh)
    ticks = generate_ticks(fresh.symbols, 300, seed=8)  # 900 ticks, in time order
    first, aborted, last = ticks[:300], ticks[300:600], ticks[600:]
    producer = librdkafka_producer(fresh, **{"transactional.id": f"upstream-{fresh.topic}"})
    producer.init_transactions(30)
    for part, commit in ((first, True), (aborted, False), (last, True)):
        producer.begin_transaction()
        send_all(producer, fresh.topic, part)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    assert fresh.isolation_level == "read_committed"  # the default
    run = consume(fresh, progress=False)
    assert (run.rows_inserted, run.errors) == (600, 0)
    stored = set(
        zip(
            store.ticks(fresh.db_path)["symbol"],
            store.ticks(fresh.db_path)["event_time"],
            strict=True,
        )
    )
    key = [(t.symbol, t.timestamp.replace(tzinfo=None)) for t in ticks]
    assert stored == set(key[:300]) | set(key[600:])
    assert not stored & set(key[300:600])

    # what the setting is for: a consumer that reads uncommitted sees the aborted ticks too
    dirty = fresh.with_(
        isolation_level="read_uncommitted",
        consumer_group=f"{fresh.consumer_group}-dirty",
        db_path=fresh.db_path.with_name("dirty.duckdb"),
    )
    assert consume(dirty, progress=False).rows_inserted == 900
