"""Live mode: the paced producer, ``marketstream live`` end to end on a real broker, a clean
Ctrl-C with no process left behind, the Voila page's refresh logic, and the API under a
few thousand concurrent requests while the live consumer writes.

Live mode runs as the real CLI in a subprocess: DuckDB forbids one process from holding
a file read-write (the live consumer) and read-only (this test's reads) at once, and a
subprocess is also what a user runs.
"""

from __future__ import annotations

import asyncio
import http.client
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import papermill
import psutil
import pyarrow as pa
import pytest

from marketstream import store
from marketstream.live import LIVE_NOTEBOOK, MAX_BACKLOG_S, tick_schedule
from marketstream.livepage import LivePage, status_html
from marketstream.processes import (
    child_env,
    free_port,
    port_open,
    process_family,
    stop_process_tree,
)
from marketstream.settings import Settings
from marketstream.ticks import RandomWalk

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")


# --------------------------------------------------------------------------- helpers


@dataclass
class LiveProcess:
    """``marketstream live`` running in a subprocess, with the output it printed so far."""

    proc: subprocess.Popen[str]
    settings: Settings
    lines: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # what had to be killed at the end

    def descendants(self) -> list[psutil.Process]:
        """Every process it started (broker, API, Voila, Voila's kernels), right now."""
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def output(self) -> str:
        return "\n".join(self.lines)


def _pump(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line.rstrip())


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _kill_all(procs: list[psutil.Process]) -> None:
    for p in _alive(procs):
        with suppress(psutil.NoSuchProcess):
            p.kill()


@contextmanager
def live_cli(settings: Settings, *args: str) -> Iterator[LiveProcess]:
    """Run ``marketstream live ARGS`` with ``settings`` in its environment; always cleaned up.

    Leaving the block without having stopped it sends SIGINT (Ctrl-C), then kills
    whatever is still there, so a failing test never leaves a server behind.
    """
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "marketstream.cli", "live", "-q", *args],
        env=child_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    live = LiveProcess(proc, settings)
    reader = threading.Thread(target=_pump, args=(proc.stdout, live.lines), daemon=True)
    reader.start()
    family: list[psutil.Process] = []
    try:
        yield live
    finally:
        family = live.descendants()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _, still = psutil.wait_procs(_alive(family), timeout=15)
        live.leftovers = [" ".join(p.cmdline()) for p in _alive(still)]
        _kill_all(still)
        reader.join(timeout=5)
        proc.stdout.close()


def wait_for(condition, timeout_s: float, what: str, live: LiveProcess | None = None) -> None:
    """Poll ``condition`` until true; fail naming ``what`` (and the CLI's output) on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if live is not None and live.proc.poll() is not None:
            pytest.fail(
                f"marketstream live exited early while waiting for {what}:\n{live.output()}"
            )
        time.sleep(0.2)
    output = f"\n{live.output()}" if live is not None else ""
    pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}{output}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def recent_ticks_table(n_seconds: int, end: datetime) -> pa.Table:
    """Ticks of the ``n_seconds`` whole seconds before ``end``, four per second per symbol."""
    end = end.replace(microsecond=0)
    walk = RandomWalk(SYMBOLS, seed=1)
    ticks = [
        walk.step(symbol, end - timedelta(seconds=n_seconds) + timedelta(milliseconds=250 * i))
        for i in range(4 * n_seconds)
        for symbol in SYMBOLS
    ]
    return pa.table(
        {
            "symbol": [t.symbol for t in ticks],
            "event_time": [t.timestamp.replace(tzinfo=None) for t in ticks],
            "price": [t.price for t in ticks],
            "volume": [t.volume for t in ticks],
            "topic": ["t"] * len(ticks),
            "partition": [0] * len(ticks),
            "offset": list(range(len(ticks))),
            "received_at": [t.timestamp.replace(tzinfo=None) for t in ticks],
        },
        schema=store.TICK_BATCH_SCHEMA,
    )


# --------------------------------------------------------------------------- unit


def test_child_env_rebuilds_the_same_settings(monkeypatch, tmp_path):
    """Subprocesses (API, Voila) must see exactly the settings live mode runs with."""
    settings = Settings().with_(
        bootstrap_servers="127.0.0.1:19092",
        topic="t-live",
        db_path=tmp_path / "x.duckdb",
        symbols=("AAA", "BBB"),
        live_rate=7.5,
        api_port=18080,
        voila_port=18866,
        sasl_password="s3cret",
    )
    for name, value in child_env(settings, base={}).items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == settings


def test_schedule_is_anchored_so_jitter_never_accumulates():
    start, interval = 100.0, 1 / 12
    due, anchor = tick_schedule(start, 1200, interval, now=start + 99.9)
    assert anchor == start and due == pytest.approx(start + 100.0)
    due, anchor = tick_schedule(start, 1200, interval, now=start + 100.5)  # a little late
    assert anchor == start and due == pytest.approx(start + 100.0)


def test_schedule_skips_a_long_backlog_instead_of_bursting():
    start, interval = 100.0, 1 / 12
    now = start + 100.0 + MAX_BACKLOG_S + 5  # e.g. a suspended laptop
    due, anchor = tick_schedule(start, 1200, interval, now=now)
    assert due == now
    assert anchor + 1201 * interval == pytest.approx(now + interval)  # next one on time


def test_stop_process_tree_ends_grandchildren_too(tmp_path):
    """Voila's kernels are its children: stopping Voila must not orphan them."""
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    wait_for(lambda: len(process_family(proc)) == 3, 10, "the shell's two children")
    family = process_family(proc)
    stop_process_tree(proc, grace_s=5)
    _, alive = psutil.wait_procs(family, timeout=5)
    assert not alive


def test_servers_die_with_a_killed_parent(tmp_path):
    """Even ``kill -9`` of live mode leaves no server: children carry a parent-death signal."""
    script = (
        "import sys; from pathlib import Path; from marketstream.processes import start_child; "
        "c = start_child('sleeper', ['sleep', '60'], {}, Path(sys.argv[1]), 'x'); "
        "print(c.proc.pid, flush=True); import time; time.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "sleeper.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    parent.stdout.close()
    _, alive = psutil.wait_procs([child], timeout=10)
    assert not alive


def test_live_page_draws_from_the_store_and_waits_politely_without_one(tmp_path):
    settings = Settings().with_(db_path=tmp_path / "m.duckdb", symbols=SYMBOLS)
    page = LivePage(settings, window_s=60, refresh_s=0.1)
    assert page.refresh() is False
    assert "waiting for data" in page.status.value and "no database" in page.status.value

    with store.TickWriter(settings.db_path, hold=False) as writer:
        writer.write_batch(recent_ticks_table(30, datetime.now(UTC)))
    assert page.refresh() is True, page.last_error
    assert [len(t.x) for t in page.traces("price")] == [30] * 3
    assert [len(t.y) for t in page.traces("volume")] == [30] * 3
    (table,) = page.traces("stats")
    assert list(table.cells.values[0]) == sorted(SYMBOLS)
    (freshness,) = page.traces("freshness")
    assert len(freshness.y) == 1
    assert "● live" in page.status.value and "360</b> ticks" in page.status.value

    page.start(max_refreshes=3)
    page.wait(timeout_s=10)
    assert page.refreshes == 5 and len(page.traces("freshness")[0].y) == 4


def test_live_page_refreshes_on_the_running_event_loop(tmp_path):
    """In a kernel the loop is an asyncio task (widgets are not thread-safe), not a thread."""
    settings = Settings().with_(db_path=tmp_path / "m.duckdb", symbols=SYMBOLS)
    with store.TickWriter(settings.db_path, hold=False) as writer:
        writer.write_batch(recent_ticks_table(10, datetime.now(UTC)))
    page = LivePage(settings, window_s=60, refresh_s=0.05)

    async def run() -> None:
        page.start(max_refreshes=3)
        assert page.running and page._thread is None
        while page.running:
            await asyncio.sleep(0.02)

    asyncio.run(run())
    assert page.refreshes == 3 and page.last_error is None
    assert [len(t.x) for t in page.traces("price")] == [10] * 3


def test_status_bar_escapes_errors():
    text = status_html(None, 2.0, error="<script>x</script>")
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_live_notebook_runs_headless_with_papermill(tmp_path):
    """The Voila page's notebook also runs under papermill and ends (bounded refreshes)."""
    db = tmp_path / "m.duckdb"
    with store.TickWriter(db, hold=False) as writer:
        writer.write_batch(recent_ticks_table(20, datetime.now(UTC)))
    out = tmp_path / "05_live.out.ipynb"
    papermill.execute_notebook(
        str(LIVE_NOTEBOOK),
        str(out),
        parameters={
            "settings_overrides": {"db_path": str(db)},
            "refresh_s": 0.2,
            "max_refreshes": 2,
        },
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=120,
    )
    assert "application/vnd.jupyter.widget-view+json" in out.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- integration


@pytest.mark.integration
def test_live_mode_end_to_end(fresh):
    """15 s of ``marketstream live``: rows grow while it runs, at the configured rate."""
    duration = 15.0
    with live_cli(fresh, "--no-api", "--no-voila", "--duration", str(duration)) as live:
        counts: list[int] = []
        while live.proc.poll() is None:
            counts.append(store.tick_count(fresh.db_path))
            time.sleep(1.0)
        assert live.proc.wait() == 0, live.output()
    assert not live.leftovers
    growing = [c for c in counts if c > 0]
    assert len(set(growing)) >= 5, f"row count did not grow while live: {counts}"
    assert growing == sorted(growing)

    ticks = store.ticks(fresh.db_path)
    expected = duration * fresh.live_rate
    for symbol, part in ticks.groupby("symbol"):
        span = (part["event_time"].max() - part["event_time"].min()).total_seconds()
        rate = (len(part) - 1) / span
        print(f"{symbol}: {len(part)} ticks over {span:.2f}s = {rate:.2f}/s")
        assert rate == pytest.approx(fresh.live_rate, rel=0.15)
        assert len(part) == pytest.approx(expected, rel=0.25)
    assert set(ticks["symbol"]) == set(fresh.symbols)
    latency = (ticks["received_at"] - ticks["event_time"]).dt.total_seconds()
    steady = latency[ticks["event_time"] > ticks["event_time"].min() + timedelta(seconds=3)]
    print(
        f"event -> consumer latency p50 {percentile(latency.tolist(), 50) * 1000:.1f} ms, "
        f"p99 {percentile(latency.tolist(), 99) * 1000:.1f} ms; after the first 3 s "
        f"(consumer group joined) p99 {percentile(steady.tolist(), 99) * 1000:.1f} ms"
    )
    runs = store.pipeline_runs(fresh.db_path)
    assert runs.iloc[0]["mode"] == "live" and runs.iloc[0]["rows_inserted"] == len(ticks)


@pytest.mark.integration
def test_ctrl_c_stops_every_process_it_started(fresh):
    """API, Voila and a Voila kernel are all gone after one Ctrl-C, and the exit code is 0."""
    settings = fresh.with_(api_port=free_port(), voila_port=free_port())
    with live_cli(settings) as live:
        wait_for(lambda: "Ctrl-C stops everything" in live.output(), 120, "servers", live)
        wait_for(lambda: store.tick_count(settings.db_path) > 0, 30, "first ticks", live)
        conn = http.client.HTTPConnection("127.0.0.1", settings.voila_port, timeout=120)
        conn.request("GET", "/")  # Voila runs the notebook in a new kernel for this
        page = conn.getresponse().read().decode()
        conn.close()
        assert "Live market" in page
        family = live.descendants()
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "marketstream_api.serve" in names and "voila" in names
        assert "ipykernel" in names, names
        live.proc.send_signal(signal.SIGINT)
        assert live.proc.wait(timeout=60) == 0, live.output()
        _, alive = psutil.wait_procs(_alive(family), timeout=10)
        assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
        assert not port_open("127.0.0.1", settings.api_port)
        assert not port_open("127.0.0.1", settings.voila_port)
    assert "live stopped after" in live.output()


@pytest.mark.integration
def test_a_server_that_cannot_start_stops_everything_with_one_line(fresh):
    """The API's port is taken: live mode says so, stops the rest, and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = fresh.with_(api_port=taken.getsockname()[1])
        with live_cli(settings, "--no-voila") as live:
            assert live.proc.wait(timeout=120) == 1, live.output()
    assert not live.leftovers
    assert "API exited with code 1" in live.output(), live.output()
    assert "cannot listen" in live.output()


# --------------------------------------------------------------------------- load


LOAD_REQUESTS = 3000
LOAD_SECONDS = 20.0
LOAD_THREADS = 6
#: A slow machine sends fewer requests rather than running for ever.
LOAD_MAX_SECONDS = 120.0
LOAD_PATHS = ("/live?limit=60", "/metrics", "/runs?limit=5")


@dataclass
class LoadResult:
    """What the client saw: statuses, errors, latencies, and when each newest tick showed up."""

    sent: int = 0
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    first_seen: dict[str, datetime] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw_newest(self, newest: str | None, at: datetime) -> None:
        if newest is None:
            return
        with self.lock:
            if newest not in self.first_seen or at < self.first_seen[newest]:
                self.first_seen[newest] = at

    def freshness_s(self) -> list[float]:
        """Event time -> first response that showed it, for every newest tick seen."""
        return [
            (seen - datetime.fromisoformat(newest.replace("Z", "+00:00"))).total_seconds()
            for newest, seen in self.first_seen.items()
        ]


def newest_in(path: str, body: object) -> str | None:
    """The newest event time a response shows: /runs says it, /metrics has one per symbol."""
    if path.startswith("/runs"):
        return body["health"]["newest_event_time"]  # type: ignore[index]
    if path.startswith("/metrics") and body:
        return max(row["time"] for row in body)  # type: ignore[union-attr]
    return None


def client_thread(
    port: int, n: int, interval_s: float, offset: int, result: LoadResult, deadline: float
) -> None:
    """One keep-alive client sending ``n`` requests paced at ``interval_s``, never past
    ``deadline`` (monotonic): the load is bounded in count and in time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    next_at = time.monotonic()
    for i in range(n):
        if time.monotonic() > deadline:
            break
        path = LOAD_PATHS[(i + offset) % len(LOAD_PATHS)]
        next_at += interval_s
        with result.lock:
            result.sent += 1
        started = time.perf_counter()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            raw = response.read()
            received = datetime.now(UTC)
            elapsed = time.perf_counter() - started
            with result.lock:
                result.statuses.append(response.status)
                result.latency_s.append(elapsed)
            if response.status == 200:
                result.saw_newest(newest_in(path, orjson.loads(raw)), received)
            else:
                with result.lock:
                    result.errors.append(f"{path}: {response.status} {raw[:200]!r}")
        except Exception as exc:
            with result.lock:
                result.errors.append(f"{path}: {type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        time.sleep(max(0.0, next_at - time.monotonic()))
    conn.close()


@pytest.mark.integration
def test_api_under_load_while_the_live_consumer_writes(fresh):
    """3000 requests over ~20 s from 6 threads at the real API (granian, own process)
    while live mode writes: every response is a 200. Figures are printed, not asserted."""
    settings = fresh.with_(api_port=free_port())
    with live_cli(settings, "--no-voila") as live:
        wait_for(lambda: "Ctrl-C stops everything" in live.output(), 60, "the API", live)
        wait_for(lambda: store.tick_count(settings.db_path) > 30, 30, "first ticks", live)
        before = store.tick_count(settings.db_path)
        result = LoadResult()
        per_thread = LOAD_REQUESTS // LOAD_THREADS
        deadline = time.monotonic() + LOAD_MAX_SECONDS
        interval = LOAD_SECONDS / per_thread
        threads = [
            threading.Thread(
                target=client_thread,
                args=(settings.api_port, per_thread, interval, i, result, deadline),
            )
            for i in range(LOAD_THREADS)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=LOAD_MAX_SECONDS + 15)
        elapsed = time.monotonic() - started
        after = store.tick_count(settings.db_path)
        during = [line for line in live.output().splitlines() if "event->DuckDB" in line]
        assert live.proc.poll() is None, live.output()
    fresh_s = result.freshness_s()
    lat = result.latency_s
    print(
        f"\nload: {len(lat)} of {LOAD_REQUESTS} requests in {elapsed:.1f}s "
        f"({len(lat) / elapsed:.0f} req/s), "
        f"{len(result.errors)} errors; store grew {after - before} rows "
        f"({(after - before) / elapsed:.1f}/s)\n"
        f"API latency p50 {percentile(lat, 50) * 1000:.1f} ms, "
        f"p99 {percentile(lat, 99) * 1000:.1f} ms, max {max(lat, default=0) * 1000:.1f} ms\n"
        f"freshness (event time -> visible in the API) over {len(fresh_s)} ticks: "
        f"p50 {percentile(fresh_s, 50) * 1000:.0f} ms, "
        f"p99 {percentile(fresh_s, 99) * 1000:.0f} ms\n"
        "live mode's own status lines:\n  " + "\n  ".join(during)
    )
    assert not live.leftovers, live.leftovers
    assert not result.errors, f"{len(result.errors)} errors, first: {result.errors[:5]}"
    assert len(result.statuses) == result.sent > 0  # every request answered
    assert set(result.statuses) == {200}
    assert after > before, "the live consumer stopped writing under read load"


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    """Every test here must end with no child process of pytest left over."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    new = [p for p in me.children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(_alive(new), timeout=10)
    _kill_all(alive)
    assert not alive, f"stray processes: {[p.cmdline() for p in alive]}"
