"""Crash tests on a real broker: what the delivery guarantee promises, checked row by row.

Three failures, each ending with an exact row count, zero duplicate ticks and
zero duplicate Kafka coordinates in DuckDB:

* the consumer process is SIGKILLed four times during a 120,000-tick run and
  restarted each time: twice from outside at a random moment, once inside its
  DuckDB transaction and once between the DuckDB commit and the Kafka commit;
* the broker is stopped (cleanly, then with SIGKILL) and restarted while a
  producer and a consumer are running;
* the consumer is stopped with SIGTERM, then SIGINT (Ctrl-C): it finishes the
  batch in hand, commits, writes its ``pipeline_metrics`` row, and a restart
  resumes exactly where it stopped.

Plus a small run of the soak harness (:mod:`marketstream.soak`), whose 1,000,000-tick
run shows the consumer's memory does not grow with the number of ticks.

The consumer always runs as a separate process through the real CLI
(``marketstream consume``), so signals, the DuckDB write-ahead log and the
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
from collections.abc import Callable
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from marketstream import broker, store
from marketstream.produce import ensure_topic, make_producer, produce_ticks
from marketstream.settings import Settings
from marketstream.soak import CHECKPOINTS, _rss, run_soak
from marketstream.ticks import Tick, generate_ticks

pytestmark = pytest.mark.integration

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225", "FTSE100")

#: Runs the real CLI, with a shorter consumer-group session timeout. kafka-python's
#: default (45 s) is how long the broker waits before it gives a SIGKILLed member's
#: partitions to its replacement; 6 s (the broker's minimum) keeps repeated kills fast.
#: A clean stop (SIGTERM, Ctrl-C) leaves the group at once and needs no such wait.
#:
#: ``CRASH_AT=<where>:<n>`` makes the process SIGKILL itself at an exact point of its
#: n-th batch, the two windows a timed kill rarely hits: ``duckdb-commit`` (rows
#: inserted, DuckDB transaction not yet committed; the row counts seen inside and
#: outside that transaction are written to ``CRASH_NOTE`` first) and ``kafka-commit``
#: (DuckDB committed, Kafka offsets not yet committed).
CONSUMER_WRAPPER = """
import contextlib, functools, os, signal, sys
import marketstream.consume as consume
from marketstream import store
from kafka import KafkaConsumer

consume.make_consumer = functools.partial(
    consume.make_consumer, session_timeout_ms=6000, heartbeat_interval_ms=1000
)
where, _, nth = os.environ.get("CRASH_AT", "").partition(":")
calls = []

def crash_on_nth():
    calls.append(1)
    if len(calls) == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)

if where == "kafka-commit":
    kafka_commit = KafkaConsumer.commit

    def commit(self, *args, **kwargs):
        crash_on_nth()
        return kafka_commit(self, *args, **kwargs)

    KafkaConsumer.commit = commit
elif where == "duckdb-commit":
    connection = store.TickWriter._connection

    class Connection:
        def __init__(self, con):
            self._con = con

        def execute(self, sql, *args):
            if sql == "COMMIT" and len(calls) + 1 == int(nth):
                # note what this transaction sees and what a separate connection
                # (committed data only) sees, then die before committing
                count = "SELECT count(*) FROM market_ticks"
                inside = self._con.execute(count).fetchall()[0][0]
                outside = self._con.cursor().execute(count).fetchall()[0][0]
                with open(os.environ["CRASH_NOTE"], "w") as note:
                    note.write(f"{inside} {outside}")
            if sql == "COMMIT":
                crash_on_nth()
            return self._con.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self._con, name)

    @contextlib.contextmanager
    def wrapped(self):
        with connection(self) as con:
            yield Connection(con)

    store.TickWriter._connection = wrapped

from marketstream.cli import main
sys.exit(main(sys.argv[1:]))
"""


# --------------------------------------------------------------------------- helpers


def consumer_env(settings: Settings, batch_size: int, crash_at: str = "") -> dict[str, str]:
    """The environment a user would export to point ``marketstream consume`` at settings."""
    return {
        **os.environ,
        "CRASH_AT": crash_at,
        "CRASH_NOTE": str(settings.db_path.parent / "crash-note.txt"),
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KAFKA_TOPIC": settings.topic,
        "KAFKA_CONSUMER_GROUP": settings.consumer_group,
        "MARKET_DB_PATH": str(settings.db_path),
        "MARKET_LOG_PATH": str(settings.log_path),
        "MARKET_BATCH_SIZE": str(batch_size),
        "MARKET_IDLE_TIMEOUT_S": str(settings.idle_timeout_s),
        "PYTHONUNBUFFERED": "1",
    }


def start_consumer(
    settings: Settings, *, batch_size: int = 5000, wrapped: bool = False, crash_at: str = ""
) -> subprocess.Popen[str]:
    """``marketstream consume -q`` as a child process (output captured); ``wrapped``
    runs it through :data:`CONSUMER_WRAPPER` (short session timeout, ``crash_at``)."""
    if wrapped:
        cmd = [sys.executable, "-c", CONSUMER_WRAPPER, "consume", "-q"]
    else:
        cmd = [sys.executable, "-m", "marketstream.cli", "consume", "-q"]
    return subprocess.Popen(
        cmd,
        env=consumer_env(settings, batch_size, crash_at),
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


def committed_offsets(admin: KafkaAdminClient, settings: Settings) -> dict[int, int]:
    """The consumer group's committed offset per partition of the topic (absent = 0).

    A group that has not committed yet (or a coordinator still loading after a
    broker start) reads as nothing committed.
    """
    try:
        offsets = admin.list_group_offsets(settings.consumer_group)[settings.consumer_group]
    except KafkaError:
        return {}
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == settings.topic and meta.offset >= 0
    }


def end_offsets(settings: Settings) -> dict[int, int]:
    """The topic's end offset per partition (= messages in it: nothing is ever deleted)."""
    consumer = KafkaConsumer(**settings.kafka_client_config())
    try:
        tps = [
            TopicPartition(settings.topic, p) for p in consumer.partitions_for_topic(settings.topic)
        ]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[str] | None = None,
    interval_s: float = 0.05,
) -> None:
    """Poll condition; fail naming what never happened (or how the child died first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"consumer exited ({proc.returncode}) before {what}: {out} {err[-2000:]}")
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def store_counts(db: Path) -> tuple[int, int, int]:
    """(rows, distinct ticks, distinct Kafka coordinates) in market_ticks."""
    with store.read_connection(db) as con:
        row = con.execute(
            """
            SELECT count(*),
                   count(DISTINCT (symbol, event_time)),
                   count(DISTINCT (topic, "partition", "offset"))
            FROM market_ticks
            """
        ).fetchall()[0]
    return int(row[0]), int(row[1]), int(row[2])


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
    expected = pa.table(
        {
            "symbol": [t.symbol for t in ticks],
            "event_time": pa.array(
                [t.timestamp.replace(tzinfo=None) for t in ticks], pa.timestamp("us")
            ),
            "price": [t.price for t in ticks],
            "volume": [t.volume for t in ticks],
        }
    )
    cols = "symbol, event_time, price, volume"
    with store.read_connection(db) as con:
        con.register("expected", expected)
        missing, extra = con.execute(
            f"""
            SELECT (SELECT count(*) FROM (SELECT {cols} FROM expected
                                          EXCEPT SELECT {cols} FROM market_ticks)),
                   (SELECT count(*) FROM (SELECT {cols} FROM market_ticks
                                          EXCEPT SELECT {cols} FROM expected))
            """
        ).fetchall()[0]
    assert (missing, extra) == (0, 0)


def runs(db: Path) -> list[dict]:
    """pipeline_metrics rows, oldest first."""
    frame = store.pipeline_runs(db, limit=1000)
    return frame.sort_values("started_at").to_dict("records")


# --------------------------------------------------------------------------- SIGKILL


def test_consumer_sigkilled_four_times_loses_and_duplicates_nothing(fresh):
    """120,000 ticks; four consumer processes die by SIGKILL, each restarted from the
    group's committed offsets: two killed from outside after 20,000 more committed
    offsets (plus a random 0-200 ms, so the kill lands anywhere in a batch), one
    inside the DuckDB transaction and one between the DuckDB and the Kafka commit."""
    settings = fresh.with_(symbols=SYMBOLS)
    ticks = generate_ticks(SYMBOLS, 30_000, seed=7)
    total = len(ticks)
    assert total == 120_000
    summary = produce_ticks(ticks, settings, progress=False)
    assert (summary.sent, summary.failed) == (total, 0)
    assert sum(end_offsets(settings).values()) == total

    rng = random.Random(20250106)
    note = settings.db_path.parent / "crash-note.txt"
    admin = KafkaAdminClient(**settings.kafka_client_config())
    history: list[dict[str, object]] = []
    try:
        for how in ("outside", "duckdb-commit:3", "outside", "kafka-commit:3"):
            start = sum(committed_offsets(admin, settings).values())
            if how == "outside":
                proc = start_consumer(settings, wrapped=True)
                wait_until(
                    lambda s=start: sum(committed_offsets(admin, settings).values()) >= s + 20_000,
                    90,
                    "20,000 more committed offsets",
                    proc,
                )
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
            if how.startswith("duckdb-commit"):
                # the transaction that died had rows; recovery dropped exactly them and
                # kept every earlier commit
                inside, outside = map(int, note.read_text().split())
                assert inside > outside == rows
            if how.startswith("kafka-commit"):
                assert ahead > 0  # stored, not committed: the next run must skip these
            history.append({"kill": how, "committed": sum(committed.values()), "rows": rows})
        assert runs(settings.db_path) == []  # SIGKILL leaves no chance to write metrics

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
    # the final run read from the last committed offsets: what the killed run had
    # written but not committed is replayed and skipped as duplicates, never re-added
    assert last["messages_processed"] == total - before["committed"]
    assert last["rows_inserted"] == total - before["rows"]
    assert last["duplicates"] == before["rows"] - before["committed"] > 0
    assert last["errors"] == 0
    print(
        f"final run: {last['messages_processed']} read, {last['rows_inserted']} new, "
        f"{last['duplicates']} replayed duplicates skipped"
    )


# --------------------------------------------------------------------------- SIGTERM / Ctrl-C


def test_sigterm_and_ctrl_c_finish_the_batch_commit_and_resume_exactly(fresh):
    """Stop by SIGTERM, then by SIGINT, then run to the end: three runs, each a
    pipeline_metrics row, no message read twice and none skipped."""
    ticks = generate_ticks(fresh.symbols, 15_000, seed=11)
    total = len(ticks)
    summary = produce_ticks(ticks, fresh, progress=False)
    assert (summary.sent, summary.failed) == (total, 0)

    admin = KafkaAdminClient(**fresh.kafka_client_config())
    done = 0
    stops: list[tuple[str, int]] = []
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            # small batches: the run lasts long enough for the signal to land mid-run
            proc = start_consumer(fresh, batch_size=500)
            wait_until(
                lambda d=done: sum(committed_offsets(admin, fresh).values()) >= d + 5_000,
                60,
                "5000 more committed offsets",
                proc,
            )
            proc.send_signal(sig)
            code, out, err = finish(proc, 60)
            assert code == 0, err[-2000:]
            assert f"{sig.name}: finishing the current batch" in err
            committed = sum(committed_offsets(admin, fresh).values())
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
        producer = make_producer(self.settings, delivery_timeout_ms=60_000)
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


def test_broker_stopped_and_killed_then_restarted_while_producing_and_consuming(tmp_path):
    """A broker of its own, stopped cleanly and later SIGKILLed, each time restarted on
    the same port and data: the producer keeps sending (kafka-python retries until the
    delivery timeout), the consumer is restarted by the test whenever it exits, as a
    user's supervisor (systemd, Kubernetes) would; the end state is exact."""
    port = broker.free_port()
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
                admin = KafkaAdminClient(**settings.kafka_client_config())
            except KafkaError:  # the broker is still coming back
                return 0
            try:
                return sum(committed_offsets(admin, settings).values())
            finally:
                admin.close()

        for how, at in (("SIGTERM", total // 4), ("SIGKILL", total // 2)):
            wait_until(
                lambda a=at: producer.acked >= a and progress() >= a // 2,
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
        deadline = time.monotonic() + 240
        while True:
            code, _out, err = finish(consumer, max(1, deadline - time.monotonic()))
            exits.append(code if code == 0 else (code, err.strip().splitlines()[-1][:200]))
            if not producer.is_alive() and progress() >= sum(end_offsets(settings).values()):
                break
            assert time.monotonic() < deadline, (
                f"not done: exits {exits}, last stderr {err[-1500:]}"
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


# --------------------------------------------------------------------------- resource bounds


def test_soak_harness_small_run_lands_every_tick_with_flat_memory(fresh):
    """``python -m marketstream.soak --n 1000000`` on 60,000 ticks: every tick lands and
    the consumer's RSS curve is reported (the 1M run is the real evidence)."""
    report = run_soak(fresh, 60_000, own_names=False, progress=False, interval_s=0.1)
    print("\n" + report.describe())
    assert report.exit_code == 0
    assert report.rows == 60_000
    assert len(report.samples) >= 3
    assert 0 < max(s.rss_bytes for s in report.samples) <= report.peak_rss_bytes
    assert list(report.curve) == list(CHECKPOINTS)
    # loose on purpose (a short run on a shared machine): the consumer keeps nothing of
    # what it has written, so its memory at the end is nowhere near 3x that at 10%
    assert report.growth is not None and report.growth < 3
    assert not fresh.db_path.exists()  # the soak cleans up after itself


def test_soak_sampler_reads_an_exited_consumer_as_no_sample():
    """A consumer that exits between the sampler's checks is a zombie whose RSS reads 0;
    that must not enter the curve as its memory at 100 % (it did, once, in CI)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(proc.pid)
    deadline = time.monotonic() + 10
    while process.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.status() == psutil.STATUS_ZOMBIE
    assert _rss(process) is None
    proc.wait()
    assert _rss(psutil.Process()) > 0
