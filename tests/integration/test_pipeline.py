"""Integration: generator -> real Kafka broker -> DuckDB file, the papermill pipeline, nbval.

The broker is a real single-node KRaft Kafka started by the session fixture
in tests/conftest.py; each test gets its own topic, consumer group and DuckDB file.
"""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pandas as pd
from kafka import KafkaProducer

from marketstream import store
from marketstream.clients import DEFAULT_CLIENTS, connection_config
from marketstream.consume import consume
from marketstream.logs import read_log
from marketstream.notebook_runs import NOTEBOOKS
from marketstream.pipeline import PIPELINE_NOTEBOOKS, run_pipeline
from marketstream.produce import produce_csv, replication_plan
from marketstream.settings import PROJECT_ROOT
from marketstream.ticks import generate_ticks, write_csv

SYMBOLS = {"SP500", "STOXX600", "NIKKEI225"}


def _produce_sample(settings) -> None:
    ticks = generate_ticks(settings.symbols, settings.ticks_per_symbol, seed=settings.seed)
    write_csv(ticks, settings.csv_path)
    summary = produce_csv(settings.csv_path, settings, progress=False)
    assert (summary.sent, summary.failed, summary.rejected) == (150, 0, 0)


def test_csv_to_duckdb_exact_rows_and_values(fresh):
    _produce_sample(fresh)
    run = consume(fresh, progress=False)
    assert (run.messages_processed, run.rows_inserted, run.errors) == (150, 150, 0)

    stored = store.ticks(fresh.db_path)
    assert len(stored) == 150
    assert set(stored["symbol"]) == SYMBOLS
    expected = pd.read_csv(fresh.csv_path)
    expected["event_time"] = pd.to_datetime(expected["timestamp"]).dt.tz_localize(None)
    merged = expected.merge(stored, on=["symbol", "event_time"], suffixes=("_csv", ""))
    assert len(merged) == 150
    assert (merged["price_csv"] == merged["price"]).all()
    assert (merged["volume_csv"] == merged["volume"]).all()
    assert set(stored["topic"]) == {fresh.topic}
    assert not stored.duplicated(["partition", "offset"]).any()

    runs = store.pipeline_runs(fresh.db_path)
    assert runs.loc[0, "messages_processed"] == 150 and runs.loc[0, "throughput_per_s"] > 0
    events = [e["event"] for e in read_log(fresh.log_path)]
    # one broker: the topic's creation logged that its replication was capped to 1
    assert events[0] == "topic_replication_capped"
    assert events[1] == "consume_start" and events[-1] == "consume_end"


def test_replay_and_reproduce_never_duplicate(fresh):
    _produce_sample(fresh)
    consume(fresh, progress=False)
    # another consumer group on the same store resumes at the store's positions: nothing
    other = consume(fresh.with_(consumer_group=fresh.consumer_group + "-other"), progress=False)
    assert (other.messages_processed, other.behind) == (0, 0)
    # the store's positions moved back to 0 replay the whole topic, adding nothing
    store.set_positions(fresh.db_path, {(fresh.topic, p): 0 for p in range(fresh.partitions)})
    replay = consume(fresh, progress=False)
    assert (replay.messages_processed, replay.rows_inserted, replay.duplicates) == (150, 0, 150)
    # producing the same CSV again puts 150 new offsets on the topic, same ticks
    produce_csv(fresh.csv_path, fresh, progress=False)
    again = consume(fresh, progress=False)
    assert (again.messages_processed, again.rows_inserted) == (150, 0)
    assert store.tick_count(fresh.db_path) == 150
    # the same group with nothing new to read stops at once with nothing processed
    assert consume(fresh, progress=False).messages_processed == 0


def test_bad_csv_rows_are_skipped_and_reported(fresh):
    fresh.csv_path.write_text(
        "timestamp,symbol,price,volume\n"
        "2025-01-01T00:00:00Z,SP500,5900.5,10\n"
        "2025-01-01T00:00:01Z,SP500,oops,10\n"
        "2025-01-01T00:00:02Z,SP500,5901.5,12\n"
    )
    summary = produce_csv(fresh.csv_path, fresh, progress=False)
    assert (summary.sent, summary.rejected) == (2, 1)
    # the replication cap on one broker is said first, then the bad row
    assert summary.problems == [
        replication_plan(fresh, 1).capped,
        "line 3: price 'oops' is not a number",
    ]
    consume(fresh, progress=False)
    assert store.tick_count(fresh.db_path) == 2


def test_invalid_messages_are_counted_and_kept_as_dead_letters(fresh):
    _produce_sample(fresh)
    producer = KafkaProducer(**connection_config(fresh))
    bad = [
        b"not json",
        b'{"symbol": "SP500"}',
        b"\xff\xfe",
        b'{"timestamp": "2025-01-01T00:00:00Z", "symbol": "SP500", "price": -1, "volume": 1}',
    ]
    for value in bad:
        producer.send(fresh.topic, key=b"SP500", value=value)
    producer.flush()
    producer.close()
    run = consume(fresh, progress=False)
    assert (run.messages_processed, run.rows_inserted, run.errors) == (154, 150, 4)
    dead = store.dead_letters(fresh.db_path)
    assert sorted(bytes(v) for v in dead["raw"]) == sorted(bad)
    assert dead["partition"].notna().all() and dead["offset"].notna().all()
    assert any(e["event"] == "dead_letters" for e in read_log(fresh.log_path))


def test_papermill_pipeline_runs_all_notebooks_and_is_idempotent(fresh):
    summary = run_pipeline(fresh, progress=False)
    assert summary.rows == 150
    assert [p.stem for p in summary.outputs] == list(PIPELINE_NOTEBOOKS)
    assert all(p.exists() for p in summary.outputs)
    assert not summary.broker_started  # the session broker was already there
    events = [e["event"] for e in read_log(fresh.log_path)]
    assert events[0] == "pipeline_start" and events[-1] == "pipeline_end"
    assert {"consume_start", "consume_end"} <= set(events)
    again = run_pipeline(fresh, progress=False)
    assert again.rows == 150
    assert len(store.pipeline_runs(fresh.db_path)) == 2
    fresh_run = run_pipeline(fresh, fresh=True, progress=False)
    assert fresh_run.rows == 150
    assert len(store.pipeline_runs(fresh.db_path)) == 1


def test_notebooks_use_every_setting_the_caller_gives(fresh, monkeypatch):
    """The pipeline's settings reach the notebooks whole: a caller's consumer group,
    partitions, batch size and idle timeout win over contrary environment variables
    that the notebook kernels inherit (they used to be replaced by them)."""
    for name, value in {
        "KAFKA_CONSUMER_GROUP": "from-the-environment",
        "KAFKA_PARTITIONS": "1",
        "MARKET_BATCH_SIZE": "5000",
        "MARKET_IDLE_TIMEOUT_S": "9",
    }.items():
        monkeypatch.setenv(name, value)
    wanted = fresh.with_(
        consumer_group=f"{fresh.consumer_group}-nb",
        partitions=5,
        batch_size=7,
        idle_timeout_s=2.5,
    )
    summary = run_pipeline(wanted, progress=False)
    assert summary.rows == 150

    admin = DEFAULT_CLIENTS.admin(wanted)
    try:
        [topic] = admin.describe_topics([wanted.topic])
        assert len(topic["partitions"]) == 5
        offsets = admin.list_group_offsets(wanted.consumer_group)[wanted.consumer_group]
        # 150 ticks and the consume notebook's 3 bad messages (marketstream.faults)
        assert sum(meta.offset for meta in offsets.values()) == 153
        assert "from-the-environment" not in str(admin.list_groups())
    finally:
        admin.close()
    # the consume notebook shows the settings it ran with
    shown = "".join(
        "".join(out.get("data", {}).get("text/plain", ""))
        for cell in nbformat.read(summary.outputs[2], as_version=4).cells
        for out in cell.get("outputs", [])
    )
    assert "batch_size=7," in shown and "idle_timeout_s=2.5," in shown
    assert f"consumer_group='{wanted.consumer_group}'" in shown


def test_notebooks_pass_strict_nbval(kafka):
    """nbval runs every notebook (01-07) top to bottom in a real kernel and compares each
    cell's output with the committed one: strict, not --nbval-lax, so a changed output
    fails. notebooks/conftest.py gives the kernels a sandbox (empty home, new topic and
    group, default settings) on the session's broker, and nbval_sanitize.cfg masks what
    legitimately differs (paths, ports, rates, progress counts)."""
    notebooks = [str(PROJECT_ROOT / "notebooks" / f"{n}.ipynb") for n in NOTEBOOKS]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval",
            "--nbval-broker",
            kafka.bootstrap_servers,
            "--rootdir",
            str(PROJECT_ROOT / "notebooks"),
            *notebooks,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (
        result.stdout[:6000] + result.stdout[-1500:] + result.stderr[-2000:]
    )
    assert f"{sum(_code_cells(n) for n in NOTEBOOKS)} passed" in result.stdout


def _code_cells(name: str) -> int:
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    return sum(cell.cell_type == "code" for cell in notebook.cells)
