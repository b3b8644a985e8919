"""Several consumer workers on the DuckDB file: they share one writer process.

``marketstream consume --workers 3`` on a real broker, into one DuckDB file,
ends with every tick stored once and the store's per-partition counts showing
a partition for each worker (the spread partitioner); live mode with two
workers writes through the same writer process while a reader reads.
"""

from __future__ import annotations

import json
import re
import signal
import time
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer

from marketstream import store
from marketstream.clients import KafkaClients
from marketstream.consume import consume
from marketstream.logs import read_log
from marketstream.produce import ensure_topic, produce_ticks
from marketstream.ticks import generate_ticks
from marketstream.workers import WRITER_NAME, settled, start_workers, stop_workers, worker_run
from support.live import live_cli, wait_for_workers_to_store, worker_logs
from support.processes import cli
from support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("no_stray_children")


def test_three_workers_fill_one_duckdb_file_exactly_once(fresh) -> None:
    settings = fresh.with_(batch_size=1000)
    ensure_topic(settings)
    ticks = generate_ticks(settings.symbols, 5000, seed=11)
    produce_ticks(ticks, settings, progress=False)
    status = cli(settings, "broker", "status").stdout  # the topic's spread, before any consumer
    assert "messages per partition: 0: 5,000, 1: 5,000, 2: 5,000" in status
    out = cli(settings, "consume", "--workers", "3", "-q")
    assert f"consumed {len(ticks)} messages: {len(ticks)} new rows" in out.stdout
    report = json.loads(cli(settings, "stats", "--json").stdout)
    assert report["store"] == "duckdb"
    assert (report["ticks"], report["distinct_ticks"], report["dead_letters"]) == (15000, 15000, 0)
    assert [p["ticks"] for p in report["partitions"]] == [5000, 5000, 5000]
    again = cli(settings, "consume", "--workers", "3", "-q")  # nothing new: nothing added
    assert "consumed 0 messages" in again.stdout


def test_three_workers_on_the_demos_short_topic_each_take_a_partition_and_say_so(
    fresh,
) -> None:
    """``make demo`` with three workers: 150 ticks, read by the first worker up alone
    before the others had joined (issue 18, friction 3). The batch run's start gate lets
    each take one partition; the summary shows each worker's partitions and messages."""
    ensure_topic(fresh)
    produce_ticks(generate_ticks(fresh.symbols, 50, seed=42), fresh, progress=False)
    out = cli(fresh, "consume", "--workers", "3", "-q").stdout
    assert "consumed 150 messages: 150 new rows" in out
    shares = [line.strip() for line in out.splitlines() if line.startswith("  consumer-")]
    assert len(shares) == 3, out
    held = sorted(re.search(r"partitions \[([0-9, ]*)\]", line).group(1) for line in shares)
    assert held == ["0", "1", "2"], out
    assert all(", 50 messages, " in line for line in shares), out


def test_workers_at_a_start_gate_fetch_nothing_then_share_the_topic(fresh, tmp_path) -> None:
    """The scaling bench's start: three workers join and take a partition each, paused;
    nothing is stored until the gate opens, and then each stores exactly its own."""
    settings = fresh.with_(batch_size=500)
    ensure_topic(settings)
    produce_ticks(generate_ticks(settings.symbols, 1000, seed=5), settings, progress=False)
    gate = tmp_path / "gate"
    children = start_workers(settings, 3, live=False, logs=tmp_path, gate=gate)
    consumers = [c for c in children if c.name != WRITER_NAME]
    try:
        group = (settings.log_path, settings.consumer_group, 3, settings.partitions)
        wait_until(lambda: settled(*group), 120, "three workers to hold a partition each")
        time.sleep(1.0)  # what a worker fetched at the gate would be received before it opens
        opened = datetime.now(UTC).replace(tzinfo=None)
        gate.touch()
        for child in consumers:
            child.proc.wait(timeout=120)
    finally:
        stop_workers(children)
    runs = [worker_run(child) for child in consumers]
    assert [run.rows_inserted for run in runs if run] == [1000, 1000, 1000]
    stored = store.ticks(settings.db_path)
    assert len(stored) == 3000 and stored["received_at"].min() >= opened


def test_live_mode_with_two_workers_shares_one_duckdb_file(fresh) -> None:
    """``live --consumers 2`` on the file: both workers store through one writer process,
    and the store is read meanwhile (the writer lets go between batches)."""
    with live_cli(fresh, "--no-api", "--no-voila", "--consumers", "2") as live:
        wait_for_workers_to_store(live, workers=2, partitions=fresh.partitions)
        seen: list[int] = []
        wait_until(
            lambda: seen.append(store.tick_count(fresh.db_path)) or len(set(seen)) >= 3,
            60,
            "the row count to grow while it is read",
            interval_s=0.5,
            died=live.gone,
            context=live.output,
        )
        live.proc.send_signal(signal.SIGINT)
        assert live.proc.wait(timeout=90) == 0, live.output()
    assert not live.leftovers
    report = store.stats(fresh.db_path)
    assert report["ticks"] > 0 and report["distinct_ticks"] == report["ticks"]
    runs = store.pipeline_runs(fresh.db_path)
    logs = worker_logs(fresh)
    assert list(runs["mode"]) == ["live", "live"] and all(runs["rows_inserted"] > 0), logs
    assert int(runs["rows_inserted"].sum()) == report["ticks"], logs


def test_a_session_timeout_the_broker_refuses_is_named(fresh) -> None:
    """Below the broker's group.min.session.timeout.ms (6 s by default) the group join is
    refused: the CLI says which setting, not a KafkaError's class name."""
    settings = fresh.with_(session_timeout_s=2.0)
    ensure_topic(settings)
    # workers join a group (a lone consumer takes its partitions without one)
    proc = cli(settings, "consume", "-q", "--workers", "2", check=False)
    assert proc.returncode != 0
    assert "the broker refuses KAFKA_SESSION_TIMEOUT_S=2" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


class _NeverJoins(KafkaConsumer):
    """A client that never gets a partition of its group: it subscribes to a pattern no
    topic matches. What a worker saw when kafka-python's coordinator lookup never
    completed (``consume.STALLED_MARGIN_S``)."""

    def subscribe(self, topics=(), pattern=None, listener=None):
        super().subscribe(pattern="^no-topic-is-named-this$", listener=listener)


def test_a_worker_whose_client_never_joins_rejoins_with_a_new_one(fresh) -> None:
    """A session timeout and 15 s without a partition: the worker replaces its client (the
    factory's second), which joins, takes every partition and stores every tick once."""
    settings = fresh.with_(consumers=2, session_timeout_s=6.0)  # 6 s: the broker's minimum
    ensure_topic(settings)
    ticks = generate_ticks(settings.symbols, 100, seed=5)
    produce_ticks(ticks, settings, progress=False)
    built: list[KafkaConsumer] = []

    def build(**config) -> KafkaConsumer:
        built.append((_NeverJoins if not built else KafkaConsumer)(**config))
        return built[-1]

    clients = KafkaClients(consumer_class=build)
    run = consume(settings, clients=clients, idle_timeout_s=0, progress=False)
    assert [type(c) for c in built] == [_NeverJoins, KafkaConsumer]
    assert (run.messages_processed, run.rows_inserted) == (len(ticks), len(ticks))
    assert store.tick_count(settings.db_path) == len(ticks)
    events = [e["event"] for e in read_log(settings.log_path)]
    assert events.count("group_rejoin") == 1
    assert "partitions_assigned" in events[events.index("group_rejoin") :]
