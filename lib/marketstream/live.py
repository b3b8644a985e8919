"""Live mode: a paced producer, the live consumer, the API and the Voila page, started together.

Why the pieces run where they do (2 cores, one GIL):

- The producer and the consumer are threads of this process. Together they
  handle a few dozen messages a second, mostly waiting on sockets and DuckDB
  (which releases the GIL), so a thread each is plenty, and one ``stop``
  event ends both cleanly with no process to lose track of.
- The API and Voila are subprocesses: each serves many requests and would
  fight the pipeline for the GIL, and DuckDB forbids one process from
  holding the same file both read-only and read-write, which a reader thread
  beside the writer would do. This process therefore never reads the store
  while it writes; it counts what the consumer reports instead.
- Subprocesses get their own session (Ctrl-C reaches this process only, which
  then stops everything in order) and a parent-death signal on Linux, so even
  a ``kill -9`` of this process leaves no server behind.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from marketstream import resources
from marketstream.addresses import connect_host, split_host_port
from marketstream.broker import owned_broker
from marketstream.clients import DEFAULT_CLIENTS
from marketstream.logs import get_logger
from marketstream.pacing import Pace, paced, schedule
from marketstream.processes import Child, child_env, port_open, process_family, start_child
from marketstream.settings import Settings, home, variable
from marketstream.store import describe, init_store, locate, owned_store, tick_count, upkeep
from marketstream.ticks import CsvProblem, Tick
from marketstream.workers import WRITER_NAME, start_workers

#: The Voila page served by live mode (shipped in the package: :mod:`marketstream.resources`).
LIVE_NOTEBOOK = resources.notebook("05_live")


#: How often the terminal gets a one-line progress report.
STATUS_EVERY_S = 10.0

#: The Voila configuration every way of serving the page uses (this module, the voila
#: service of docker-compose.yml, the README's stand-alone command), passed as
#: ``--Voila.config_file_paths`` (Voila 0.5.13 reads ``voila.json`` from those folders;
#: it has no ``--config``). It culls a page's kernel once it has been idle and
#: disconnected for 120 s, checked every 30 s: Voila 0.5.13 cannot shut a closed
#: page's kernel down (its unload request lacks an XSRF token), so without culling every
#: closed tab keeps a kernel until the server stops (each ~140 MB: measured here, the RSS
#: of a process holding what the page imports).
VOILA_CONFIG = resources.notebook_dir() / "voila.json"

#: Made (beside the logs) by the page's pre-heated kernel once it has drawn
#: (:func:`marketstream.livepage.announce_ready`): live mode gives the page's address
#: only then, so a page asked for is served at once.
PAGE_READY_FILE = "voila-page.ready"

# --------------------------------------------------------------------------- producer


@dataclass
class LiveCounters:
    """What the pipeline threads did, shared with the status line (ints: GIL-safe enough)."""

    started: float = field(default_factory=time.monotonic)
    produced: int = 0
    failed: int = 0
    stored: int = 0
    #: Seconds from a batch's newest event time to its DuckDB commit, since the last status.
    commit_lag_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def tick_schedule(started: float, index: int, interval_s: float, now: float) -> tuple[float, float]:
    """When tick ``index`` is due, and the (possibly re-anchored) start of the schedule.

    Ticks are due at ``started + index * interval_s`` on the monotonic clock,
    so sleep jitter never accumulates into drift. A backlog beyond
    :data:`~marketstream.pacing.MAX_BACKLOG_S` moves the start forward: live data is about *now*.
    (The one schedule, shared with a paced replay: :func:`marketstream.pacing.schedule`.)
    """
    return schedule(started, index * interval_s, now)


def _unique_now(last: datetime | None) -> datetime:
    """The current UTC time, strictly after ``last``: a tick's identity includes its timestamp."""
    now = datetime.now(UTC)
    if last is not None and now <= last:
        now = last + timedelta(microseconds=1)
    return now


def produce_live(
    settings: Settings,
    stop: threading.Event,
    duration_s: float | None = None,
    counters: LiveCounters | None = None,
) -> int:
    """Send ``settings.live_rate`` ticks/s per symbol, stamped now, until ``stop`` or duration.

    The symbols take turns at evenly spaced instants (rate x symbols per
    second), which keeps the stream smooth for charts. A small linger keeps a
    tick's wait in the producer to milliseconds. Returns the ticks acknowledged.
    """
    from marketstream.produce import ensure_topic
    from marketstream.ticks import RandomWalk

    counters = counters or LiveCounters()
    ensure_topic(settings)
    producer = DEFAULT_CLIENTS.producer(settings, linger_ms=5, max_block_ms=10_000)
    walk = RandomWalk(settings.symbols)
    symbols = settings.symbols
    interval_s = 1.0 / (settings.live_rate * len(symbols))
    last: dict[str, datetime] = {}

    def on_error(exc: BaseException) -> None:
        counters.failed += 1
        if len(counters.errors) < 20:
            counters.errors.append(f"{type(exc).__name__}: {exc}")

    started = time.monotonic()
    end = None if duration_s is None else started + duration_s
    index = 0
    try:
        while not stop.is_set():
            due, started = tick_schedule(started, index, interval_s, time.monotonic())
            if end is not None and due >= end:
                break
            if stop.wait(max(0.0, due - time.monotonic())):
                break
            symbol = symbols[index % len(symbols)]
            last[symbol] = _unique_now(last.get(symbol))
            tick = walk.step(symbol, last[symbol])
            future = producer.send(settings.topic, key=tick.key, value=tick.to_message())
            future.add_errback(on_error)
            counters.produced += 1
            index += 1
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)
    return counters.produced - counters.failed


def replay_live(
    settings: Settings,
    stop: threading.Event,
    pace: Pace,
    counters: LiveCounters | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """Replay ``settings.csv_path`` at event-time speed (``pace``), stamped now, then stop.

    The same producer as batch mode (:func:`marketstream.produce.produce_ticks`:
    bad rows are named by line and skipped, the good ones go), fed by
    :func:`marketstream.pacing.paced` with ``stop.wait`` as its sleeper, so
    Ctrl-C ends it between two ticks. Every tick is retimed: the live page and
    the API show the last minutes before now. Returns the ticks acknowledged.
    """
    from marketstream.produce import produce_ticks, require_csv
    from marketstream.ticks import read_csv

    counters = counters or LiveCounters()
    require_csv(settings.csv_path)

    def counted(items: Iterable[Tick | CsvProblem]) -> Iterator[Tick | CsvProblem]:
        for item in items:
            if isinstance(item, Tick):
                counters.produced += 1
            yield item

    producer = DEFAULT_CLIENTS.producer(settings, linger_ms=5, max_block_ms=10_000)
    retimed = replace(pace, retime=True)
    items = counted(paced(read_csv(settings.csv_path), retimed, wait=stop.wait))
    summary = produce_ticks(items, settings, progress=False, producer=producer)
    producer.close(timeout=5)
    counters.failed += summary.failed
    counters.errors.extend(summary.problems[: max(0, 20 - len(counters.errors))])
    say(f"replay of {settings.csv_path} done: {summary.describe()}")
    for problem in summary.problems:
        say(f"  {problem}")
    return summary.sent


# --------------------------------------------------------------------------- subprocesses


def api_command() -> list[str]:
    """The API under granian, in this interpreter (so the same installed packages)."""
    return [sys.executable, "-m", "marketstream_api.serve"]


def voila_command(settings: Settings, notebook: Path = LIVE_NOTEBOOK) -> list[str]:
    """Voila serving the live page only, on localhost, without opening a browser."""
    return [
        sys.executable,
        "-m",
        "voila",
        str(notebook),
        f"--port={settings.voila_port}",
        "--no-browser",
        "--Voila.ip=127.0.0.1",
        "--show_tracebacks=True",
        # Kernel culling (see VOILA_CONFIG): the page stops refreshing without a browser
        # (livepage.ORPHAN_AFTER_S), and the server then culls the idle kernel.
        f"--Voila.config_file_paths={VOILA_CONFIG.parent}",
    ]


def start_servers(settings: Settings, *, api: bool, voila: bool) -> list[Child]:
    """Start the API and/or Voila; their logs go beside the pipeline log."""
    env = child_env(settings)
    logs = settings.log_path.parent
    children = []
    try:
        if api:
            url = f"http://{settings.api_host}:{settings.api_port}"
            children.append(
                start_child("API", api_command(), env, logs / "api.log", url, cwd=home())
            )
        if voila:
            url = f"http://127.0.0.1:{settings.voila_port}"
            drawn = logs / PAGE_READY_FILE
            drawn.unlink(missing_ok=True)
            voila_env = {**env, variable("MARKET_PAGE_READY"): str(drawn)}
            child = start_child(
                "Voila", voila_command(settings), voila_env, logs / "voila.log", url, cwd=home()
            )
            child.ready = drawn.exists
            children.append(child)
    except BaseException:
        for child in children:
            child.stop()
        raise
    return children


def wait_ready(child: Child, stop: threading.Event, timeout_s: float = 60.0) -> bool:
    """Wait until the server's port answers; False if it died, timed out, or stop was set.

    A server with more to get ready (``Child.ready``: Voila's pre-heated page) is then
    given the rest of ``timeout_s`` for it; past that it counts as ready all the same
    (its first page is only slower), so only a port that never answers fails live mode.
    """
    host, port = split_host_port(child.url.split("//", 1)[1])
    host = connect_host(host)
    deadline = time.monotonic() + timeout_s
    answering = False
    while time.monotonic() < deadline and not stop.is_set():
        if not child.alive():
            return False
        answering = answering or port_open(host, port, timeout_s=0.5)
        if answering and (child.ready is None or child.ready()):
            return True
        stop.wait(0.2)
    return answering


# --------------------------------------------------------------------------- run_live


class _Worker(threading.Thread):
    """A pipeline thread that keeps its exception for the caller and stops the rest on failure."""

    def __init__(
        self,
        name: str,
        target: Callable[[], object],
        stop: threading.Event,
        *,
        finite: bool = False,
    ):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self._stop_event = stop
        #: May end on its own (a replay reaching the end of its CSV) without that being a failure.
        self.finite = finite
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:
            self.error = exc
            self._stop_event.set()


def start_pipeline(
    settings: Settings,
    stop: threading.Event,
    counters: LiveCounters,
    *,
    replay: Pace | None = None,
    say: Callable[[str], None] = print,
) -> list[_Worker]:
    """The live consumer and the paced producer, as threads sharing ``stop``.

    The producer is the random walk, or with ``replay`` the CSV at event-time speed
    (:func:`replay_live`), which ends at the end of the file while the rest runs on.
    """
    from marketstream.consume import consume

    def on_batch(batch: object, added: int) -> None:
        counters.stored += added
        newest = getattr(batch, "max_event_time", None)
        if newest is None:
            return
        lag = (datetime.now(UTC) - newest.replace(tzinfo=UTC)).total_seconds()
        counters.commit_lag_s.append(lag)

    consumers = [
        _Worker(
            "live-consumer",
            lambda: consume(settings, live=True, stop=stop, progress=False, on_batch=on_batch),
            stop,
        )
    ]
    workers = [
        *(consumers if settings.consumers == 1 else []),  # more: processes (start_workers)
        _Worker("live-producer", lambda: produce_live(settings, stop, counters=counters), stop)
        if replay is None
        else _Worker(
            "live-replay",
            lambda: replay_live(settings, stop, replay, counters, say),
            stop,
            finite=True,
        ),
    ]
    for worker in workers:
        worker.start()
    return workers


def count_stored(settings: Settings, stop: threading.Event, counters: LiveCounters) -> None:
    """With consumer processes, the status line's "stored" is read from the store each second."""
    at = locate(settings)
    before = tick_count(at)
    while not stop.wait(1.0):
        counters.stored = tick_count(at) - before


#: Live mode tidies the lake this often: at ~10 commits a second a table gains
#: ~300 small Parquet files in 30 s, which one merge folds back into a few.
UPKEEP_EVERY_S = 30.0


def keep_lake_tidy(settings: Settings, stop: threading.Event, log: logging.Logger) -> None:
    """Every :data:`UPKEEP_EVERY_S`: merge small files, expire old snapshots (:func:`upkeep`)."""
    at = locate(settings)
    while not stop.wait(UPKEEP_EVERY_S):
        done = upkeep(at)
        log.info(
            "lake_upkeep",
            extra={"files_before": done.files_before, "files_after": done.files_after},
        )


def describe_urls(settings: Settings, children: Sequence[Child]) -> list[str]:
    """What to open, for the terminal."""
    lines = []
    for child in children:
        if child.name == "API":
            lines.append(f"  API    {child.url}/live  /metrics  /candles  /runs  /health")
            lines.append(
                f"  Grafana: its Infinity datasource reads the API; set "
                f"MARKETSTREAM_API_URL={child.url} (or `docker compose up grafana`)"
            )
        elif child.url:  # consumer workers and the store's writer have none
            lines.append(f"  {child.name:<6} {child.url}")
    return lines


def status_line(counters: LiveCounters, label: str = "live") -> str:
    """One progress line: ticks produced and stored, and how long ticks took to be committed.

    The lag (event time -> DuckDB commit) is over the batches since the last
    line, which is what tells a slow consumer or a writer kept waiting by readers.
    """
    elapsed = max(time.monotonic() - counters.started, 1e-9)
    lags, counters.commit_lag_s = sorted(counters.commit_lag_s), []
    lag = ""
    if lags:
        median = lags[len(lags) // 2]
        lag = f", event->DuckDB median {median * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms"
    return (
        f"{label} {elapsed:.0f}s: produced {counters.produced} ({counters.failed} failed), "
        f"stored {counters.stored} ({counters.stored / elapsed:.1f}/s){lag}"
    )


def _worker_error(workers: Sequence[_Worker]) -> str | None:
    for worker in workers:
        if worker.error is not None:
            return f"{worker.name} failed: {worker.error}"
    return None


def _first_failure(workers: Sequence[_Worker], children: Sequence[Child]) -> str | None:
    """While running: a pipeline thread that raised or ended, or a server that exited."""
    failure = _worker_error(workers)
    if failure is not None:
        return failure
    for worker in workers:
        if not worker.is_alive() and not worker.finite:
            return f"{worker.name} stopped unexpectedly"
    for child in children:
        if not child.alive():
            return (
                f"{child.name} exited with code {child.proc.returncode}: {child.log_tail()} "
                f"(full log {child.log_path})"
            )
    return None


def _await_servers(children: Sequence[Child], stop: threading.Event) -> str | None:
    """Wait for every server's port; the reason if one died or never answered."""
    for child in children:
        if not child.url:  # a consumer worker: nothing to wait for
            continue
        if wait_ready(child, stop) or stop.is_set():
            continue
        if not child.alive():
            return _first_failure([], [child])
        return f"{child.name} did not answer at {child.url}; see {child.log_path}"
    return None


def _supervise(
    workers: Sequence[_Worker],
    children: Sequence[Child],
    counters: LiveCounters,
    stop: threading.Event,
    duration_s: float | None,
    say: Callable[[str], None],
) -> str | None:
    """Wait for stop, the duration, or a part failing (returned as a one-line reason)."""
    started = time.monotonic()
    end = None if duration_s is None else started + duration_s
    next_status = started + STATUS_EVERY_S
    while not stop.is_set():
        failure = _first_failure(workers, children)
        if failure is not None:
            return failure
        now = time.monotonic()
        if end is not None and now >= end:
            return None
        if now >= next_status:
            say(status_line(counters))
            next_status += STATUS_EVERY_S
        stop.wait(0.25 if end is None else min(0.25, max(0.0, end - now)))
    return _worker_error(workers)  # a thread that failed sets stop too


def _shutdown(workers: Sequence[_Worker], children: Sequence[Child], stop: threading.Event) -> None:
    """Stop the pipeline (it finishes its batch), then the servers.

    Servers get SIGTERM all at once first, so their shutdowns overlap. A broker
    live mode started is stopped after this by :func:`owned_broker`, even if a
    second Ctrl-C cuts this short (the servers then still get their
    parent-death signal).
    """
    stop.set()
    # The file's writer process goes last: its consumer workers store their last batch
    # and their run row through it while they stop (with it stopped at once, CI lost
    # both run rows once).
    writers = [child for child in children if child.name == WRITER_NAME]
    children = [child for child in children if child.name != WRITER_NAME]
    families = [process_family(child.proc) for child in children]
    for child in children:
        if child.alive():
            child.proc.terminate()
    for worker in workers:
        worker.join(timeout=30)
    for child, family in zip(children, families, strict=True):
        child.stop(family)
    for writer in writers:
        writer.stop()


#: Ticks whose event time is older than this when live mode starts are not live ones
#: (``make demo``'s carry the generator's fixed times): live mode says they are there.
OLDER_THAN = timedelta(hours=1)

#: How to keep live mode apart from the demo's ticks: its own store, and its own topic
#: (the demo's messages would otherwise be read into the new store).
SEPARATE_LIVE = "MARKET_DB_PATH=data/live.duckdb KAFKA_TOPIC=market_ticks_live make live"


def older_ticks_note(settings: Settings, now: datetime | None = None) -> str | None:
    """A line saying that the store already holds ticks older than :data:`OLDER_THAN`
    (``None`` if it holds none, or cannot be read: a note never stops live mode).

    Why: live ticks and the demo's land in the same store; the live views are windows
    that end now, but ``/metrics`` or ``/candles`` without a range and the explore
    notebook's statistics count both. Mixing them silently surprised a newcomer (issue
    18); saying so at the start, with the command that keeps them apart, does not.
    """
    from marketstream.store import exists, market_metrics

    cutoff = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None) - OLDER_THAN
    try:
        at = locate(settings)
        if not exists(at):
            return None
        older = market_metrics(at, until=cutoff)
    except Exception:  # a note: never a reason for live mode to fail
        return None
    count = int(older["tickcount"].sum()) if len(older) else 0
    if not count:
        return None
    newest = older["last_tick"].max()
    return (
        f"note: {describe(at)} already holds {count:,} older ticks (the newest of them "
        f"from {newest:%Y-%m-%d %H:%M} UTC, e.g. make demo's). The live views end now and "
        "leave them out, but /metrics and /candles without since= and the explore "
        f"notebook count them too; to keep live mode apart: {SEPARATE_LIVE}"
    )


def run_live(
    settings: Settings,
    *,
    api: bool = True,
    voila: bool = True,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    say: Callable[[str], None] | None = None,
    replay: Pace | None = None,
    progress: bool = True,
) -> int:
    """Stream until ``stop`` (Ctrl-C/SIGTERM in the CLI) or ``duration_s``; serve API and Voila.

    ``progress=False`` (``live -q``) leaves out the status line every
    :data:`STATUS_EVERY_S`; what starts, stops and fails is still said.

    ``replay`` streams ``settings.csv_path`` at event-time speed instead of the random
    walk (:func:`replay_live`); the servers stay up after the file's last tick.

    Returns 0 after a clean stop, 1 if a part failed (the reason is printed).
    Everything started here is stopped here, including a broker this call
    had to start; a broker that was already running is left alone.
    """
    say = say or (lambda line: print(line, flush=True))
    stop = stop or threading.Event()
    log = get_logger(settings.log_path)
    counters = LiveCounters()
    with owned_broker(settings, say=say), owned_store(settings) as settings:
        note = older_ticks_note(settings)
        if note is not None:
            say(note)
            log.info("live_store_holds_older_ticks", extra={"note": note})
        failure = _run_parts(
            settings, api, voila, duration_s, stop, say, counters, log, replay, progress
        )
    say(status_line(counters, "live stopped after"))
    if failure:
        say(f"marketstream live: {failure}")
        log.error("live_failed", extra={"reason": failure})
        return 1
    log.info("live_end", extra={"produced": counters.produced, "stored": counters.stored})
    return 0


def _run_parts(
    settings: Settings,
    api: bool,
    voila: bool,
    duration_s: float | None,
    stop: threading.Event,
    say: Callable[[str], None],
    counters: LiveCounters,
    log: logging.Logger,
    replay: Pace | None = None,
    progress: bool = True,
) -> str | None:
    """Start the servers and the pipeline threads, supervise, stop them; the failure if any."""
    workers: list[_Worker] = []
    children: list[Child] = []
    failure: str | None = None
    try:
        init_store(locate(settings))  # readers find the tables (empty) from the first second
        children = start_servers(settings, api=api, voila=voila)
        workers = start_pipeline(settings, stop, counters, replay=replay, say=say)
        extra = []
        if settings.consumers > 1:
            children += start_workers(settings, settings.consumers, live=True)
            extra.append(
                _Worker("live-stored", lambda: count_stored(settings, stop, counters), stop)
            )
        if settings.store == "ducklake":
            extra.append(_Worker("live-upkeep", lambda: keep_lake_tidy(settings, stop, log), stop))
        for worker in extra:
            worker.start()
        workers += extra
        source = (
            f"{settings.live_rate:g} ticks/s per symbol ({', '.join(settings.symbols)})"
            if replay is None
            else f"replaying {settings.csv_path} at {replay.speed:g}x event-time speed"
        )
        where = f"{settings.topic} @ {settings.bootstrap_servers} -> {describe(locate(settings))}"
        say(f"live: {source} -> {where}")
        log.info("live_start", extra={"topic": settings.topic, "rate": settings.live_rate})
        failure = _await_servers(children, stop)
        if failure is None and not stop.is_set():
            for line in describe_urls(settings, children):
                say(line)
            say("  Ctrl-C stops everything" if duration_s is None else f"  for {duration_s:g}s")
            status = say if progress else (lambda _line: None)
            failure = _supervise(workers, children, counters, stop, duration_s, status)
    except KeyboardInterrupt:
        pass
    finally:
        _shutdown(workers, children, stop)
    return failure
