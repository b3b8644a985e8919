"""Exactly-once with several consumer workers on DuckLake, on a real broker and PostgreSQL.

Each test runs worker processes in one consumer group while something goes
wrong, and ends with exact counts from ``marketstream stats``: every tick
stored once (ticks == distinct (symbol, event_time) == produced), every bad
message stored once as a dead letter. The faults:

* a worker SIGKILLed mid-run (its partitions move to the others);
* a worker added mid-run (a rebalance while batches are in flight);
* a worker stopped (SIGSTOP) inside its store transaction until the group has
  given its partitions away and its successor has stored everything, then
  resumed (SIGCONT): the zombie's commit must add nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marketstream import store
from marketstream.processes import child_env
from marketstream.produce import ensure_topic, produce_ticks
from marketstream.settings import Settings
from marketstream.ticks import generate_ticks
from marketstream.workers import consume_all
from support.bad_messages import raw_json
from support.processes import QUICK_SESSION_S
from support.stored import store_difference
from support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("no_stray_children")

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")
LAKE_WORKER = Path(__file__).resolve().parents[2] / "support" / "lake_worker.py"
BAD = [raw_json("{not json"), b"\xff\xfe", raw_json('{"symbol": "X"}')]


def produce(settings: Settings, per_symbol: int) -> list:
    """Ticks spread over the topic's 3 partitions, plus the bad messages (one per partition).

    The lake is created first, as ``start_workers`` does before it starts workers.
    """
    store.init_store(store.locate(settings))
    ensure_topic(settings)
    ticks = generate_ticks(SYMBOLS, per_symbol, seed=7)
    produce_ticks(ticks, settings, progress=False)
    from marketstream.clients import DEFAULT_CLIENTS

    producer = DEFAULT_CLIENTS.producer(settings)
    for i, raw in enumerate(BAD):
        producer.send(settings.topic, value=raw, key=f"bad-{i}".encode(), partition=i % 3)
    producer.flush()
    producer.close()
    return ticks


def start_worker(
    settings: Settings, note: Path | None = None, stall_at: int = 0
) -> subprocess.Popen:
    extra = {"STALL_AT": str(stall_at), "WORKER_NOTE": str(note or os.devnull)}
    return subprocess.Popen(
        [sys.executable, str(LAKE_WORKER)],
        env=child_env(settings.with_(session_timeout_s=QUICK_SESSION_S), extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
    for proc in procs:
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def stats(settings: Settings) -> dict:
    """``marketstream stats --json``, the command a user runs."""
    out = subprocess.run(
        [sys.executable, "-m", "marketstream.cli", "stats", "--json"],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def counts(settings: Settings) -> tuple[int, int]:
    report = store.stats(store.locate(settings))
    return report["ticks"], report["dead_letters"]


def assert_exactly_once(settings: Settings, ticks: list) -> None:
    report = stats(settings)
    assert report["store"] == "ducklake"
    assert report["ticks"] == len(ticks)
    assert report["distinct_ticks"] == len(ticks)
    assert report["dead_letters"] == len(BAD)
    assert report["distinct_dead_letters"] == len(BAD)
    assert store_difference(store.locate(settings), ticks) == (0, 0)


def test_three_workers_share_the_partitions_and_store_each_tick_once(lake_settings) -> None:
    settings = lake_settings.with_(consumers=3, batch_size=2000)
    ticks = produce(settings, 4000)
    run = consume_all(settings, progress=False)
    assert run.mode == "batch x3"
    assert run.rows_inserted == len(ticks)
    assert_exactly_once(settings, ticks)
    per_partition = {p["partition"]: p["ticks"] for p in stats(settings)["partitions"]}
    assert per_partition == {0: 4000, 1: 4000, 2: 4000}  # the spread partitioner: one symbol each


def test_a_worker_killed_mid_run_loses_and_doubles_nothing(lake_settings, tmp_path) -> None:
    settings = lake_settings.with_(batch_size=500)
    ticks = produce(settings, 20_000)
    procs = [start_worker(settings), start_worker(settings)]
    try:
        wait_until(lambda: counts(settings)[0] >= 6000, timeout_s=120, what="some ticks stored")
        procs[0].kill()  # SIGKILL: no leave-group, no last commit
        wait_until(
            lambda: counts(settings) == (len(ticks), len(BAD)), timeout_s=180, what="all stored"
        )
    finally:
        stop_all(procs)
    assert_exactly_once(settings, ticks)


def test_a_worker_added_mid_run_rebalances_without_loss_or_duplicates(lake_settings) -> None:
    settings = lake_settings.with_(batch_size=500)
    ticks = produce(settings, 20_000)
    procs = [start_worker(settings)]
    try:
        wait_until(lambda: counts(settings)[0] >= 3000, timeout_s=120, what="some ticks stored")
        procs.append(start_worker(settings))
        wait_until(
            lambda: counts(settings) == (len(ticks), len(BAD)), timeout_s=180, what="all stored"
        )
    finally:
        stop_all(procs)
    assert_exactly_once(settings, ticks)


def test_a_stalled_worker_that_wakes_up_adds_no_duplicate(lake_settings, tmp_path) -> None:
    settings = lake_settings.with_(batch_size=500)
    ticks = produce(settings, 6000)
    note = tmp_path / "zombie.txt"
    zombie = start_worker(settings, note, stall_at=2)
    procs = [zombie]
    try:
        wait_until(lambda: note.exists(), timeout_s=120, what="the zombie to stall")
        procs.append(start_worker(settings))  # takes every partition once the zombie is out
        wait_until(
            lambda: counts(settings) == (len(ticks), len(BAD)), timeout_s=180, what="all stored"
        )
        os.kill(zombie.pid, signal.SIGCONT)  # it commits the batch it held all along
        wait_until(lambda: "resumed" in note.read_text(), timeout_s=60, what="the zombie's commit")
        time.sleep(2)  # let it poll on: a second write would show in the counts below
    finally:
        stop_all(procs)
    resumed = note.read_text().split()
    assert resumed[:2] == ["stalled", "resumed"]
    assert int(resumed[2]) == 0  # its stalled batch added nothing: the fence had moved
    assert_exactly_once(settings, ticks)
