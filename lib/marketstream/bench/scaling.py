"""The scaling phase: 1, 2 and 3 consumer worker processes on each store, one table.

What it measures and why this way:

* **One pre-produced topic for every row** (the run's main topic, 3 partitions;
  the default 3 symbols with the ``spread`` partitioner put one symbol on each
  partition, so every worker count has equal partitions to share). Each row
  uses a fresh consumer group and a fresh store (a new DuckDB file; a new
  catalog database on the kit's own PostgreSQL for the lake), so every row
  reads the whole topic from the start into an empty store.
* **The workers are the real ones** (:func:`marketstream.workers.start_workers`,
  ``python -m marketstream.workers``), exactly what ``consume --workers N`` runs.
* **A start gate**: the workers start, join the group and take their
  partitions paused (:func:`marketstream.consume.wait_at_gate`); the bench
  opens the gate once their logged assignments cover every partition once
  (:func:`marketstream.workers.settled`). Without it the first worker up read
  much of the topic before the last one had joined (a 300,000-tick row showed
  workers at 0 %, 25 % and 67 % of the ceiling), which measures the join, not the
  workers.
* **Aggregate rate from the stored rows** (``received_at``: when a poll
  returned the records): messages after the first poll over the span from the
  first poll to the last. The wall rate (gate open to last exit) is kept beside it.
* **Per worker**: its own :class:`~marketstream.store.RunMetrics`
  (messages / elapsed, elapsed counted from the gate's opening: process
  start and group join are not in it, while the ceiling worker's time includes
  its own one-member join), its peak RSS and CPU seconds from ``wait4`` on that
  very process (``ru_maxrss`` per child, not a sampled guess).
* **Against the client ceiling of the same run** (the bare kafka-python worker
  of the ``ceiling_consume`` phase): aggregate / ceiling and each worker's
  rate / ceiling.
* **Freshness with N workers**: a short live run per row (the live workers,
  the paced producer at the bench's live rate, the read-only reader of the
  freshness phase), because a pre-produced topic has no event-to-commit time.
  The producer starts once the group has settled; a fixed 2 s wait left 3
  workers still rebalancing, and ~900 of ~5,000 ticks went unseen.

The arithmetic and the text are pure (:func:`row`, :func:`verdicts`,
:func:`format_rows`) and unit-tested; :func:`measure` does the running.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from marketstream.bench.costs import CpuMeter, listener_pid, tree_cpu_s
from marketstream.bench.plan import distribution, met
from marketstream.errors import BenchError
from marketstream.settings import variable

#: Worker counts of the table.
WORKER_COUNTS = (1, 2, 3)
#: The stores of the table, in order.
STORES = ("duckdb", "ducklake")
#: The environment variable selecting the phase: 0/off, 1/on/all, or stores ("duckdb,ducklake").
SELECT_ENV = variable("MARKET_BENCH_SCALING")
#: Below this many ticks the phase is off unless asked for (smoke runs stay fast).
DEFAULT_FROM_TICKS = 100_000
#: Targets: each worker's rate as a share of the ceiling; 2 workers' aggregate over it.
PER_WORKER_TARGET = 0.90
TWO_WORKER_TARGET = 1.30
#: Live seconds per row for the freshness column (after a warm-up of the plan's).
LIVE_S = 5.0
#: A row whose workers failed is run again this many times (fresh group and store).
ATTEMPTS = 2
#: A row's workers must all be done within this.
ROW_TIMEOUT_S = 1800.0
#: Workers' start-up and group join, before the gate opens, must fit in this.
SETTLE_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------- selection


def selected_stores(n_ticks: int, choice: str | None = None) -> tuple[str, ...]:
    """The stores to run the phase on: ``choice`` (else ``$MARKET_BENCH_SCALING``),
    by default both from :data:`DEFAULT_FROM_TICKS` ticks and none below."""
    raw = os.environ.get(SELECT_ENV, "") if choice is None else choice
    text = raw.strip().lower()
    if not text:
        return STORES if n_ticks >= DEFAULT_FROM_TICKS else ()
    if text in ("0", "off", "no", "false", "none"):
        return ()
    if text in ("1", "on", "yes", "true", "all"):
        return STORES
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in STORES]
    if unknown:
        from marketstream.errors import SettingsError

        raise SettingsError(
            f"{SELECT_ENV}={raw!r}: use 0, 1 or stores from {', '.join(STORES)} ({unknown})"
        )
    return tuple(s for s in STORES if s in names)


# --------------------------------------------------------------------------- pure arithmetic


def row(
    store: str,
    workers: Sequence[dict[str, Any]],
    *,
    ceiling_rate: float,
    stored: int,
    span_s: float,
    span_messages: int,
    wall_s: float,
    freshness_s: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of the table from its raw figures.

    ``workers``: one dict per worker process with ``messages`` and ``elapsed_s``
    (its RunMetrics), ``peak_rss_mb`` and ``cpu_s``. ``span_messages`` messages
    were received within ``span_s`` (first poll to last poll, from the stored
    ``received_at``); ``wall_s`` is first start to last exit.
    """
    rates = [w["messages"] / w["elapsed_s"] if w["elapsed_s"] > 0 else 0.0 for w in workers]
    aggregate = span_messages / span_s if span_s > 0 else math.nan
    wall_rate = stored / wall_s if wall_s > 0 else math.nan
    cpu = sum(w.get("cpu_s", 0.0) for w in workers)
    return {
        "store": store,
        "workers": len(workers),
        "messages": sum(w["messages"] for w in workers),
        "stored": stored,
        "aggregate_rate": aggregate,
        "aggregate_vs_ceiling": aggregate / ceiling_rate if ceiling_rate > 0 else math.nan,
        "wall_s": wall_s,
        "wall_rate": wall_rate,
        "wall_vs_ceiling": wall_rate / ceiling_rate if ceiling_rate > 0 else math.nan,
        "span_s": span_s,
        "per_worker_messages": [w["messages"] for w in workers],
        "per_worker_rate": rates,
        "per_worker_vs_ceiling": [
            r / ceiling_rate if ceiling_rate > 0 else math.nan for r in rates
        ],
        "per_worker_peak_rss_mb": [w["peak_rss_mb"] for w in workers],
        "per_worker_cpu_s": [w.get("cpu_s", math.nan) for w in workers],
        "cpu_s": cpu,
        # cores busy on average over the wall time, the workers alone (broker not counted)
        "cores_busy": cpu / wall_s if wall_s > 0 else math.nan,
        "freshness_s": freshness_s,
    }


def failed_row(store: str, workers: int, failures: Sequence[str]) -> dict[str, Any]:
    """A row whose every attempt failed: no figures (NaN), the errors kept."""
    empty = row(store, [], ceiling_rate=0.0, stored=0, span_s=0.0, span_messages=0, wall_s=0.0)
    return empty | {"workers": workers, "failed": True, "failed_attempts": list(failures)}


def verdicts(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The targets per store: every worker of every row >= 90 % of the ceiling, and
    2 workers' aggregate >= 1.3x the ceiling."""
    out: dict[str, dict[str, Any]] = {}
    for store in dict.fromkeys(r["store"] for r in rows):
        mine = [r for r in rows if r["store"] == store]
        shares = [s for r in mine for s in r["per_worker_vs_ceiling"]]
        worst = min(shares) if shares else math.nan
        two = next((r["aggregate_vs_ceiling"] for r in mine if r["workers"] == 2), None)
        out[f"{store}_per_worker_vs_ceiling_min"] = {
            "bound": f">= {PER_WORKER_TARGET:g}",
            "value": worst,
            "met": met(worst, ">=", PER_WORKER_TARGET),
        }
        out[f"{store}_2_workers_vs_ceiling"] = {
            "bound": f">= {TWO_WORKER_TARGET:g}",
            "value": two,
            "met": met(two, ">=", TWO_WORKER_TARGET),
        }
    return out


def _share(values: Sequence[float]) -> str:
    return " ".join(f"{v:.0%}" for v in values)


def _fresh(f: dict[str, Any] | None) -> str:
    if not f or not f.get("count"):
        return "-"
    return f"{f['p50']:.2f}/{f['p99']:.2f}"


COLUMNS = (
    "store",
    "N",
    "aggregate ticks/s",
    "x ceiling",
    "wall ticks/s",
    "per worker ticks/s",
    "per worker / ceiling",
    "peak RSS MB",
    "cores busy",
    "fresh p50/p99 s",
)


def table_cells(r: dict[str, Any]) -> tuple[str, ...]:
    """A row's cells, as :data:`COLUMNS` names them."""
    if r.get("failed"):
        return (r["store"], str(r["workers"]), "failed", *("-" * (len(COLUMNS) - 3)))
    return (
        r["store"],
        str(r["workers"]),
        f"{r['aggregate_rate']:,.0f}",
        f"{r['aggregate_vs_ceiling']:.2f}",
        f"{r['wall_rate']:,.0f}",
        " ".join(f"{v:,.0f}" for v in r["per_worker_rate"]),
        _share(r["per_worker_vs_ceiling"]),
        " ".join(f"{v:,.0f}" for v in r["per_worker_peak_rss_mb"]),
        f"{r['cores_busy']:.2f}",
        _fresh(r.get("freshness_s")),
    )


def format_rows(rows: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """The table as plain text (aligned columns) or as a Markdown table."""
    cells = [COLUMNS, *(table_cells(r) for r in rows)]
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "---|" * len(COLUMNS))
        return "\n".join(lines)
    width = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(f"{v:<{w}}" for v, w in zip(c, width, strict=True)).rstrip() for c in cells
    )


def summary(
    rows: Sequence[dict[str, Any]],
    ceiling_rate: float,
    *,
    symbols: Sequence[str],
    partitions: int,
    skipped: dict[str, str] | None = None,
    commit_rates: Sequence[dict[str, float]] = (),
    batch_rows: int = 0,
    cores: float | None = None,
) -> dict[str, Any]:
    """The phase's result: rows, targets, what the rows read, stores skipped (why), and the
    scaling model built on the rows (for ``cores`` cores here: this machine's by default)."""
    from marketstream.bench.model import build

    here = float(cores if cores is not None else (os.cpu_count() or 1))
    return {
        "ceiling_rate": ceiling_rate,
        "symbols": list(symbols),
        "partitions": partitions,
        "partitioner": "spread",
        "aggregate_from": "received_at span (first poll to last poll), start-up excluded",
        "rows": list(rows),
        "targets": verdicts(rows),
        "skipped": dict(skipped or {}),
        "model": build(
            rows,
            cores=here,
            partitions=partitions,
            commit_rates=commit_rates,
            batch_rows=batch_rows,
        ),
    }


def format_summary(result: dict[str, Any]) -> str:
    """The phase for the terminal: the table, then the targets."""
    lines = [
        f"scaling: {len(result['symbols'])} symbols ({', '.join(result['symbols'])}) on "
        f"{result['partitions']} partitions (spread), same topic each row; ceiling "
        f"{result['ceiling_rate']:,.0f} ticks/s; aggregate from the stored rows' "
        "received_at span",
    ]
    if result["rows"]:
        lines.append(format_rows(result["rows"]))
    for name, why in result.get("skipped", {}).items():
        lines.append(f"{name}: skipped ({why})")
    for key, t in result["targets"].items():
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        lines.append(f"  {key} {value} (target {t['bound']}): {'met' if t['met'] else 'MISSED'}")
    if result.get("model", {}).get("stores"):
        from marketstream.bench.model import format_model

        lines += ["scaling model (bench/model.py):", format_model(result["model"])]
    return "\n".join(lines)


# --------------------------------------------------------------------------- running


def _reap(children: Sequence[Any], timeout_s: float) -> dict[int, tuple[float, Any]]:
    """Wait for each child with ``wait4`` (its own rusage: peak RSS, CPU); pid -> (end, rusage).

    The return code is handed to the ``Popen`` so that it does not wait again.
    """
    from marketstream.errors import BenchError

    done: dict[int, tuple[float, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len(children):
        for child in children:
            pid = child.proc.pid
            if pid in done:
                continue
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got == pid:
                done[pid] = (time.time(), usage)
                child.proc.returncode = os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            raise BenchError(f"scaling: workers not done within {timeout_s:.0f} s")
        time.sleep(0.02)
    return done


def _stored_span(at: Any) -> tuple[int, float, int]:
    """(rows stored, seconds from the first poll to the last, rows after the first poll)."""
    from marketstream import store

    sql = (
        "SELECT count(*), epoch_us(min(received_at)), epoch_us(max(received_at)), "
        "count(*) FILTER (WHERE received_at = (SELECT min(received_at) FROM market_ticks)) "
        "FROM market_ticks"
    )
    with store.read_connection(at, timeout_s=30.0) as con:
        count, first, last, in_first = con.execute(sql).fetchone()
    if not count:
        return 0, 0.0, 0
    return int(count), (last - first) / 1e6, int(count) - int(in_first)


def _wait_for_group(settings: Any, consumers: Sequence[Any], label: str) -> None:
    """Until the workers (at their start gate, or live on an empty topic) hold every
    partition between them, once each."""
    from marketstream.workers import settled

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not settled(
        settings.log_path, settings.consumer_group, len(consumers), settings.partitions
    ):
        gone = [c for c in consumers if not c.alive()]
        if gone:
            raise BenchError(
                f"scaling {label}: {gone[0].name} ended at the gate: {gone[0].log_tail(8)}"
            )
        if time.monotonic() > deadline:
            raise BenchError(
                f"scaling {label}: the group did not settle in {SETTLE_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.1)


def _throughput(
    run: Any, settings: Any, n: int, label: str, servers: dict[str, int]
) -> tuple[list[dict], dict]:
    """N batch workers to completion on a fresh group and store; (workers, span/wall, and
    the row's CPU costs: the workers', the writer process's, and ``servers``' (name -> pid:
    the broker, the lake's PostgreSQL) from the gate's opening to the last worker's exit)."""
    from marketstream import store
    from marketstream.errors import BenchError
    from marketstream.workers import WRITER_NAME, start_workers, worker_run

    logs = run.work / label
    logs.mkdir(parents=True, exist_ok=True)
    at = store.locate(settings)
    gate = logs / "gate"
    children = start_workers(settings, n, live=False, logs=logs, gate=gate)
    run.servers.extend(children)  # stopped at cleanup whatever fails
    consumers = [c for c in children if c.name != WRITER_NAME]
    _wait_for_group(settings, consumers, label)
    # CPU spent before the gate (imports, the join) is not the row's: taken off below
    before_gate = {c.proc.pid: tree_cpu_s(c.proc.pid) for c in children}
    others = CpuMeter(dict(servers))
    others.start()
    gate.touch()  # every worker has its partitions: go
    started = time.time()
    reaped = _reap(consumers, ROW_TIMEOUT_S)
    wall = max(end for end, _ in reaped.values()) - started
    served = others.stop()
    writer_rss_mb = None
    writer_cpu_s = 0.0
    for writer in (c for c in children if c.name == WRITER_NAME):  # the file's writer process
        writer.proc.terminate()  # it closes the file once the workers have hung up
        usage = _reap([writer], ROW_TIMEOUT_S)[writer.proc.pid][1]
        writer_rss_mb = usage.ru_maxrss / 1024
        writer_cpu_s = usage.ru_utime + usage.ru_stime - before_gate[writer.proc.pid]
    workers = []
    for child in consumers:
        child.close_log()
        metrics = worker_run(child)
        if child.proc.returncode != 0 or metrics is None:
            raise BenchError(f"scaling {label}: {child.name} failed: {child.log_tail(8)}")
        usage = reaped[child.proc.pid][1]
        workers.append(
            {
                "messages": metrics.messages_processed,
                "rows_inserted": metrics.rows_inserted,
                "elapsed_s": metrics.elapsed_s,
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "run_cpu_s": usage.ru_utime + usage.ru_stime - before_gate[child.proc.pid],
                "status": metrics.status,
            }
        )
    stored, span, span_messages = _stored_span(at)
    if stored != run.plan.n_ticks:
        raise BenchError(f"scaling {label}: stored {stored:,} of {run.plan.n_ticks:,} ticks")
    return workers, {
        "stored": stored,
        "span_s": span,
        "span_messages": span_messages,
        "wall_s": wall,
        "writer_peak_rss_mb": writer_rss_mb,
        # the row's costs (gate to last exit) for the scaling model (bench/model.py)
        "costs": {
            "workers_cpu_s": sum(w["run_cpu_s"] for w in workers),
            "writer_cpu_s": writer_cpu_s,
            **{f"{name}_cpu_s": seconds for name, seconds in served.items()},
        },
    }


def _live_freshness(run: Any, settings: Any, n: int, label: str) -> dict[str, Any]:
    """A short live run with N live workers: event time -> visible to a read-only reader."""
    from marketstream import store
    from marketstream.bench.phases import FreshnessReader, LiveProducer
    from marketstream.workers import WRITER_NAME, start_workers, stop_workers

    per_symbol = run.plan.live_rate / len(settings.symbols)
    live = run.own_topic(
        settings.with_(
            topic=f"{settings.topic}-live",
            consumer_group=f"{settings.consumer_group}-live",
            live_rate=per_symbol,
        )
    )
    logs = run.work / f"{label}-live"
    logs.mkdir(parents=True, exist_ok=True)
    at = store.locate(live)
    children = start_workers(live, n, live=True, logs=logs)
    run.servers.extend(children)
    reader = FreshnessReader(at)
    stop = threading.Event()
    try:
        # no tick before every worker has its partitions: steady state, not the join
        _wait_for_group(live, [c for c in children if c.name != WRITER_NAME], label)
        reader.start()
        started = time.time()
        producer = LiveProducer(live, stop, run.plan.warmup_s + LIVE_S)
        producer.join(timeout=run.plan.warmup_s + LIVE_S + 30)
        deadline = time.monotonic() + 10
        while len(reader.seen) < producer.sent and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        reader.stop_event.set()
        with contextlib.suppress(RuntimeError):
            reader.join(timeout=10)
        stop_workers(children)
    window = started + run.plan.warmup_s
    keys = [k for k in reader.seen if reader.event_epoch[k] >= window]
    return distribution([reader.seen[k] for k in keys]) | {
        "produced": producer.sent,
        "never_seen": max(0, producer.sent - len(reader.seen)),
    }


@contextlib.contextmanager
def _own_postgres() -> Iterator[tuple[Callable[[], str], int | None]]:
    """The kit's own PostgreSQL in a fresh folder (traversable by ``nobody``, who runs it
    when we are root); yields a function making a new catalog database (its DSN), and the
    server's pid (its CPU is the catalog's cost)."""
    from marketstream.postgres import start_postgres, temporary_postgres
    from marketstream.store import lake

    folder = Path(tempfile.mkdtemp(prefix="marketstream-bench-pg-"))
    folder.chmod(0o711)
    try:
        with temporary_postgres(folder) as server:

            def new_database() -> str:
                name = f"bench_{uuid.uuid4().hex[:8]}"
                start_postgres(server.data_dir, server.port, database=name)  # creates it
                return server.dsn(name)

            try:
                yield new_database, server.pid
            finally:
                lake.forget_connections()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _rows_for_store(
    run: Any,
    store_name: str,
    ceiling: float,
    new_catalog: Callable[[], str] | None,
    say: Callable[[str], None],
    servers: dict[str, int],
) -> list[dict[str, Any]]:
    rows = []
    for n in WORKER_COUNTS:
        label = f"scale-{store_name}-{n}"
        overrides: dict[str, Any] = {
            "consumer_group": f"bench-{run.run_id}-{label}",
            "db_path": run.work / f"{label}.duckdb",
            "store": store_name,
            "consumers": n,
        }
        if new_catalog is not None:
            overrides |= {
                "ducklake_catalog": new_catalog(),
                "ducklake_data": str(run.work / f"{label}-lake"),
            }
        settings = run.settings_for("main", **overrides)
        say(f"scaling: {store_name}, {n} worker{'s' if n > 1 else ''}")
        failures: list[str] = []
        while True:
            try:
                workers, figures = _throughput(run, settings, n, label, servers)
                break
            except BenchError as exc:  # e.g. a commit refused in a rebalance: noted, retried
                failures.append(str(exc)[:400])
                if len(failures) > ATTEMPTS:
                    break
                say(f"scaling: {label} failed ({str(exc)[:120]}); again on a fresh group and store")
                label = f"{label}-again{len(failures)}"
                overrides["consumer_group"] = f"bench-{run.run_id}-{label}"
                overrides["db_path"] = run.work / f"{label}.duckdb"
                if new_catalog is not None:
                    overrides["ducklake_catalog"] = new_catalog()
                    overrides["ducklake_data"] = str(run.work / f"{label}-lake")
                settings = run.settings_for("main", **overrides)
        if len(failures) > ATTEMPTS:  # the row says so; the bench goes on
            say(f"scaling: {label} failed {len(failures)} times; row left empty")
            rows.append(failed_row(store_name, n, failures))
            continue
        if new_catalog is not None:  # the live run gets its own lake
            settings = settings.with_(
                ducklake_catalog=new_catalog(), ducklake_data=str(run.work / f"{label}-live-lake")
            )
        else:
            settings = settings.with_(db_path=run.work / f"{label}-live.duckdb")
        fresh = _live_freshness(run, settings.with_(topic=f"{settings.topic}-{label}"), n, label)
        writer_rss = figures.pop("writer_peak_rss_mb", None)
        costs = figures.pop("costs")
        rows.append(
            row(store_name, workers, ceiling_rate=ceiling, freshness_s=fresh, **figures)
            | {"failed_attempts": failures, "writer_peak_rss_mb": writer_rss, "costs": costs}
        )
        if new_catalog is None:
            from marketstream import store

            store.remove_db(settings.db_path)
            store.remove_db(run.work / f"{label}.duckdb")
    return rows


def measure(run: Any, ceiling_rate: float, stores: Sequence[str]) -> dict[str, Any]:
    """Every row of the table on the run's main topic (already produced), for ``stores``;
    for the lake also its catalog's commit rates (:func:`marketstream.bench.costs.commit_rate`),
    and the scaling model built on the rows (:mod:`marketstream.bench.model`)."""
    from marketstream.addresses import split_host_port
    from marketstream.bench.costs import commit_rates
    from marketstream.errors import StoreUnavailable

    say = print if run.progress else (lambda _text: None)
    settings = run.settings
    broker = listener_pid(split_host_port(settings.bootstrap_servers.split(",")[0])[1])
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    commits: list[dict[str, float]] = []
    for store_name in stores:
        with contextlib.ExitStack() as stack:
            new_catalog = None
            servers = {} if broker is None else {"broker": broker}
            if store_name == "ducklake":
                try:
                    new_catalog, catalog_pid = stack.enter_context(_own_postgres())
                except StoreUnavailable as exc:  # no PostgreSQL programs: say so, go on
                    skipped[store_name] = str(exc)[:300]
                    continue
                if catalog_pid is not None:
                    servers["catalog"] = catalog_pid
            rows += _rows_for_store(run, store_name, ceiling_rate, new_catalog, say, servers)
            if new_catalog is not None:
                say("scaling: the catalog's commits per second with 1, 2 and 4 writers")
                commits = commit_rates(new_catalog(), str(run.work / "commit-probe-lake"))
    return summary(
        rows,
        ceiling_rate,
        symbols=settings.symbols,
        partitions=settings.partitions,
        skipped=skipped,
        commit_rates=commits,
        batch_rows=settings.batch_size,
    )
