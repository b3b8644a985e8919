"""The six phases of a benchmark run, each returning its raw figures.

1. ``produce``: the kit's producer sends N ticks to the run's main topic.
2. ``ceiling_consume``: the bare client and our consumer read that topic,
   interleaved ``repeats`` times, each in its own worker process.
3. ``baseline``: the seed's per-message consumer on a slice of it.
4. ``e2e``: producer (here) and consumer (a worker) at once, on a new topic.
5. ``freshness``: live figures in live mode. Event time -> visible to a
   read-only DuckDB reader, with the real live consumer (``consume(live=True)``)
   and the real paced producer (``live.produce_live``) at a fixed rate.
6. ``api``: API latency on the real server (granian) with 100 concurrent
   keep-alive connections while that live ingest writes the same file.
7. ``scaling`` (optional, :mod:`.scaling`): 1, 2 and 3 consumer worker
   processes on each store reading the main topic, against phase 2's ceiling.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from marketstream import store
from marketstream.bench.load import GENERATORS, run_wrk
from marketstream.bench.plan import API_PATHS, READER_POLL_S, distribution
from marketstream.bench.run import BenchRun
from marketstream.errors import BenchError, StoreUnavailable
from marketstream.settings import Settings
from marketstream.ticks import Tick

# --------------------------------------------------------------------------- throughput


def produce(run: BenchRun, ticks: list[Tick]) -> dict[str, Any]:
    """The kit's producer: N ticks to the main topic, until every send is acknowledged."""
    from marketstream.produce import produce_ticks

    settings = run.own_topic(run.settings_for("main"))
    summary = produce_ticks(ticks, settings, total=len(ticks), progress=run.progress)
    if summary.failed:
        raise BenchError(f"producing failed for {summary.failed} ticks: {summary.problems[:3]}")
    return {"sent": summary.sent, "elapsed_s": summary.elapsed_s, "rate": summary.rate}


#: Why the Quix peer row is missing, when it is (None: it runs).
QUIX_MISSING = (
    "quixstreams is not installed in this interpreter, so the Quix Streams row is skipped "
    "(bench/README.md, Peers: a separate venv with quixstreams==3.28.1, which wants "
    "confluent-kafka < 2.13 where the dev extra pins 2.16.1)"
)


def quix_missing() -> str | None:
    """Why the Quix peer cannot run here, or None if it can."""
    import importlib.util

    return None if importlib.util.find_spec("quixstreams") is not None else QUIX_MISSING


def ceiling_and_consume(run: BenchRun) -> dict[str, Any]:
    """Bare client, our consumer and the peers on the same topic, interleaved ``repeats``
    times (the Quix Streams peer only where ``quixstreams`` is installed)."""
    n = run.plan.n_ticks
    ceilings, consumes, quix = [], [], []
    skipped = quix_missing()
    if skipped and run.progress:
        print(skipped)
    for rep in range(run.plan.repeats):
        ceiling = run.run_worker(
            "ceiling",
            run.settings_for("main", consumer_group=f"bench-{run.run_id}-ceiling-{rep}"),
            f"client ceiling {rep + 1}/{run.plan.repeats}",
            n,
            n=n,
        )
        ceilings.append(ceiling)
        db = run.work / f"consume-{rep}.duckdb"
        consumed = run.run_worker(
            "consume",
            run.settings_for(
                "main", consumer_group=f"bench-{run.run_id}-consume-{rep}", db_path=db
            ),
            f"consume->DuckDB {rep + 1}/{run.plan.repeats}",
            n,
            n=n,
        )
        if consumed["rows_inserted"] != n:
            raise BenchError(f"consume stored {consumed['rows_inserted']} of {n} ticks")
        consumes.append(consumed)
        if rep:  # keep the first file: the API phase starts from it
            store.remove_db(db)
        if skipped is None:
            db = run.work / f"quix-{rep}.duckdb"
            peer = run.run_worker(
                "quix",
                run.settings_for(
                    "main", consumer_group=f"bench-{run.run_id}-quix-{rep}", db_path=db
                ),
                f"Quix Streams->DuckDB {rep + 1}/{run.plan.repeats}",
                n,
                n=n,
            )
            if peer["messages"] != n:
                raise BenchError(f"the Quix peer stored {peer['messages']} of {n} ticks")
            quix.append(peer)
            store.remove_db(db)
    peers: dict[str, Any] = {"quix": quix} if skipped is None else {"quix_skipped": skipped}
    return {"ceiling": ceilings, "consume": consumes, **peers}


def baseline(run: BenchRun) -> dict[str, Any]:
    """The seed's per-message consumer on ``baseline_n`` of the main topic's ticks."""
    n = run.plan.baseline_n
    return run.run_worker(
        "naive",
        run.settings_for(
            "main", consumer_group=f"bench-{run.run_id}-naive", db_path=run.work / "naive.duckdb"
        ),
        "naive per-message baseline",
        n,
        n=n,
    )


def end_to_end(run: BenchRun, ticks: list[Tick]) -> dict[str, Any]:
    """Producer (here) and consumer (a worker) running together on a fresh topic."""
    from marketstream.produce import produce_ticks

    settings = run.own_topic(run.settings_for("e2e"))
    worker, bar = run.worker(
        "consume",
        settings,
        "end to end: stored",
        len(ticks),
        n=len(ticks),
        concurrent_producer=True,
    )
    try:
        worker.wait_ready()
        started = time.time()
        produced = produce_ticks(ticks, settings, total=len(ticks), progress=run.progress)
        consumed = worker.wait(timeout_s=3600)
    finally:
        bar.close()
    wall = consumed["ended_at_epoch"] - started
    return {
        "wall_s": wall,
        "rate": consumed["messages"] / wall,
        "produce_rate": produced.rate,
        "consume": consumed,
    }


def scaling(run: BenchRun, ceiling_consume: dict[str, Any], stores: tuple[str, ...]) -> dict:
    """1, 2 and 3 workers per store on the main topic, against this run's client ceiling."""
    from marketstream.bench import scaling as scale

    ceiling = max(s["rate"] for s in ceiling_consume["ceiling"])
    return scale.measure(run, ceiling, stores)


# --------------------------------------------------------------------------- live


def _wait_for_rows(db: Path, timeout_s: float) -> None:
    """Block until the live consumer has created the file and stored a first row."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if store.tick_count(db) > 0:
                return
        time.sleep(0.1)
    raise BenchError(f"the live consumer stored nothing in {db} within {timeout_s:.0f} s")


#: How far behind the newest ``received_at`` seen the freshness reader looks again.
#: Several workers stamp ``received_at`` when they hand a batch to their writer, so
#: one worker's batch can commit after another's later one: reading only rows newer
#: than the newest seen missed them for good (a lake with 2 and 3 live workers:
#: 811-1,479 of 7,000 ticks "never seen", though all were stored).
LATE_COMMIT = timedelta(seconds=5)


class FreshnessReader(threading.Thread):
    """Polls DuckDB read-only, as the API does, and notes when each tick first shows up."""

    def __init__(self, db: Path, poll_s: float = READER_POLL_S):
        super().__init__(name="bench-freshness-reader", daemon=True)
        self.db = db
        self.poll_s = poll_s
        self.stop_event = threading.Event()
        self.seen: dict[tuple[int, int], float] = {}  # (partition, offset) -> latency s
        self.event_epoch: dict[tuple[int, int], float] = {}
        self.to_consumer: dict[tuple[int, int], float] = {}  # event -> consumer's poll
        self.polls = 0

    def run(self) -> None:
        """Until ``stop_event``: read the rows received since the newest seen, note new ones."""
        import duckdb

        newest = datetime(1970, 1, 1)
        sql = (
            'SELECT "partition", "offset", epoch_us(event_time), epoch_us(received_at), '
            "received_at FROM market_ticks WHERE received_at >= ?"
        )
        while not self.stop_event.is_set():
            try:
                with store.read_connection(self.db, timeout_s=2.0) as con:
                    rows = con.execute(sql, [newest]).fetchall()
                visible = time.time()
                self.polls += 1
            except (StoreUnavailable, duckdb.Error):
                rows = []
            for partition, offset, event_us, received_us, received in rows:
                key = (partition, offset)
                if key not in self.seen:
                    self.seen[key] = visible - event_us / 1e6
                    self.event_epoch[key] = event_us / 1e6
                    self.to_consumer[key] = (received_us - event_us) / 1e6
                newest = max(newest, received - LATE_COMMIT)
            self.stop_event.wait(self.poll_s)


class LiveProducer(threading.Thread):
    """live.produce_live, the real paced producer, in a thread; keeps its count or error."""

    def __init__(self, settings: Settings, stop: threading.Event, duration_s: float):
        super().__init__(name="bench-live-producer", daemon=True)
        self.settings = settings
        self.stop_event = stop
        self.duration_s = duration_s
        self.sent = 0
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        """Produce until the duration is over or the stop event is set."""
        from marketstream.live import produce_live

        try:
            self.sent = produce_live(self.settings, self.stop_event, self.duration_s)
        except BaseException as exc:
            self.error = exc


def _live_settings(run: BenchRun, name: str, db: Path | None = None) -> Settings:
    """A phase's settings at the plan's total live rate, its topic created."""
    per_symbol = run.plan.live_rate / len(run.settings.symbols)
    overrides: dict[str, Any] = {"live_rate": per_symbol}
    if db is not None:
        overrides["db_path"] = db
    return run.own_topic(run.settings_for(name, **overrides))


def freshness(run: BenchRun) -> dict[str, Any]:
    """Event time -> visible to a read-only reader, live consumer, fixed producer rate."""
    settings = _live_settings(run, "live")
    live, _ = run.worker("live", settings)
    live.wait_ready()
    reader = FreshnessReader(settings.db_path)
    reader.start()
    stop = threading.Event()
    started = time.time()
    total = run.plan.warmup_s + run.plan.live_s
    producer = LiveProducer(settings, stop, total)
    run.sleep(total, f"freshness at {run.plan.live_rate:,.0f} ticks/s")
    producer.join(timeout=30)
    produced = producer.sent
    deadline = time.monotonic() + 10
    while len(reader.seen) < produced and time.monotonic() < deadline:
        time.sleep(0.1)
    reader.stop_event.set()
    reader.join(timeout=10)
    live.stop()
    consumed = live.wait(timeout_s=60)
    if producer.error is not None:
        raise BenchError(f"the live producer failed: {producer.error}")
    window_start = started + run.plan.warmup_s
    keys = [k for k in reader.seen if reader.event_epoch[k] >= window_start]
    in_window = sum(1 for e in reader.event_epoch.values() if e >= window_start)
    return {
        "rate": run.plan.live_rate,
        "duration_s": run.plan.live_s,
        "produced": produced,
        "seen": len(reader.seen),
        "never_seen": max(0, produced - len(reader.seen)),
        "reader_polls": reader.polls,
        "latency_s": distribution([reader.seen[k] for k in keys]) | {"count": in_window},
        # where the time goes: event -> the consumer's poll returned it (Kafka), and
        # that poll -> visible to the reader (decode, DuckDB open/insert/close, reader)
        "to_consumer_s": distribution([reader.to_consumer[k] for k in keys]),
        "consumer_to_visible_s": distribution(
            [reader.seen[k] - reader.to_consumer[k] for k in keys]
        ),
        "consumer": consumed,
    }


# --------------------------------------------------------------------------- API


def choose_generator(generator: str | None) -> str:
    """The API load generator to use: the one asked for, else wrk if installed, else Python."""
    if generator is None:
        return "wrk" if shutil.which("wrk") else "python"
    if generator not in GENERATORS:
        raise BenchError(f"unknown load generator {generator!r}; use one of {GENERATORS}")
    if generator == "wrk" and not shutil.which("wrk"):
        raise BenchError("wrk is not installed (apt-get install wrk)")
    return generator


def _load_with_wrk(run: BenchRun, host: str, port: int) -> dict[str, Any]:
    """A wrk warm-up (dropped), then the measured wrk run beside a progress bar."""
    plan = run.plan
    run_wrk(host, port, plan.concurrency, plan.warmup_s, run.work)  # warm-up, dropped
    holder: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: holder.update(run_wrk(host, port, plan.concurrency, plan.api_s, run.work)),
        daemon=True,
    )
    thread.start()
    run.sleep(plan.api_s, f"API: {plan.concurrency} concurrent during ingest (wrk)")
    thread.join(timeout=120)
    if "error" in holder:
        raise BenchError(f"wrk failed: {holder['error']}")
    return holder


def _load_with_python(run: BenchRun, settings: Settings, host: str, port: int) -> dict[str, Any]:
    """The asyncio generator in a worker of its own (warm-up included, then dropped)."""
    plan = run.plan
    load, _ = run.worker(
        "load",
        settings,
        host=host,
        port=port,
        paths=list(API_PATHS),
        concurrency=plan.concurrency,
        duration_s=plan.api_s,
        warmup_s=plan.warmup_s,
    )
    run.sleep(plan.warmup_s + plan.api_s, f"API: {plan.concurrency} concurrent during ingest")
    return load.wait(timeout_s=120)


def api(run: BenchRun, start_from: Path | None, generator: str | None = None) -> dict[str, Any]:
    """API latency with 100 concurrent connections while live ingest writes the same file.

    ``generator``: "wrk", "python", or ``None`` for wrk when installed, else Python.
    """
    generator = choose_generator(generator)
    db = run.work / "api.duckdb"
    if start_from is not None:  # a store that already holds the consume phase's ticks
        for source, copy in zip(store.db_files(start_from), store.db_files(db), strict=True):
            if source.exists():
                shutil.copyfile(source, copy)
    settings = _live_settings(run, "api", db)
    live, _ = run.worker("live", settings)
    live.wait_ready()
    stop = threading.Event()
    producer = LiveProducer(settings, stop, run.plan.warmup_s + run.plan.api_s + 5)
    _wait_for_rows(db, 30)
    host, port = run.start_api(settings)
    if generator == "wrk":
        result = _load_with_wrk(run, host, port)
    else:
        result = _load_with_python(run, settings, host, port)
    stop.set()
    producer.join(timeout=30)
    live.stop()
    consumed = live.wait(timeout_s=60)
    run.stop_servers()
    if producer.error is not None:
        raise BenchError(f"the live producer failed: {producer.error}")
    return {**result, "ingest": {"produced": producer.sent, "consumer": consumed}}
