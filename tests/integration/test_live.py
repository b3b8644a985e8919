"""``marketstream live`` end to end on a real broker: rows keep arriving, never faster than
the configured rate, ``--duration`` ends it by itself, a CSV replayed with ``--pace`` is
stored whole at its pace, one Ctrl-C stops every process it started, a server that cannot
start stops the rest, and the API stays correct under a few thousand concurrent requests
while the live consumer writes.

Live mode runs as the real CLI in a subprocess (:mod:`support.live`): DuckDB forbids
one process from holding a file read-write (the live consumer) and read-only (this
test's reads) at once, and a subprocess is also what a user runs.
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import psutil
import pytest

from marketstream import store
from marketstream.clients import DEFAULT_CLIENTS
from marketstream.decode import decode_value
from marketstream.processes import free_port, port_open
from marketstream.settings import Settings
from marketstream.ticks import generate_ticks, write_csv
from support.live import live_cli
from support.processes import GRACE_S, alive
from support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("no_stray_children")

#: How long live mode may take to start its servers, or to show its first ticks, on a
#: loaded machine (both normally take seconds; the wait ends as soon as they are there).
START_S = 120
#: Times the end-to-end test sees the row count grow before it stops live mode: a stream,
#: not one batch (at 4 ticks/s per symbol that is a few seconds of ticks, however late).
GROWTH_STEPS = 5
#: How far a wall-clock time (a tick's stamp, a Kafka CreateTime in whole ms) may read
#: before the monotonic-clock due time it follows: the ms truncation, plus the two clocks
#: drifting apart by at most NTP's 500 ppm slew over a run of a few seconds.
CLOCKS_DIFFER_S = 0.005


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# --------------------------------------------------------------------------- live mode


def test_live_mode_end_to_end(fresh):
    """``marketstream live``: rows arrive and keep arriving while it runs, the symbols take
    turns, no symbol goes faster than the configured rate, and one Ctrl-C ends it cleanly
    with every stored tick counted in its run.

    Every check is a condition, never a stopwatch: the test waits (up to ``START_S``, a
    failure bound) until it has seen the row count grow ``GROWTH_STEPS`` times, however
    long the start takes (a fresh broker creates ``__consumer_offsets`` before the first
    fetch; a 15 s window once saw no row at all at a load average of 2). The rate is
    checked as the producer's rule, which a slow machine can only fall behind: a symbol's
    k-th tick is never due before k / rate seconds after the producer started, and the
    producer starts after ``launched``. How close to the rate a loaded machine keeps is a
    performance figure, not a test's (the bench's freshness phase runs the same producer).
    """
    launched = datetime.now(UTC).replace(tzinfo=None)  # before the producer's first due time
    with live_cli(fresh, "--no-api", "--no-voila") as live:
        counts: list[int] = []

        def grew_often_enough() -> bool:
            counts.append(store.tick_count(fresh.db_path))
            return len({c for c in counts if c > 0}) >= GROWTH_STEPS

        wait_until(
            grew_often_enough,
            START_S,
            f"the row count to grow {GROWTH_STEPS} times while live",
            interval_s=0.5,
            died=live.gone,
            context=lambda: f"row counts seen: {counts}\n{live.output()}",
        )
        live.proc.send_signal(signal.SIGINT)
        assert live.proc.wait(timeout=60) == 0, live.output()
    assert not live.leftovers, live.leftovers
    assert counts == sorted(counts), f"the row count went down while live: {counts}"
    assert "live stopped after" in live.output()

    ticks = store.ticks(fresh.db_path)
    assert set(ticks["symbol"]) == set(fresh.symbols)
    parts = dict(tuple(ticks.groupby("symbol")))
    for symbol, part in parts.items():
        since_launch = (part["event_time"].max() - launched).total_seconds()
        print(f"{symbol}: {len(part)} ticks, the last {since_launch:.2f}s after the launch")
        # not faster than the rate: the last of n ticks was due (n - 1) / rate after the start
        assert since_launch >= (len(part) - 1) / fresh.live_rate - CLOCKS_DIFFER_S, symbol
    # the symbols take turns: up to the newest tick stored of every symbol (each partition
    # is stored as a prefix of what was sent), no symbol is a whole round ahead of another
    common = min(part["event_time"].max() for part in parts.values())
    turns = ticks.loc[ticks["event_time"] <= common, "symbol"].value_counts()
    assert turns.max() - turns.min() <= 1, turns.to_dict()

    latency = (ticks["received_at"] - ticks["event_time"]).dt.total_seconds()
    steady = latency[ticks["event_time"] > ticks["event_time"].min() + timedelta(seconds=3)]
    print(
        f"event -> consumer latency p50 {percentile(latency.tolist(), 50) * 1000:.1f} ms, "
        f"p99 {percentile(latency.tolist(), 99) * 1000:.1f} ms; after the first 3 s "
        f"p99 {percentile(steady.tolist(), 99) * 1000:.1f} ms"
    )
    runs = store.pipeline_runs(fresh.db_path)
    assert runs.iloc[0]["mode"] == "live" and runs.iloc[0]["rows_inserted"] == len(ticks)


def test_live_mode_ends_by_itself_after_its_duration(fresh):
    """``--duration 1``: live mode stops on its own, cleanly, and says so. What it stored in
    that second is not checked: that depends on how fast the machine starts it (the test
    above checks the stream itself)."""
    with live_cli(fresh, "--no-api", "--no-voila", "--duration", "1") as live:
        wait_until(
            lambda: live.proc.poll() is not None,
            START_S,
            "live mode to end after its duration",
            context=live.output,
        )
        assert live.proc.returncode == 0, live.output()
    assert not live.leftovers, live.leftovers
    out = live.output()
    assert "  for 1s" in out and "live stopped after" in out, out
    (run,) = store.pipeline_runs(fresh.db_path).itertuples()
    assert (run.mode, run.rows_inserted) == ("live", store.tick_count(fresh.db_path))


#: ``live --csv --pace`` speed: the demo CSV's 49 s of event time in about 2 s.
REPLAY_SPEED = 25.0


def topic_records(settings: Settings, count: int) -> list[Any]:
    """Every record of the test's topic (``count`` of them), read by a group of its own,
    so the live consumer's offsets are left alone."""
    reader = DEFAULT_CLIENTS.consumer(settings.with_(consumer_group=f"{settings.topic}-reader"))
    records: list[Any] = []
    try:

        def read_all() -> bool:
            for batch in reader.poll(timeout_ms=500).values():
                records.extend(batch)
            return len(records) >= count

        wait_until(read_all, START_S, f"{count} records in {settings.topic}")
    finally:
        reader.close()
    return records


def test_live_mode_replays_a_csv_whole_and_at_its_pace(fresh):
    """``marketstream live --csv F --pace --speed 25`` on the demo CSV with two bad rows in
    it: every valid tick is stored exactly once (retimed, prices and volumes as in the
    file), the bad rows are named, no tick left before its due time, and one Ctrl-C
    stops it with nothing left running.

    Pacing is checked against its own rule, not a stopwatch: the replay stamps each tick
    with its due time (first tick's wall time + event-time offset / speed) and never sends
    it earlier, so each record's Kafka CreateTime (the producer's wall clock at the send)
    is at or after the stamp in its message, and the last one went out at least the
    file's span / speed after the first was due. Sent all at once, the 150 ticks would
    leave within a few ms of the first. Lateness is allowed: a loaded machine only sends
    later (a replay that falls behind shifts the rest, which widens the gaps)."""
    demo = generate_ticks(fresh.symbols, fresh.ticks_per_symbol, seed=fresh.seed)
    csv_path = fresh.csv_path.with_name("demo.csv")  # passed as --csv, not via settings
    write_csv(demo, csv_path)
    lines = csv_path.read_text().splitlines()
    lines.insert(20, "2025-01-06T14:30:06Z,SP500,not-a-price,10")  # line 21 of the file
    lines.insert(90, "2025-01-06T14:30:29Z,DAX,-5,10")  # line 91
    csv_path.write_text("\n".join(lines) + "\n")
    span_s = (demo[-1].timestamp - demo[0].timestamp).total_seconds()
    args = ("--no-api", "--no-voila", "--csv", str(csv_path), "--pace")
    with live_cli(fresh, *args, "--speed", f"{REPLAY_SPEED:g}") as live:
        wait_until(
            lambda: "replay of" in live.output(),
            START_S,
            "the replay to reach the end of the file",
            died=live.gone,
            context=live.output,
        )
        wait_until(
            lambda: store.tick_count(fresh.db_path) >= len(demo),
            START_S,
            f"all {len(demo)} valid ticks in DuckDB",
            died=live.gone,
            context=live.output,
        )
        records = topic_records(fresh, len(demo))
        live.proc.send_signal(signal.SIGINT)
        assert live.proc.wait(timeout=60) == 0, live.output()
    assert not live.leftovers, live.leftovers
    out = live.output()
    assert f"replaying {csv_path} at 25x event-time speed" in out
    assert f"sent {len(demo)} ticks (0 failed, 2 bad rows skipped)" in out
    assert "line 21: price 'not-a-price' is not a number" in out
    assert "line 91: price -5.0 must be a positive finite number" in out
    assert "live stopped after" in out

    stored = store.ticks(fresh.db_path)
    assert len(stored) == len(demo)  # once each: nothing more arrived after the wait
    as_filed = Counter((t.symbol, t.price, t.volume) for t in demo)
    assert Counter(zip(stored["symbol"], stored["price"], stored["volume"], strict=True)) == (
        as_filed
    )
    assert store.dead_letters(fresh.db_path).empty  # bad rows never reach the topic
    (run,) = store.pipeline_runs(fresh.db_path).itertuples()
    assert (run.mode, run.rows_inserted, run.duplicates, run.errors) == ("live", len(demo), 0, 0)

    # what went through Kafka: each message's stamp (its due time) and when it was sent
    assert {r.timestamp_type for r in records} == {0}  # CreateTime: the producer's clock
    sent = [(decode_value(r.value), r.timestamp / 1000) for r in records]
    stamps = {(tick.symbol, tick.timestamp.replace(tzinfo=None)) for tick, _ in sent}
    in_store = zip(stored["symbol"], stored["event_time"].dt.to_pydatetime(), strict=True)
    assert stamps == set(in_store)  # the store holds the retimed ticks the topic carried
    first_due = min(tick.timestamp for tick, _ in sent)
    assert first_due > datetime.now(UTC) - timedelta(hours=1)  # retimed: now, not 2025
    early = [
        (tick.symbol, tick.timestamp, at)
        for tick, at in sent
        if tick.timestamp.timestamp() - at > CLOCKS_DIFFER_S
    ]
    assert not early, f"sent before they were due: {early[:5]}"
    paced_s = max(at for _, at in sent) - first_due.timestamp()
    rule_s = span_s / REPLAY_SPEED
    print(f"\nreplay: the last tick left {paced_s:.3f}s after the first was due (>= {rule_s:.3f}s)")
    assert paced_s >= rule_s - CLOCKS_DIFFER_S


def test_ctrl_c_stops_every_process_it_started(fresh):
    """API, Voila and a Voila kernel are all gone after one Ctrl-C, and the exit code is 0."""
    settings = fresh.with_(api_port=free_port(), voila_port=free_port())
    with live_cli(settings) as live:
        wait_until(
            lambda: "Ctrl-C stops everything" in live.output(),
            START_S,
            "servers",
            died=live.gone,
            context=live.output,
        )
        wait_until(
            lambda: store.tick_count(settings.db_path) > 0,
            START_S,
            "first ticks",
            died=live.gone,
            context=live.output,
        )
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
        _, left = psutil.wait_procs(alive(family), timeout=GRACE_S)
        assert not left, f"left behind: {[p.cmdline() for p in left]}"
        assert not port_open("127.0.0.1", settings.api_port)
        assert not port_open("127.0.0.1", settings.voila_port)
    assert "live stopped after" in live.output()


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
#: A request that takes longer counts as an error; latencies are printed, not asserted.
REQUEST_TIMEOUT_S = 30


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
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
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
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
        time.sleep(max(0.0, next_at - time.monotonic()))
    conn.close()


def test_api_under_load_while_the_live_consumer_writes(fresh):
    """3000 requests over ~20 s from 6 threads at the real API (granian, own process)
    while live mode writes: every response is a 200. Figures are printed, not asserted."""
    settings = fresh.with_(api_port=free_port())
    with live_cli(settings, "--no-voila") as live:
        wait_until(
            lambda: "Ctrl-C stops everything" in live.output(),
            START_S,
            "the API",
            died=live.gone,
            context=live.output,
        )
        wait_until(
            lambda: store.tick_count(settings.db_path) > 30,
            START_S,
            "first ticks",
            died=live.gone,
            context=live.output,
        )
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
            thread.join(timeout=LOAD_MAX_SECONDS + 2 * REQUEST_TIMEOUT_S)
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
