"""What the consuming workers run: the bare client, our consumer, the live consumer, the seed.

Each is a :data:`marketstream.bench.workers.WorkerFn`, run in a worker
process of its own (see :mod:`marketstream.bench.workers`). Every Kafka
client is built through :data:`marketstream.clients.DEFAULT_CLIENTS` with
the kit's consumer settings, so the references differ from our consumer only
in what they do with the records, never in how they fetch them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from marketstream.bench.workers import Emitter
from marketstream.clients import DEFAULT_CLIENTS
from marketstream.settings import Settings

#: A consume worker gives up once no message has arrived for this long (s).
IDLE_TIMEOUT_S = 30.0


def ceiling(settings: Settings, cfg: dict, stop: threading.Event, emit: Emitter) -> dict:
    """kafka-python alone: the same consumer settings, every message fetched and dropped."""
    from marketstream.consume import GIL_SWITCH_INTERVAL_S

    n = int(cfg["n"])
    # The same GIL hand-over as consume() uses, so the ceiling is the best the bare client
    # does under the conditions our consumer runs in (measured: it does not slow it down).
    sys.setswitchinterval(float(cfg.get("switch_interval_s", GIL_SWITCH_INTERVAL_S)))
    emit("ready")
    started = time.perf_counter()
    consumer = DEFAULT_CLIENTS.consumer(settings)
    got = 0
    try:
        while got < n and not stop.is_set():
            polled = consumer.poll(timeout_ms=500, max_records=min(settings.batch_size, n - got))
            for records in polled.values():
                got += len(records)
            emit.progress(got)
    finally:
        consumer.close(autocommit=False)
    elapsed = time.perf_counter() - started
    return {"messages": got, "elapsed_s": elapsed, "rate": got / elapsed}


def consume(settings: Settings, cfg: dict, stop: threading.Event, emit: Emitter) -> dict:
    """Our consumer, exactly as ``marketstream consume`` runs it, for ``n`` messages.

    End to end (``concurrent_producer``), the producer is still writing when the
    consumer catches up with it, where batch mode would stop. The bench knows
    how many messages will come, so it runs the batch policy without that stop
    (``stop_at_end=False``): it ends after ``n`` messages, or once none has come
    for ``idle_timeout_s``. One run, one group join.
    """
    from marketstream.consume import BATCH
    from marketstream.consume import consume as consume_run

    n = int(cfg["n"])
    idle_s = float(cfg.get("idle_timeout_s", IDLE_TIMEOUT_S))
    policy = replace(BATCH, stop_at_end=False) if cfg.get("concurrent_producer") else BATCH
    done = 0

    def on_batch(batch: Any, added: int) -> None:
        nonlocal done
        done += batch.ticks.num_rows + batch.dead.num_rows
        emit.progress(done)

    emit("ready")
    started = time.perf_counter()
    run = consume_run(
        settings,
        max_messages=n,
        idle_timeout_s=idle_s,
        stop=stop,
        progress=False,
        on_batch=on_batch,
        policy=policy,
    )
    elapsed = time.perf_counter() - started
    return {
        "messages": run.messages_processed,
        "rows_inserted": run.rows_inserted,
        "dead_letters": run.errors,
        "elapsed_s": elapsed,
        "rate": run.messages_processed / elapsed,
        "ended_at_epoch": time.time(),
    }


def live(settings: Settings, cfg: dict, stop: threading.Event, emit: Emitter) -> dict:
    """The live consumer (releases the DuckDB file between batches) until stdin closes."""
    from marketstream.consume import consume as consume_run

    done = 0

    def on_batch(batch: Any, added: int) -> None:
        nonlocal done
        done += added
        emit.progress(done)

    emit("ready")
    run = consume_run(settings, live=True, stop=stop, progress=False, on_batch=on_batch)
    return {"messages": run.messages_processed, "rows_inserted": run.rows_inserted}


def naive(settings: Settings, cfg: dict, stop: threading.Event, emit: Emitter) -> dict:
    """The seed's approach: json.loads and one DuckDB INSERT statement per message.

    Same Kafka consumer settings as ours, same table (with its primary key), so
    the difference measured is only per-message versus columnar batch work.
    """
    import duckdb

    from marketstream import store

    n = int(cfg["n"])
    store.init_db(settings.db_path)
    emit("ready")
    started = time.perf_counter()
    con = duckdb.connect(str(settings.db_path))
    consumer = DEFAULT_CLIENTS.consumer(settings)
    got = 0
    sql = "INSERT OR IGNORE INTO market_ticks VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    try:
        while got < n and not stop.is_set():
            polled = consumer.poll(timeout_ms=500, max_records=min(settings.batch_size, n - got))
            for records in polled.values():
                for rec in records:
                    tick = json.loads(rec.value)
                    event_time = datetime.fromisoformat(tick["timestamp"]).replace(tzinfo=None)
                    received = datetime.now(UTC).replace(tzinfo=None)
                    con.execute(
                        sql,
                        [
                            tick["symbol"],
                            event_time,
                            tick["price"],
                            tick["volume"],
                            rec.topic,
                            rec.partition,
                            rec.offset,
                            received,
                        ],
                    )
                    got += 1
                emit.progress(got)
            if polled:
                consumer.commit()
    finally:
        consumer.close(autocommit=False)
        con.close()
    elapsed = time.perf_counter() - started
    return {"messages": got, "elapsed_s": elapsed, "rate": got / elapsed}


def quix(settings: Settings, cfg: dict, stop: threading.Event, emit: Emitter) -> dict:
    """A peer: Quix Streams (librdkafka underneath) with a batching DuckDB sink.

    The same topic and table (its primary key included: ``INSERT OR IGNORE``, as
    ours), one insert per Quix checkpoint and partition (its default commit
    interval, 5 s), offsets committed by Quix after the sink has flushed. It does
    less than ours: no dead letters and no validation beyond JSON, no stream
    positions in the store's transaction (its exactly-once rests on Kafka's
    commit alone). Plaintext brokers only: the kit's security settings are not
    translated to librdkafka's. Needs ``quixstreams`` (bench/README.md, Peers).
    """
    import duckdb
    import pyarrow as pa
    from quixstreams import Application
    from quixstreams.sinks import BatchingSink, SinkBatch

    from marketstream import store

    n = int(cfg["n"])
    store.init_db(settings.db_path)
    con = duckdb.connect(str(settings.db_path))
    done = 0

    class DuckDBSink(BatchingSink):
        def write(self, batch: SinkBatch) -> None:
            nonlocal done
            items = list(batch)
            values = [item.value for item in items]
            received = datetime.now(UTC).replace(tzinfo=None)
            table = pa.table(
                {
                    "symbol": pa.array([v["symbol"] for v in values], pa.string()),
                    "event_time": pa.array([v["timestamp"] for v in values], pa.string())
                    .cast(pa.timestamp("us", "UTC"))
                    .cast(pa.timestamp("us")),
                    "price": pa.array([v["price"] for v in values], pa.float64()),
                    "volume": pa.array([v["volume"] for v in values], pa.int64()),
                    "topic": pa.array([batch.topic] * len(items), pa.string()),
                    "partition": pa.array([batch.partition] * len(items), pa.int32()),
                    "offset": pa.array([item.offset for item in items], pa.int64()),
                    "received_at": pa.array([received] * len(items), pa.timestamp("us")),
                }
            )
            con.register("quix_batch", table)
            con.execute("INSERT OR IGNORE INTO market_ticks SELECT * FROM quix_batch").fetchall()
            con.unregister("quix_batch")
            done += len(items)
            emit.progress(done)

    emit("ready")
    started = time.perf_counter()
    app = Application(
        broker_address=settings.bootstrap_servers,
        consumer_group=settings.consumer_group,
        auto_offset_reset="earliest",
        loglevel="WARNING",
        state_dir=str(settings.db_path.parent / "quix-state"),
    )
    topic = app.topic(settings.topic, value_deserializer="json")
    app.dataframe(topic).sink(DuckDBSink())
    try:
        app.run(count=n, timeout=IDLE_TIMEOUT_S)
    finally:
        con.close()
    elapsed = time.perf_counter() - started
    return {"messages": done, "elapsed_s": elapsed, "rate": done / elapsed}
