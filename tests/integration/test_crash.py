"""Crash tests on a real broker: what the delivery guarantee promises, checked row by row.

Three failures, each ending with an exact row count, zero duplicate ticks and
zero duplicate Kafka coordinates in DuckDB:

* the consumer process is SIGKILLed four times during a 120,000-tick run and
  restarted each time: twice from outside at a random moment, once inside its
  DuckDB transaction and once between the DuckDB commit and the Kafka commit
  (those two through the consumer's own hooks: tests/support/crash_consumer.py);
* the broker is stopped (cleanly, then with SIGKILL) and restarted while a
  producer and a consumer are running;
* the consumer is stopped with SIGTERM, then SIGINT (Ctrl-C): it finishes the
  batch in hand, commits, writes its ``pipeline_metrics`` row, and a restart
  resumes exactly where it stopped.

The consumer always runs as a separate process (the real CLI, ``marketstream
consume``, or the crash consumer), so signals, the DuckDB write-ahead log and the
consumer-group protocol behave as in production. While it holds the DuckDB file
its progress is read from the consumer group's committed offsets.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from marketstream import broker, store
from marketstream.clients import DEFAULT_CLIENTS, connection_config
from marketstream.errors import KafkaUnavailable
from marketstream.processes import child_env, free_port
from marketstream.produce import ensure_topic, produce_ticks
from marketstream.settings import Settings
from marketstream.ticks import Tick, generate_ticks
from support.processes import QUICK_SESSION_S
from support.stored import committed_offsets, store_counts, store_difference
from support.waiting import exited, wait_until

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225", "FTSE100")

#: The consumer with a fault at a named step of its checkpoint (see its docstring).
CRASH_CONSUMER = Path(__file__).resolve().parents[1] / "support" / "crash_consumer.py"


# --------------------------------------------------------------------------- helpers


def start_consumer(
    settings: Settings, *, batch_size: int = 5000, wrapped: bool = False, crash_at: str = ""
) -> subprocess.Popen[str]:
    """A consumer child process (output captured), its settings in its environment as a
    user would export them: ``marketstream consume -q``, or with ``wrapped`` the
    :data:`CRASH_CONSUMER` (short session timeout, ``crash_at``)."""
    if wrapped:
        cmd = [sys.executable, str(CRASH_CONSUMER)]
        settings = settings.with_(session_timeout_s=QUICK_SESSION_S)
    else:
        cmd = [sys.executable, "-m", "marketstream.cli", "consume", "-q"]
    extra = {"CRASH_AT": crash_at, "CRASH_NOTE": str(settings.db_path.parent / "crash-note.txt")}
    return subprocess.Popen(
        cmd,
        env=child_env(settings.with_(batch_size=batch_size), extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = 120) -> tuple[int, str, str]:
    """Wait for a child; kill it (and fail) if it overstays."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"consumer did not exit within {timeout_s}s: {out[-2000:]} {err[-2000:]}")
    return proc.returncode, out, err


def wait_for_commits(
    admin: KafkaAdminClient,
    settings: Settings,
    total: int,
    proc: subprocess.Popen[str],
    timeout_s: float = 90,
) -> None:
    """Wait until the group's committed offsets add up to ``total`` (fail if ``proc`` dies)."""
    wait_until(
        lambda: sum(committed_offsets(admin, settings).values()) >= total,
        timeout_s,
        f"committed offsets to reach {total:,}",
        interval_s=0.05,
        died=exited(proc),
    )


def end_offsets(settings: Settings) -> dict[int, int]:
    """The topic's end offset per partition (= messages in it: nothing is ever deleted)."""
    consumer = KafkaConsumer(**connection_config(settings))
    try:
        tps = [
            TopicPartition(settings.topic, p) for p in consumer.partitions_for_topic(settings.topic)
        ]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def reset_group(settings: Settings) -> None:
    """Commit offset 0 for every partition in the group (no member of it runs)."""
    consumer = KafkaConsumer(
        **connection_config(settings), group_id=settings.consumer_group, enable_auto_commit=False
    )
    try:
        tps = [
            TopicPartition(settings.topic, p) for p in consumer.partitions_for_topic(settings.topic)
        ]
        consumer.assign(tps)
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in tps})
    finally:
        consumer.close(autocommit=False)


def stored_below(db: Path, committed: dict[int, int]) -> dict[int, int]:
    """Per partition, how many stored rows have an offset below the committed one."""
    with store.read_connection(db) as con:
        return {
            p: int(
                con.execute(
                    'SELECT count(*) FROM market_ticks WHERE "partition" = ? AND "offset" < ?',
                    [p, off],
                ).fetchall()[0][0]
            )
            for p, off in committed.items()
        }


def assert_committed_is_stored(db: Path, committed: dict[int, int]) -> None:
    """Every offset the group has committed is a row in DuckDB (DuckDB commits first)."""
    assert stored_below(db, committed) == committed


def assert_store_equals(db: Path, ticks: list[Tick]) -> None:
    """DuckDB holds exactly these ticks: same identities, prices and volumes, nothing else."""
    assert store_difference(db, ticks) == (0, 0)


def runs(db: Path) -> list[dict]:
    """pipeline_metrics rows, oldest first."""
    frame = store.pipeline_runs(db, limit=1000)
    return frame.sort_values("started_at").to_dict("records")


# --------------------------------------------------------------------------- SIGKILL


def test_consumer_sigkilled_four_times_loses_and_duplicates_nothing(fresh):
    """120,000 ticks; four consumer processes die by SIGKILL, each restarted from the
    store's positions: two killed from outside after 20,000 more committed
    offsets (plus a random 0-200 ms, so the kill lands anywhere in a batch), one
    inside the DuckDB transaction and one between the DuckDB and the Kafka commit. Then
    the group's offsets are reset to 0, and the last run still resumes at the store's."""
    settings = fresh.with_(symbols=SYMBOLS)
    ticks = generate_ticks(SYMBOLS, 30_000, seed=7)
    total = len(ticks)
    assert total == 120_000
    summary = produce_ticks(ticks, settings, progress=False)
    assert (summary.sent, summary.failed) == (total, 0)
    assert sum(end_offsets(settings).values()) == total

    rng = random.Random(20250106)
    note = settings.db_path.parent / "crash-note.txt"
    admin = DEFAULT_CLIENTS.admin(settings)
    history: list[dict[str, object]] = []
    try:
        for how in ("outside", "store-commit:3", "outside", "kafka-commit:3"):
            start = sum(committed_offsets(admin, settings).values())
            if how == "outside":
                proc = start_consumer(settings, wrapped=True)
                wait_for_commits(admin, settings, start + 20_000, proc)
                time.sleep(rng.uniform(0, 0.2))
                proc.send_signal(signal.SIGKILL)
            else:
                proc = start_consumer(settings, wrapped=True, crash_at=how)
            _code, _out, err = finish(proc, 90)
            assert proc.returncode == -signal.SIGKILL, err[-2000:]
            committed = committed_offsets(admin, settings)
            rows, distinct, coords = store_counts(settings.db_path)
            # DuckDB recovered from its write-ahead log with unique ticks and coordinates
            assert rows == distinct == coords
            # no loss: every offset Kafka has as committed is a row in DuckDB
            assert_committed_is_stored(settings.db_path, committed)
            ahead = rows - sum(committed.values())
            assert ahead >= 0
            if how.startswith("store-commit"):
                # the transaction that died had rows; recovery dropped exactly them and
                # kept every earlier commit
                inside, outside = map(int, note.read_text().split())
                assert inside > outside == rows
            if how.startswith("kafka-commit"):
                assert ahead > 0  # stored, not committed: the next run must skip these
            history.append({"kill": how, "committed": sum(committed.values()), "rows": rows})
        assert runs(settings.db_path) == []  # SIGKILL leaves no chance to write metrics
        # the group's committed offsets go back to 0, as a user resetting the group (or a
        # new group name) would leave them: the store's positions, not these, say where
        # the next run resumes
        reset_group(settings)
        assert sum(committed_offsets(admin, settings).values()) == 0

        proc = start_consumer(settings, wrapped=True)
        code, _out, err = finish(proc)
        assert code == 0, err[-2000:]
        final_committed = committed_offsets(admin, settings)
    finally:
        admin.close()

    print(f"\nSIGKILL history (committed offsets / rows in DuckDB after each kill): {history}")
    assert sum(final_committed.values()) == total
    assert final_committed == end_offsets(settings)
    assert store_counts(settings.db_path) == (total, total, total)
    assert_store_equals(settings.db_path, ticks)

    [last] = runs(settings.db_path)
    before = history[-1]
    assert last["status"] == "ok"
    # the last killed run had stored more than it committed to Kafka, and the group was
    # then reset to 0: the final run read from the store's positions, so it read exactly
    # what the store lacked, nothing twice
    assert before["rows"] - before["committed"] > 0
    assert last["messages_processed"] == total - before["rows"]
    assert last["rows_inserted"] == total - before["rows"]
    assert last["duplicates"] == 0
    assert last["errors"] == 0
    print(
        f"final run: {last['messages_processed']} read, {last['rows_inserted']} new, "
        f"{last['duplicates']} replayed duplicates skipped"
    )


# --------------------------------------------------------------------------- SIGTERM / Ctrl-C


#: Committed offsets a run makes before it is signalled (10 batches of 500).
STOP_AFTER = 5_000


def test_three_sigkilled_cli_runs_then_a_fourth_stores_everything_and_only_then_ends(fresh):
    """240,000 ticks; ``marketstream consume`` SIGKILLed mid-run three times in a row.

    Before the store owned its position, the fourth run sat in a rebalance until
    the killed members' sessions expired (36 s), then called itself done after 5 s
    without data, with ~205,000 ticks unread, and exited 0. Now a lone consumer
    has no group to wait for, and it ends only once the store has every tick."""
    settings = fresh.with_(symbols=SYMBOLS)
    ticks = generate_ticks(SYMBOLS, 60_000, seed=13)
    total = len(ticks)
    summary = produce_ticks(ticks, settings, progress=False)
    assert (summary.sent, summary.failed) == (total, 0)
    admin = DEFAULT_CLIENTS.admin(settings)
    try:
        for _ in range(3):
            start = sum(committed_offsets(admin, settings).values())
            proc = start_consumer(settings)
            wait_for_commits(admin, settings, start + 15_000, proc)
            proc.send_signal(signal.SIGKILL)
            finish(proc, 60)
            assert proc.returncode == -signal.SIGKILL
    finally:
        admin.close()
    rows = store_counts(settings.db_path)[0]
    assert rows < total  # killed mid-run: most of the topic is still to store

    proc = start_consumer(settings)
    code, out, err = finish(proc, 180)
    assert code == 0, err[-2000:]
    assert f"consumed {total - rows} messages: {total - rows} new rows, 0 already" in out
    assert "not caught up" not in err
    assert store_counts(settings.db_path) == (total, total, total)
    assert_store_equals(settings.db_path, ticks)


def test_sigterm_and_ctrl_c_finish_the_batch_commit_and_resume_exactly(fresh):
    """Stop by SIGTERM, then by SIGINT, then run to the end: three runs, each a
    pipeline_metrics row, no message read twice and none skipped; a stopped run says
    how many messages it left and exits 1.

    A signal must land before the consumer reaches the topic's end (a batch run stops
    there by itself): each stopped run waits for only STOP_AFTER more committed offsets,
    and the topic holds many times that beyond both stops, so a loaded machine that is
    slow to notice the progress (or to send the signal) still signals mid-run."""
    ticks = generate_ticks(fresh.symbols, 30_000, seed=11)
    total = len(ticks)  # 90,000: some 80,000 still unread when the second signal lands
    summary = produce_ticks(ticks, fresh, progress=False)
    assert (summary.sent, summary.failed) == (total, 0)

    admin = DEFAULT_CLIENTS.admin(fresh)
    done = 0
    stops: list[tuple[str, int]] = []
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            # small batches: the run lasts long enough for the signal to land mid-run
            proc = start_consumer(fresh, batch_size=500)
            wait_for_commits(admin, fresh, done + STOP_AFTER, proc, timeout_s=60)
            proc.send_signal(sig)
            code, out, err = finish(proc, 60)
            assert f"{sig.name}: finishing the current batch" in err
            committed = sum(committed_offsets(admin, fresh).values())
            # stopped with ticks left: the last line names them and the exit is not 0
            assert code == 1, err[-2000:]
            assert f"not caught up: {total - committed:,} messages of {fresh.topic}" in err
            run = runs(fresh.db_path)[-1]
            assert run["status"] == "stopped"
            # the batch in hand was written AND committed: what the run read is exactly
            # what it stored and what the group committed, nothing half-done
            assert run["messages_processed"] == committed - done
            assert run["rows_inserted"] == committed - done
            assert run["duplicates"] == 0
            assert f"consumed {committed - done} messages" in out
            assert store_counts(fresh.db_path) == (committed, committed, committed)
            assert committed < total, "the run ended before the signal; raise the tick count"
            stops.append((sig.name, committed))
            done = committed

        proc = start_consumer(fresh, batch_size=500)
        code, out, err = finish(proc)
        assert code == 0, err[-2000:]
    finally:
        admin.close()

    first, second, last = runs(fresh.db_path)
    assert (first["status"], second["status"], last["status"]) == ("stopped", "stopped", "ok")
    # resumed exactly where the second run stopped: nothing replayed, nothing skipped
    assert last["messages_processed"] == total - done
    assert last["duplicates"] == 0
    assert sum(r["rows_inserted"] for r in (first, second, last)) == total
    assert store_counts(fresh.db_path) == (total, total, total)
    assert_store_equals(fresh.db_path, ticks)
    ends = [e for e in _log(fresh) if e.get("event") == "consume_end"]
    assert [e["status"] for e in ends] == ["stopped", "stopped", "ok"]
    print(f"\nstopped at (signal, committed = rows): {stops}; last run read {total - done}")


def _log(settings: Settings) -> list[dict]:
    from marketstream.logs import read_log

    return read_log(settings.log_path)


# --------------------------------------------------------------------------- broker restart


class Producer(threading.Thread):
    """Sends ticks in chunks at a modest rate through one producer, like a feed would.

    A chunk whose sends failed (delivery timeout while the broker was away) is
    sent again whole: re-sending ticks is always safe, because a tick's identity
    is (symbol, event time) and the store keeps the first copy only.
    """

    def __init__(self, settings: Settings, ticks: list[Tick], chunk: int = 2_000):
        super().__init__(daemon=True)
        self.settings = settings
        self.ticks = ticks
        self.chunk = chunk
        self.acked = 0
        self.resent_chunks = 0
        self.errors: list[str] = []

    def run(self) -> None:
        # delivery_timeout_ms bounds how long one send may wait for the broker to return
        producer = DEFAULT_CLIENTS.producer(self.settings, delivery_timeout_ms=60_000)
        try:
            for start in range(0, len(self.ticks), self.chunk):
                part = self.ticks[start : start + self.chunk]
                for _attempt in range(5):
                    try:
                        summary = produce_ticks(
                            part, self.settings, progress=False, producer=producer
                        )
                    except Exception as exc:  # ProduceError: the driver re-sends
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                        summary = None
                    if summary is not None and summary.failed == 0:
                        break
                    self.resent_chunks += 1
                else:
                    self.errors.append(f"chunk at {start} never acknowledged")
                    return
                self.acked += len(part)
                time.sleep(0.05)
        finally:
            producer.close(timeout=10)


#: How long the supervisor loop may take to get every tick in after the second outage.
#: A chunk whose sends expire (``delivery_timeout_ms``, 60 s) is sent again, up to five
#: times; on a loaded machine a restarted broker can take long enough for that to
#: happen more than once, so this is a bound only a run that never finishes reaches.
SUPERVISE_S = 600


def test_broker_stopped_and_killed_then_restarted_while_producing_and_consuming(tmp_path):
    """A broker of its own, stopped cleanly and later SIGKILLed, each time restarted on
    the same port and data: the producer keeps sending (kafka-python retries until the
    delivery timeout), the consumer is restarted by the test whenever it exits, as a
    user's supervisor (systemd, Kubernetes) would; the end state is exact."""
    port = free_port()
    run_dir = tmp_path / f"kafka-{port}"
    settings = Settings.from_env().with_(
        bootstrap_servers=f"127.0.0.1:{port}",
        topic="crash-ticks",
        consumer_group="crash-group",
        db_path=tmp_path / "market.duckdb",
        log_path=tmp_path / "pipeline.log",
        symbols=SYMBOLS,
        idle_timeout_s=5.0,
    )
    ticks = generate_ticks(SYMBOLS, 15_000, seed=23)
    total = len(ticks)
    exits: list[object] = []
    outages: list[dict[str, object]] = []
    try:
        broker.start_broker(settings, run_dir=run_dir)
        ensure_topic(settings)
        producer = Producer(settings, ticks)
        producer.start()
        consumer = start_consumer(settings, wrapped=True)

        def progress() -> int:
            try:
                admin = DEFAULT_CLIENTS.admin(settings)
            except (KafkaError, KafkaUnavailable):  # the broker is still coming back
                return 0
            try:
                return sum(committed_offsets(admin, settings).values())
            finally:
                admin.close()

        def exit_of(code: int, err: str) -> object:
            lines = err.strip().splitlines()
            return code if code == 0 else (code, lines[-1][:200] if lines else "")

        def reached(acked: int, consumed: int) -> bool:
            """Progress so far; a consumer that has exited (say, idle while the broker
            was away) is restarted at once, as a supervisor would, so the progress
            waited for never depends on whether it outlived an outage."""
            nonlocal consumer
            if consumer.poll() is not None:
                code, _out, err = finish(consumer)
                exits.append(exit_of(code, err))
                consumer = start_consumer(settings, wrapped=True)
            return producer.acked >= acked and progress() >= consumed

        for how, at in (("SIGTERM", total // 4), ("SIGKILL", total // 2)):
            wait_until(
                lambda a=at: reached(a, a // 2),
                120,
                f"{at} ticks acknowledged and {at // 2} consumed",
                interval_s=0.2,
            )
            acked_before = producer.acked
            if how == "SIGTERM":
                broker.stop_broker(settings, run_dir=run_dir)
            else:
                for pid in broker.running_broker_pids(run_dir):
                    os.kill(pid, signal.SIGKILL)
                    psutil.Process(pid).wait(timeout=30)  # reaps it: it is our child
            down_at = time.monotonic()
            time.sleep(3)
            broker.start_broker(settings, run_dir=run_dir)
            outages.append(
                {
                    "how": how,
                    "acked_at_stop": acked_before,
                    "down_s": round(time.monotonic() - down_at, 1),
                }
            )

        # the supervisor loop: restart the consumer whenever it exits, until all is in
        deadline = time.monotonic() + SUPERVISE_S
        while True:
            code, _out, err = finish(consumer)  # it exits once idle for 5 s
            exits.append(exit_of(code, err))
            if not producer.is_alive() and progress() >= sum(end_offsets(settings).values()):
                break
            assert time.monotonic() < deadline, (
                f"not done after {SUPERVISE_S}s: producer acknowledged {producer.acked} of "
                f"{total} ({producer.resent_chunks} chunks re-sent), consumer exits {exits}, "
                f"last stderr {err[-1500:]}"
            )
            consumer = start_consumer(settings, wrapped=True)
        producer.join(timeout=60)
        assert not producer.errors or producer.acked == total, producer.errors
        assert producer.acked == total
        topic_messages = sum(end_offsets(settings).values())
    finally:
        broker.stop_broker(settings, run_dir=run_dir)

    print(
        f"\nbroker outages: {outages}; producer chunks re-sent: {producer.resent_chunks}; "
        f"consumer exit codes: {exits}; messages on the topic: {topic_messages} for {total} ticks"
    )
    assert topic_messages >= total  # re-sent chunks may add copies; the store dedupes them
    assert store_counts(settings.db_path) == (total, total, total)
    assert_store_equals(settings.db_path, ticks)
