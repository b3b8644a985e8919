"""The benchmark behind ``make bench`` and ``marketstream bench``: every figure from one run.

Why it is built this way:

- **Ratios, not absolutes.** The targets compare our consumer with the bare
  kafka-python client and with a per-message baseline. Machines (and the
  neighbours on a shared one) differ, so every reference is measured in the
  same run, back to back, on the same topic, and the ceiling/consume pair is
  interleaved and repeated (best of each is kept, all samples are saved).
- **Each consumer in its own process.** Peak RSS is then the consumer's own
  (``ru_maxrss`` of that process), the GIL is not shared with the bench, and
  the numbers are what ``marketstream consume`` would see. Workers are this
  module run as ``python -m marketstream.bench --worker KIND``; they get their
  configuration on stdin (no secrets in ``ps``), report JSON lines on stdout,
  and stop when stdin closes, so a dying bench never leaves one behind.
- **Its own topics, consumer groups and DuckDB files** (in a temporary folder),
  so the user's data is never touched; topics are deleted at the end. A broker
  is started only if none answers, and then stopped again.
- **Live figures in live mode.** Freshness is event time -> visible to a
  read-only DuckDB reader, with the real live consumer (``consume(live=True)``)
  and the real paced producer (``live.produce_live``) at a fixed rate. API
  latency is measured on the real server (granian) with 100 concurrent
  keep-alive connections while that live ingest runs.

The results go to ``bench/latest.json`` (keys documented in bench/README.md)
with a plotly chart beside it (HTML; PNG only if kaleido works offline).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from marketstream.settings import PROJECT_ROOT, Settings, SettingsError

#: Live phases (freshness, API) produce at this fixed total rate, ticks/s.
LIVE_RATE = 1_000.0
#: Concurrent keep-alive connections of the API load generator.
API_CONCURRENCY = 100
#: What the load generator asks for, round-robin: what Grafana's panels poll.
API_PATHS = ("/live", "/metrics")
#: The freshness reader polls DuckDB this often (adds up to this much to each figure).
READER_POLL_S = 0.05
#: The issue's targets, as (key, comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "consume_vs_ceiling": (">=", 0.90),
    "speedup_vs_baseline": (">=", 50.0),
    "freshness_p99_s": ("<=", 1.0),
    "api_p99_ms": ("<=", 50.0),
}
REQUIRED_KEYS = (
    "n_ticks",
    "produce_rate",
    "consume_rate",
    "client_ceiling_rate",
    "baseline_rate",
    "e2e_rate",
    "freshness_p99_s",
    "api_p99_ms",
    "consumer_peak_rss_mb",
)


class BenchError(RuntimeError):
    """A benchmark phase could not run; the message says which and why."""


@dataclass(frozen=True)
class Plan:
    """How much of each phase to run for a given tick count (small N: a quick smoke run)."""

    n_ticks: int
    baseline_n: int
    repeats: int
    live_s: float
    warmup_s: float
    api_s: float
    live_rate: float = LIVE_RATE
    concurrency: int = API_CONCURRENCY

    @classmethod
    def for_ticks(cls, n_ticks: int) -> Plan:
        """Full-length phases from 100,000 ticks; a few seconds each below (CI smoke)."""
        big = n_ticks >= 100_000
        return cls(
            n_ticks=n_ticks,
            baseline_n=min(n_ticks, 20_000, max(1_000, n_ticks // 10)),
            repeats=2 if big else 1,
            live_s=15.0 if big else 4.0,
            warmup_s=2.0 if big else 1.0,
            api_s=15.0 if big else 3.0,
        )


# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _summary(values: list[float], scale: float = 1.0) -> dict[str, float | int]:
    return {
        "count": len(values),
        "p50": percentile(values, 50) * scale,
        "p95": percentile(values, 95) * scale,
        "p99": percentile(values, 99) * scale,
        "max": (max(values) * scale) if values else math.nan,
    }


def _cpu_s() -> float:
    """CPU seconds (user + system) this process has used, all threads."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_peak_mb() -> float:
    """This process's peak resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# --------------------------------------------------------------------------- workers (child side)


def _settings_payload(settings: Settings) -> dict[str, Any]:
    """Settings as JSON for a worker's stdin (paths as text, symbols as a list)."""
    out: dict[str, Any] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def _settings_from_payload(payload: dict[str, Any]) -> Settings:
    return Settings().with_(**payload)


class _Emitter:
    """JSON lines to the parent; progress lines are rate-limited to ~10 a second."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: str, **data: Any) -> None:
        with self._lock:
            self._stream.write(json.dumps({"event": event, **data}, default=str) + "\n")
            self._stream.flush()

    def progress(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            self("progress", done=done)


def _w_ceiling(settings: Settings, cfg: dict, stop: threading.Event, emit: _Emitter) -> dict:
    """kafka-python alone: the same consumer settings, every message fetched and dropped."""
    from marketstream.consume import GIL_SWITCH_INTERVAL_S, make_consumer

    n = int(cfg["n"])
    # The same GIL hand-over as consume() uses, so the ceiling is the best the bare client
    # does under the conditions our consumer runs in (measured: it does not slow it down).
    sys.setswitchinterval(float(cfg.get("switch_interval_s", GIL_SWITCH_INTERVAL_S)))
    emit("ready")
    started = time.perf_counter()
    consumer = make_consumer(settings)
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


def _w_consume(settings: Settings, cfg: dict, stop: threading.Event, emit: _Emitter) -> dict:
    """Our consumer, exactly as ``marketstream consume`` runs it, for ``n`` messages."""
    import marketstream.consume as consume_module

    n = int(cfg["n"])
    if cfg.get("concurrent_producer"):
        # End to end, the producer is still writing when the consumer catches up with
        # it; batch mode would stop there. Only the message budget (or idle) ends this run.
        consume_module._caught_up = lambda consumer: False  # type: ignore[assignment]
    done = 0

    def on_batch(batch: Any, added: int) -> None:
        nonlocal done
        done += batch.ticks.num_rows + batch.dead.num_rows
        emit.progress(done)

    emit("ready")
    started = time.perf_counter()
    run = consume_module.consume(
        settings,
        max_messages=n,
        idle_timeout_s=float(cfg.get("idle_timeout_s", 30.0)),
        stop=stop,
        progress=False,
        on_batch=on_batch,
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


def _w_live(settings: Settings, cfg: dict, stop: threading.Event, emit: _Emitter) -> dict:
    """The live consumer (releases the DuckDB file between batches) until stdin closes."""
    from marketstream.consume import consume

    done = 0

    def on_batch(batch: Any, added: int) -> None:
        nonlocal done
        done += added
        emit.progress(done)

    emit("ready")
    run = consume(settings, live=True, stop=stop, progress=False, on_batch=on_batch)
    return {"messages": run.messages_processed, "rows_inserted": run.rows_inserted}


def _w_naive(settings: Settings, cfg: dict, stop: threading.Event, emit: _Emitter) -> dict:
    """The seed's approach: json.loads and one DuckDB INSERT statement per message.

    Same Kafka consumer settings as ours, same table (with its primary key), so
    the difference measured is only per-message versus columnar batch work.
    """
    import duckdb

    from marketstream import store
    from marketstream.consume import make_consumer

    n = int(cfg["n"])
    store.init_db(settings.db_path)
    emit("ready")
    started = time.perf_counter()
    con = duckdb.connect(str(settings.db_path))
    consumer = make_consumer(settings)
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


async def _http_client(
    host: str,
    port: int,
    paths: tuple[str, ...],
    offset: int,
    deadline: float,
    samples: list[tuple[float, str, float, int]],
) -> None:
    """One keep-alive connection sending GETs back to back until the deadline."""
    reader = writer = None
    i = offset
    while time.perf_counter() < deadline:
        path = paths[i % len(paths)]
        i += 1
        sent = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            status = int((await reader.readline()).split()[1])
            length, chunked, close = 0, False, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding" and "chunked" in value:
                    chunked = True
                elif name == "connection" and value == "close":
                    close = True
            if chunked:
                while size := int((await reader.readline()).strip() or b"0", 16):
                    await reader.readexactly(size + 2)
                await reader.readline()
            else:
                await reader.readexactly(length)
            if close:
                writer.close()
                reader = writer = None
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            status = 0  # connection error: counted, and the connection is reopened
            if writer is not None:
                writer.close()
            reader = writer = None
        samples.append((sent, path, time.perf_counter() - sent, status))


def _w_load(settings: Settings, cfg: dict, stop: threading.Event, emit: _Emitter) -> dict:
    """``concurrency`` closed-loop HTTP clients for ``duration_s`` (asyncio, raw HTTP/1.1).

    Raw streams rather than an HTTP library keep the generator's own CPU small,
    which matters on two cores shared with the server, the broker and ingest.
    """
    host, port = cfg["host"], int(cfg["port"])
    paths = tuple(cfg["paths"])
    duration, warmup = float(cfg["duration_s"]), float(cfg["warmup_s"])
    samples: list[tuple[float, str, float, int]] = []

    async def main() -> float:
        start = time.perf_counter()
        deadline = start + warmup + duration
        await asyncio.gather(
            *(
                _http_client(host, port, paths, i, deadline, samples)
                for i in range(int(cfg["concurrency"]))
            )
        )
        return start

    emit("ready")
    start = asyncio.run(main())
    measured = [s for s in samples if s[0] >= start + warmup]
    ok = [s for s in measured if s[3] == 200]
    result: dict[str, Any] = {
        "generator": "python",
        "requests": len(measured),
        "ok": len(ok),
        "errors": len(measured) - len(ok),
        "statuses": dict(Counter(str(s[3]) for s in measured)),
        "rps": len(measured) / duration,
        "latency_ms": _summary([s[2] for s in ok], 1000.0),
    }
    for path in paths:
        result[f"latency_ms{path.replace('/', '_')}"] = _summary(
            [s[2] for s in ok if s[1] == path], 1000.0
        )
    return result


_WORKERS: dict[str, Callable[[Settings, dict, threading.Event, _Emitter], dict]] = {
    "ceiling": _w_ceiling,
    "consume": _w_consume,
    "live": _w_live,
    "naive": _w_naive,
    "load": _w_load,
}


def _worker_main(kind: str) -> int:
    """Entry point of a worker process: config on stdin's first line, EOF on stdin = stop."""
    emit = _Emitter(sys.stdout)
    config = json.loads(sys.stdin.readline())
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the parent closes the pipe (or dies)
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    settings = _settings_from_payload(config["settings"])
    import marketstream.consume  # noqa: F401  (base RSS: with pyarrow, duckdb, kafka loaded)

    base_rss = _rss_peak_mb()
    cpu = _cpu_s()
    result = _WORKERS[kind](settings, config, stop, emit)
    result["cpu_s"] = _cpu_s() - cpu
    emit("result", **result, peak_rss_mb=_rss_peak_mb(), base_rss_mb=base_rss)
    return 0


# --------------------------------------------------------------------------- workers (parent side)


class _Child:
    """A worker process and the thread that reads its JSON lines."""

    def __init__(
        self,
        kind: str,
        settings: Settings,
        config: dict[str, Any],
        log_dir: Path,
        on_progress: Callable[[int], None] | None = None,
    ):
        self.kind = kind
        self.stderr_path = log_dir / f"{kind}-{uuid.uuid4().hex[:6]}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "marketstream.bench", "--worker", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the bench, which then stops us in order
        )
        assert self.proc.stdin is not None
        payload = {**config, "settings": _settings_payload(settings)}
        self.proc.stdin.write(json.dumps(payload) + "\n")
        self.proc.stdin.flush()
        self.ready = threading.Event()
        self.result: dict[str, Any] | None = None
        self._on_progress = on_progress
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            event = message.pop("event", None)
            if event == "ready":
                self.ready.set()
            elif event == "progress" and self._on_progress is not None:
                self._on_progress(int(message["done"]))
            elif event == "result":
                self.result = message
        self.ready.set()  # EOF: never leave a waiter hanging on a dead worker

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        if not self.ready.wait(timeout_s) or self.proc.poll() not in (None, 0):
            self._fail()

    def stop(self) -> None:
        """Ask the worker to finish (it sees EOF on stdin)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def wait(self, timeout_s: float) -> dict[str, Any]:
        """The worker's result; raises BenchError (with its stderr) if it failed or hung."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(
                f"the {self.kind} worker did not finish in {timeout_s:.0f} s"
            ) from None
        self._reader.join(timeout=5)
        if self.result is None or self.proc.returncode != 0:
            self._fail()
        self.stop()
        assert self.result is not None
        return self.result

    def _fail(self) -> None:
        self.kill()
        tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-12:]
        detail = " | ".join(tail) or "no output"
        raise BenchError(f"the {self.kind} worker failed: {detail}")

    def kill(self) -> None:
        """Stop it now (cleanup): EOF, then SIGTERM, then SIGKILL."""
        self.stop()
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._stderr.close()


class _Run:
    """Everything one benchmark run starts, so that all of it is stopped at the end."""

    def __init__(self, settings: Settings, plan: Plan, work: Path, progress: bool):
        self.settings = settings
        self.plan = plan
        self.work = work
        self.progress = progress
        self.run_id = uuid.uuid4().hex[:8]
        self.children: list[_Child] = []
        self.servers: list[subprocess.Popen[str]] = []
        self.topics: list[Settings] = []

    def settings_for(self, name: str, **overrides: Any) -> Settings:
        """Settings for one phase: the bench's own topic, group, DuckDB file and log."""
        values: dict[str, Any] = {
            "topic": f"marketstream-bench-{self.run_id}-{name}",
            "consumer_group": f"marketstream-bench-{self.run_id}-{name}",
            "db_path": self.work / f"{name}.duckdb",
            "log_path": self.work / "bench.log",
            **overrides,
        }
        return self.settings.with_(**values)

    def child(
        self,
        kind: str,
        settings: Settings,
        desc: str | None = None,
        total: int | None = None,
        **cfg,
    ) -> tuple[_Child, Any]:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total, desc=desc or kind, unit="tick", disable=not (self.progress and desc)
        )

        def on_progress(done: int) -> None:
            bar.update(done - bar.n)

        child = _Child(kind, settings, cfg, self.work, on_progress)
        self.children.append(child)
        return child, bar

    def run_child(self, kind: str, settings: Settings, desc: str, total: int, **cfg) -> dict:
        """Run a finite worker to its end, with a progress bar."""
        child, bar = self.child(kind, settings, desc, total, **cfg)
        try:
            return child.wait(timeout_s=3600)
        finally:
            bar.close()

    def cleanup(self) -> None:
        for child in self.children:
            child.kill()
        for server in self.servers:
            _stop_process(server)
        from marketstream.produce import delete_topic

        for settings in self.topics:
            with contextlib.suppress(Exception):  # best effort: the broker may be gone
                delete_topic(settings)


def _stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


# --------------------------------------------------------------------------- phases


def _phase_produce(run: _Run, ticks: list) -> dict[str, Any]:
    from marketstream.produce import ensure_topic, produce_ticks

    settings = run.settings_for("main")
    run.topics.append(settings)
    ensure_topic(settings)
    summary = produce_ticks(ticks, settings, total=len(ticks), progress=run.progress)
    if summary.failed:
        raise BenchError(f"producing failed for {summary.failed} ticks: {summary.problems[:3]}")
    return {"sent": summary.sent, "elapsed_s": summary.elapsed_s, "rate": summary.rate}


def _phase_ceiling_and_consume(run: _Run) -> dict[str, Any]:
    """Bare client and our consumer on the same topic, interleaved ``repeats`` times."""
    n = run.plan.n_ticks
    ceilings, consumes = [], []
    for rep in range(run.plan.repeats):
        ceiling = run.run_child(
            "ceiling",
            run.settings_for("main", consumer_group=f"bench-{run.run_id}-ceiling-{rep}"),
            f"client ceiling {rep + 1}/{run.plan.repeats}",
            n,
            n=n,
        )
        ceilings.append(ceiling)
        db = run.work / f"consume-{rep}.duckdb"
        consumed = run.run_child(
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
            db.unlink(missing_ok=True)
    return {"ceiling": ceilings, "consume": consumes}


def _phase_baseline(run: _Run) -> dict[str, Any]:
    n = run.plan.baseline_n
    return run.run_child(
        "naive",
        run.settings_for(
            "main", consumer_group=f"bench-{run.run_id}-naive", db_path=run.work / "naive.duckdb"
        ),
        "naive per-message baseline",
        n,
        n=n,
    )


def _phase_e2e(run: _Run, ticks: list) -> dict[str, Any]:
    """Producer (here) and consumer (a worker) running together on a fresh topic."""
    from marketstream.produce import ensure_topic, produce_ticks

    settings = run.settings_for("e2e")
    run.topics.append(settings)
    ensure_topic(settings)
    child, bar = run.child(
        "consume",
        settings,
        "end to end: stored",
        len(ticks),
        n=len(ticks),
        concurrent_producer=True,
    )
    try:
        child.wait_ready()
        started = time.time()
        produced = produce_ticks(ticks, settings, total=len(ticks), progress=run.progress)
        consumed = child.wait(timeout_s=3600)
    finally:
        bar.close()
    wall = consumed["ended_at_epoch"] - started
    return {
        "wall_s": wall,
        "rate": consumed["messages"] / wall,
        "produce_rate": produced.rate,
        "consume": consumed,
    }


def _wait_for_rows(db: Path, timeout_s: float) -> None:
    """Block until the live consumer has created the file and stored a first row."""
    from marketstream import store

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if store.tick_count(db) > 0:
                return
        time.sleep(0.1)
    raise BenchError(f"the live consumer stored nothing in {db} within {timeout_s:.0f} s")


class _FreshnessReader(threading.Thread):
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
        import duckdb

        from marketstream import store

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
            except (store.StoreUnavailable, duckdb.Error):
                rows = []
            for partition, offset, event_us, received_us, received in rows:
                key = (partition, offset)
                if key not in self.seen:
                    self.seen[key] = visible - event_us / 1e6
                    self.event_epoch[key] = event_us / 1e6
                    self.to_consumer[key] = (received_us - event_us) / 1e6
                newest = max(newest, received)
            self.stop_event.wait(self.poll_s)


class _LiveProducer(threading.Thread):
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
        from marketstream.live import produce_live

        try:
            self.sent = produce_live(self.settings, self.stop_event, self.duration_s)
        except BaseException as exc:
            self.error = exc


def _live_settings(run: _Run, name: str, db: Path | None = None) -> Settings:
    per_symbol = run.plan.live_rate / len(run.settings.symbols)
    overrides: dict[str, Any] = {"live_rate": per_symbol}
    if db is not None:
        overrides["db_path"] = db
    settings = run.settings_for(name, **overrides)
    run.topics.append(settings)
    return settings


def _phase_freshness(run: _Run) -> dict[str, Any]:
    """Event time -> visible to a read-only reader, live consumer, fixed producer rate."""
    from marketstream.produce import ensure_topic

    settings = _live_settings(run, "live")
    ensure_topic(settings)
    live, _ = run.child("live", settings)
    live.wait_ready()
    reader = _FreshnessReader(settings.db_path)
    reader.start()
    stop = threading.Event()
    started = time.time()
    total = run.plan.warmup_s + run.plan.live_s
    producer = _LiveProducer(settings, stop, total)
    _sleep_with_bar(total, f"freshness at {run.plan.live_rate:,.0f} ticks/s", run.progress)
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
    keys = [k for k in reader.seen if reader.event_epoch[k] >= started + run.plan.warmup_s]
    window = [reader.seen[k] for k in keys]
    in_window = sum(1 for e in reader.event_epoch.values() if e >= started + run.plan.warmup_s)
    return {
        "rate": run.plan.live_rate,
        "duration_s": run.plan.live_s,
        "produced": produced,
        "seen": len(reader.seen),
        "never_seen": max(0, produced - len(reader.seen)),
        "reader_polls": reader.polls,
        "latency_s": _summary(window) | {"count": in_window},
        # where the time goes: event -> the consumer's poll returned it (Kafka), and
        # that poll -> visible to the reader (decode, DuckDB open/insert/close, reader)
        "to_consumer_s": _summary([reader.to_consumer[k] for k in keys]),
        "consumer_to_visible_s": _summary([reader.seen[k] - reader.to_consumer[k] for k in keys]),
        "consumer": consumed,
    }


def _sleep_with_bar(seconds: float, desc: str, progress: bool) -> None:
    from tqdm.auto import tqdm

    steps = max(1, int(seconds))
    for _ in tqdm(
        range(steps), desc=desc, unit="", disable=not progress, bar_format="{l_bar}{bar}| {elapsed}"
    ):
        time.sleep(seconds / steps)


def _start_api(run: _Run, settings: Settings) -> tuple[str, int]:
    """``python -m marketstream_api.serve --port 0`` on the phase's DuckDB file; (host, port)."""
    env = {**os.environ, "MARKET_LOG_PATH": str(settings.log_path)}
    env["KAFKA_BOOTSTRAP_SERVERS"] = settings.bootstrap_servers
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "marketstream_api.serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            str(settings.db_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    run.servers.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "marketstream API on http://127.0.0.1:PORT (db ...)"
    found = re.search(r"http://\[?([^\s\],]+)\]?:(\d+)", line)
    if not found:
        rest = line + (proc.stdout.read() if proc.poll() is not None else "")
        raise BenchError(f"the API did not start: {rest.strip()[:500]}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    return found.group(1), int(found.group(2))


#: wrk's Lua: the same round-robin over API_PATHS as the Python generator, and the
#: summary as one JSON line (latencies in microseconds).
_WRK_SCRIPT = """
local paths = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "errors": %%d, "non2xx": %%d, ' ..
    '"p50": %%d, "p95": %%d, "p99": %%d, "max": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def _wrk(host: str, port: int, concurrency: int, seconds: float, work: Path) -> dict[str, Any]:
    """Closed-loop load with wrk (C, Debian's package): its own CPU use is small, so on two
    shared cores the figure is the server's, not the load generator's. Same shape as the
    Python generator's result."""
    script = work / "wrk.lua"
    script.write_text(_WRK_SCRIPT % ", ".join(f'"{p}"' for p in API_PATHS), encoding="utf-8")
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://{host}:{port}/",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith('{"requests"')), None)
    if proc.returncode != 0 or line is None:
        return {"error": (proc.stderr or proc.stdout).strip()[:300]}
    w = json.loads(line)
    duration = w["duration_us"] / 1e6
    errors = w["errors"] + w["non2xx"]
    return {
        "generator": "wrk",
        "requests": w["requests"],
        "ok": w["requests"] - errors,
        "errors": errors,
        "rps": w["requests"] / duration if duration else math.nan,
        "latency_ms": {
            "count": w["requests"],
            **{k: w[k] / 1000.0 for k in ("p50", "p95", "p99", "max")},
        },
    }


def _phase_api(run: _Run, start_from: Path | None) -> dict[str, Any]:
    """API latency with 100 concurrent connections while live ingest writes the same file."""
    from marketstream.produce import ensure_topic

    db = run.work / "api.duckdb"
    if start_from is not None and start_from.exists():
        shutil.copyfile(start_from, db)  # a store that already holds the consume phase's ticks
    settings = _live_settings(run, "api", db)
    ensure_topic(settings)
    live, _ = run.child("live", settings)
    live.wait_ready()
    stop = threading.Event()
    total = run.plan.warmup_s + run.plan.api_s + 5
    producer = _LiveProducer(settings, stop, total)
    _wait_for_rows(db, 30)
    host, port = _start_api(run, settings)
    if shutil.which("wrk"):
        _wrk(host, port, run.plan.concurrency, run.plan.warmup_s, run.work)  # warm-up, dropped
        holder: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: holder.update(
                _wrk(host, port, run.plan.concurrency, run.plan.api_s, run.work)
            ),
            daemon=True,
        )
        thread.start()
        _sleep_with_bar(
            run.plan.api_s,
            f"API: {run.plan.concurrency} concurrent during ingest (wrk)",
            run.progress,
        )
        thread.join(timeout=120)
        if "error" in holder:
            raise BenchError(f"wrk failed: {holder['error']}")
        result = holder
    else:
        load, _ = run.child(
            "load",
            settings,
            host=host,
            port=port,
            paths=list(API_PATHS),
            concurrency=run.plan.concurrency,
            duration_s=run.plan.api_s,
            warmup_s=run.plan.warmup_s,
        )
        _sleep_with_bar(
            run.plan.warmup_s + run.plan.api_s,
            f"API: {run.plan.concurrency} concurrent during ingest",
            run.progress,
        )
        result = load.wait(timeout_s=120)
    stop.set()
    producer.join(timeout=30)
    live.stop()
    consumed = live.wait(timeout_s=60)
    for server in run.servers:
        _stop_process(server)
    if producer.error is not None:
        raise BenchError(f"the live producer failed: {producer.error}")
    return {**result, "ingest": {"produced": producer.sent, "consumer": consumed}}


# --------------------------------------------------------------------------- results


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("kafka-python", "duckdb", "pyarrow", "orjson", "crc32c", "marketstream"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    """What the figures were taken on (load average included: neighbours skew absolutes)."""
    import psutil

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def summarize(plan: Plan, settings: Settings, phases: dict[str, Any]) -> dict[str, Any]:
    """The flat figures (required keys first), targets, and every raw sample."""
    pair = phases["ceiling_consume"]
    ceiling = max(s["rate"] for s in pair["ceiling"])
    consume = max(s["rate"] for s in pair["consume"])
    baseline = phases["baseline"]["rate"]
    freshness = phases["freshness"]["latency_s"]
    api = phases["api"]["latency_ms"]
    peak = max(s["peak_rss_mb"] for s in pair["consume"])
    result: dict[str, Any] = {
        "n_ticks": plan.n_ticks,
        "produce_rate": phases["produce"]["rate"],
        "consume_rate": consume,
        "client_ceiling_rate": ceiling,
        "baseline_rate": baseline,
        "e2e_rate": phases["e2e"]["rate"],
        "freshness_p99_s": freshness["p99"],
        "api_p99_ms": api["p99"],
        "consumer_peak_rss_mb": peak,
        "consume_vs_ceiling": consume / ceiling,
        "speedup_vs_baseline": consume / baseline,
        "e2e_wall_s": phases["e2e"]["wall_s"],
        "baseline_n": plan.baseline_n,
        "freshness_p50_s": freshness["p50"],
        "freshness_p95_s": freshness["p95"],
        "freshness_rate": plan.live_rate,
        "api_p50_ms": api["p50"],
        "api_rps": phases["api"]["rps"],
        "api_load_generator": phases["api"].get("generator", "python"),
        "api_errors": phases["api"]["errors"],
        "api_concurrency": plan.concurrency,
        "consumer_base_rss_mb": min(s["base_rss_mb"] for s in pair["consume"]),
    }
    result["targets"] = {
        key: {"bound": f"{op} {bound:g}", "value": result[key], "met": _met(result[key], op, bound)}
        for key, (op, bound) in TARGETS.items()
    }
    result["config"] = {
        "batch_size": settings.batch_size,
        "partitions": settings.partitions,
        "symbols": list(settings.symbols),
        "bootstrap_servers": settings.bootstrap_servers,
        "repeats": plan.repeats,
        "live_s": plan.live_s,
        "api_s": plan.api_s,
        "warmup_s": plan.warmup_s,
        "reader_poll_s": READER_POLL_S,
        "api_paths": list(API_PATHS),
    }
    result["machine"] = machine_info()
    result["versions"] = _versions()
    result["taken_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["phases"] = phases
    return result


def _met(value: float, op: str, bound: float) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return value >= bound if op == ">=" else value <= bound


def format_table(result: dict[str, Any]) -> str:
    """The figures as a plain-text table for the terminal (and the README)."""

    def rate(x: float) -> str:
        return f"{x:,.0f} ticks/s"

    def verdict(key: str) -> str:
        target = result["targets"][key]
        return f"target {target['bound']}: {'met' if target['met'] else 'MISSED'}"

    m = result["machine"]
    rows = [
        ("produce", rate(result["produce_rate"]), ""),
        ("client ceiling (kafka-python, discard)", rate(result["client_ceiling_rate"]), ""),
        (
            "consume -> DuckDB",
            rate(result["consume_rate"]),
            f"{result['consume_vs_ceiling']:.0%} of ceiling; {verdict('consume_vs_ceiling')}",
        ),
        (
            f"naive baseline (per-message INSERT, {result['baseline_n']:,} ticks)",
            rate(result["baseline_rate"]),
            f"speed-up {result['speedup_vs_baseline']:,.0f}x; {verdict('speedup_vs_baseline')}",
        ),
        (
            "end to end (producer + consumer together)",
            rate(result["e2e_rate"]),
            f"wall {result['e2e_wall_s']:.1f} s",
        ),
        (
            f"freshness, live, {result['freshness_rate']:,.0f} ticks/s",
            f"p50 {result['freshness_p50_s']:.3f} s  p95 {result['freshness_p95_s']:.3f} s  "
            f"p99 {result['freshness_p99_s']:.3f} s",
            verdict("freshness_p99_s"),
        ),
        (
            f"API /live+/metrics, {result['api_concurrency']} concurrent, during ingest",
            f"p50 {result['api_p50_ms']:.1f} ms  p99 {result['api_p99_ms']:.1f} ms",
            f"{result['api_rps']:,.0f} req/s ({result['api_load_generator']}), "
            f"{result['api_errors']} errors; " + verdict("api_p99_ms"),
        ),
        (
            "consumer peak RSS",
            f"{result['consumer_peak_rss_mb']:,.0f} MB",
            f"{result['consumer_base_rss_mb']:,.0f} MB after imports",
        ),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    head = (
        f"marketstream bench: {result['n_ticks']:,} ticks on {m['cores']} cores ({m['cpu']}), "
        f"{m['memory_gib']} GiB; load average at start {m['load_average_start']}"
    )
    lines = [head, ""]
    lines += [f"{a:<{width[0]}}  {b:<{width[1]}}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(lines)


def write_chart(result: dict[str, Any], html_path: Path) -> dict[str, str | None]:
    """A plotly chart of the figures: HTML always, PNG only if kaleido works offline."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "Throughput (ticks/s, log scale)",
            "Latency (ms)",
            "Ratios vs target",
        ),
    )
    names = ["produce", "client ceiling", "consume→DuckDB", "naive baseline", "end to end"]
    keys = ["produce_rate", "client_ceiling_rate", "consume_rate", "baseline_rate", "e2e_rate"]
    values = [result[k] for k in keys]
    fig.add_trace(
        go.Bar(x=names, y=values, text=[f"{v:,.0f}" for v in values], name="ticks/s"), 1, 1
    )
    fig.update_yaxes(type="log", row=1, col=1)
    lat_names = ["fresh p50", "fresh p95", "fresh p99", "API p50", "API p99"]
    lat = [
        result["freshness_p50_s"] * 1000,
        result["freshness_p95_s"] * 1000,
        result["freshness_p99_s"] * 1000,
        result["api_p50_ms"],
        result["api_p99_ms"],
    ]
    fig.add_trace(go.Bar(x=lat_names, y=lat, text=[f"{v:,.1f}" for v in lat], name="ms"), 1, 2)
    ratio_names = ["consume / ceiling", "speed-up / 50", "1 s / fresh p99", "50 ms / API p99"]
    ratios = [
        result["consume_vs_ceiling"] / 0.9,
        result["speedup_vs_baseline"] / 50,
        1.0 / result["freshness_p99_s"] if result["freshness_p99_s"] else math.nan,
        50.0 / result["api_p99_ms"] if result["api_p99_ms"] else math.nan,
    ]
    fig.add_trace(
        go.Bar(x=ratio_names, y=ratios, text=[f"{v:.2f}" for v in ratios], name="≥1 meets"), 1, 3
    )
    fig.add_hline(y=1.0, line_dash="dash", row=1, col=3)
    m = result["machine"]
    fig.update_layout(
        title=(
            f"marketstream bench — {result['n_ticks']:,} ticks, {m['cores']} cores, "
            f"{result['taken_at']}"
        ),
        showlegend=False,
        height=520,
    )
    html_path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(html_path, include_plotlyjs=True)  # self-contained: readable offline
    out: dict[str, str | None] = {"html": str(html_path), "png": None}
    if importlib.util.find_spec("kaleido") is not None:
        png = html_path.with_suffix(".png")
        spec = html_path.with_suffix(".fig.json")
        spec.write_text(fig.to_json(), encoding="utf-8")
        code = (
            "import sys, plotly.io as pio; "
            "pio.read_json(sys.argv[1]).write_image(sys.argv[2], width=1400, height=520)"
        )
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            done = subprocess.run(
                [sys.executable, "-c", code, str(spec), str(png)],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if done.returncode == 0 and png.exists():
                out["png"] = str(png)
        spec.unlink(missing_ok=True)
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _clean(value: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# --------------------------------------------------------------------------- entry point


def _output_path(output: str | Path) -> Path:
    path = Path(output).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


@contextlib.contextmanager
def _broker_for(settings: Settings, progress: bool) -> Iterator[bool]:
    """The broker at settings.bootstrap_servers; started (and stopped after) if none answers."""
    from marketstream import broker

    if broker.broker_status(settings).reachable:
        yield False
        return
    if progress:
        print(f"no Kafka broker at {settings.bootstrap_servers}: starting one for the benchmark")
    broker.start_broker(settings)
    try:
        yield True
    finally:
        broker.stop_broker(settings)


def run_bench(settings: Settings, n_ticks: int, output: str, *, progress: bool = True) -> int:
    """Run every phase for ``n_ticks`` ticks, print the table, write JSON and chart; 0 if done.

    Targets missed are reported, not errors: the exit code says whether the
    benchmark ran, not whether the machine was fast enough.
    """
    from marketstream.ticks import generate_ticks

    if n_ticks < 1_000:
        raise SettingsError(f"bench needs at least 1,000 ticks, got {n_ticks:,}")
    out = _output_path(output)
    plan = Plan.for_ticks(n_ticks)
    phases: dict[str, Any] = {}
    with (
        _broker_for(settings, progress) as started_broker,
        tempfile.TemporaryDirectory(prefix="marketstream-bench-") as tmp,
    ):
        run = _Run(settings, plan, Path(tmp), progress)
        try:
            per_symbol = -(-n_ticks // len(settings.symbols))
            ticks = generate_ticks(settings.symbols, per_symbol, seed=settings.seed)[:n_ticks]
            phases["produce"] = _phase_produce(run, ticks)
            phases["ceiling_consume"] = _phase_ceiling_and_consume(run)
            phases["baseline"] = _phase_baseline(run)
            phases["e2e"] = _phase_e2e(run, ticks)
            del ticks
            phases["freshness"] = _phase_freshness(run)
            phases["api"] = _phase_api(run, run.work / "consume-0.duckdb")
        finally:
            run.cleanup()
        result = summarize(plan, settings, phases)
        result["broker_started_by_bench"] = started_broker
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    result["chart"] = write_chart(result, out.with_suffix(".html"))
    out.write_text(
        json.dumps(_clean(result), indent=2, default=_json_default) + "\n", encoding="utf-8"
    )
    print(format_table(result))
    print(f"\nwrote {out} and {result['chart']['html']}")
    return 0


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--worker" and argv[1] in _WORKERS:
        return _worker_main(argv[1])
    print("usage: marketstream bench -n N (this module's own entry point runs workers)")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
