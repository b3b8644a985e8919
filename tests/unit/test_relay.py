"""The writer process that workers on one DuckDB file share, as a real process on a real file."""

from __future__ import annotations

import signal
import subprocess
from datetime import datetime

import pytest

from marketstream import store
from marketstream.errors import StoreUnavailable
from marketstream.processes import child_env
from marketstream.settings import Settings
from marketstream.store import relay
from marketstream.ticks import generate_ticks
from support.factories import run_metrics, tick_table


@pytest.fixture
def writer_process(tmp_path):
    db = tmp_path / "relay.duckdb"
    address, key = relay.new_address(db)
    env = child_env(Settings(db_path=db), {relay.ADDRESS_ENV: address, relay.KEY_ENV: key})
    proc = subprocess.Popen(
        relay.relay_command(hold=True), env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        relay.wait_listening(address, lambda: proc.poll() is None)
        yield db, address, key, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_batches_through_the_writer_process_are_stored_once(writer_process) -> None:
    db, address, key, proc = writer_process
    ticks = generate_ticks(("SP500",), 20, seed=5)
    with relay.RelayWriter(address, key) as first, relay.RelayWriter(address, key) as second:
        assert first.write_batch(tick_table(ticks)) == 20
        assert second.write_batch(tick_table(ticks)) == 0  # a replay: the primary key skips it
        second.record_run(
            run_metrics(
                ticks,
                run_id="relay-1",
                started_at=datetime(2026, 1, 1),
                elapsed_s=1.0,
                throughput_per_s=20.0,
            )
        )
        with pytest.raises(StoreUnavailable, match="writer process failed"):
            first.write_batch(tick_table(ticks).drop_columns(["price"]))  # the reason comes back
        with pytest.raises(StoreUnavailable, match="only with the writer in this process"):
            first.write_batch(tick_table(ticks), before_commit=lambda con: None)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0  # closes the file once its workers have hung up
    assert store.tick_count(db) == 20 and len(store.pipeline_runs(db)) == 1


def test_a_wrong_key_is_refused(writer_process) -> None:
    _db, address, _key, _proc = writer_process
    with pytest.raises(StoreUnavailable, match="refused this process's key"):
        relay.RelayWriter(address, "not-the-key")


def test_no_writer_process_is_named(tmp_path) -> None:
    with pytest.raises(StoreUnavailable, match="cannot reach the store's writer process"):
        relay.RelayWriter(str(tmp_path / "none.sock"), "k")
