"""N consumer worker processes in one consumer group (``MARKET_CONSUMERS``, ``--workers N``).

Why processes and not threads: the consumer's ceiling is kafka-python
parsing records in pure Python on one core (bench/README.md), and threads
share one GIL. Each worker is the ordinary consumer (:func:`consume`) in its
own process, with its own partitions; Kafka's group protocol shares the
partitions among them and moves a dead or stalled worker's partitions to the
others.

Exactly-once holds across workers because each worker commits to the store
first and to Kafka after, and the store skips what a replay brings again,
whoever replays it: the DuckDB file by its primary keys, the lake by its
partition fences (:mod:`marketstream.store.lake`). On the DuckDB file, which
allows one writing process, the workers hand their decoded batches to one
writer process that holds it (:mod:`marketstream.store.relay`). A worker whose
partitions moved away while it was storing a batch finds its Kafka commit
refused and carries on.

A worker prints its run as one ``RUN {json}`` line at the end; the parent
adds them up (:func:`consume_all`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from marketstream.errors import ConsumeError, MarketstreamError
from marketstream.processes import Child, child_env, start_child
from marketstream.settings import Settings, home, variable
from marketstream.store import RunMetrics, init_store, locate, relay

#: The last line a worker prints: its run.
RUN_MARKER = "RUN "

#: The name of the writer process workers on one DuckDB file share (:mod:`.store.relay`).
WRITER_NAME = "store-writer"

#: SIGTERM to SIGKILL for a worker. The servers' 10 s is short for one: it finishes the
#: batch in hand, leaves the group and stores its run row, and on a loaded 2-core
#: machine a worker cut off there loses its run row (its batch is safe: the offsets of
#: a batch not stored are never committed). 60 s is only reached when something hangs.
WORKER_STOP_GRACE_S = 60.0

#: A file path: workers given one join their group but fetch nothing until it exists
#: (the scaling bench opens it once the group has settled; see :func:`settled`).
GATE_ENV = variable("MARKET_WORKER_GATE")


def holdings(log_path: Path, group: str) -> dict[str, list[int]]:
    """Each consumer run of ``group``: its partitions as its last ``partitions_assigned``
    in the JSON log said (the consumer's :class:`~marketstream.consume.PartitionLog`)."""
    from marketstream.logs import read_log

    held: dict[str, list[int]] = {}
    for entry in read_log(log_path):
        if entry.get("event") == "partitions_assigned" and entry.get("group") == group:
            held[entry["run_id"]] = entry["partitions"]
    return held


def settled(log_path: Path, group: str, workers: int, partitions: int) -> bool:
    """True once ``workers`` runs of ``group`` hold every one of ``partitions`` exactly once
    between them: the group's rebalances are over (as long as no one joins or leaves)."""
    held = holdings(log_path, group)
    taken = sorted(n for numbers in held.values() for n in numbers)
    return len(held) == workers and taken == list(range(partitions))


def worker_command(*, live: bool) -> list[str]:
    """The command line of one worker (settings come through the environment)."""
    return [sys.executable, "-m", "marketstream.workers", *(["--live"] if live else [])]


def start_workers(
    settings: Settings,
    count: int,
    *,
    live: bool,
    logs: Path | None = None,
    gate: Path | None = None,
) -> list[Child]:
    """Start ``count`` worker processes, each logging to ``consumer-<i>.log``;
    with ``gate``, they fetch nothing until that file exists (:data:`GATE_ENV`).

    The store is created here first, once: workers creating a new lake's catalog
    at the same moment collide inside PostgreSQL (a duplicate-key error in
    ``pg_type``, which DuckLake does not retry), and extensions are installed once.
    """
    init_store(locate(settings))
    # each worker must know it has company: one alone takes every partition itself
    settings = settings.with_(consumers=count)
    folder = logs or settings.log_path.parent
    children: list[Child] = []
    extra: dict[str, str] = {}
    try:
        if settings.store == "duckdb" and count > 1:  # one writer process for the file
            address, key = relay.new_address(settings.db_path)
            extra = {relay.ADDRESS_ENV: address, relay.KEY_ENV: key}
            writer = start_child(
                WRITER_NAME,
                relay.relay_command(hold=not live),
                child_env(settings, extra),
                folder / "store-writer.log",
                cwd=home(),
                stop_grace_s=WORKER_STOP_GRACE_S,  # it drains its workers' last batches
            )
            children.append(writer)
            relay.wait_listening(address, writer.alive)
        env = child_env(settings, extra | ({GATE_ENV: str(gate)} if gate else {}))
        for i in range(1, count + 1):
            children.append(
                start_child(
                    f"consumer-{i}",
                    worker_command(live=live),
                    env,
                    folder / f"consumer-{i}.log",
                    cwd=home(),
                    stop_grace_s=WORKER_STOP_GRACE_S,
                )
            )
    except BaseException:
        for child in children:
            child.stop()
        raise
    return children


def worker_run(child: Child) -> RunMetrics | None:
    """The run a finished worker reported (``None`` if it printed none)."""
    try:
        lines = child.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(RUN_MARKER):
            raw = json.loads(line[len(RUN_MARKER) :])
            for key in ("started_at", "ended_at", "max_event_time"):
                if raw.get(key):
                    raw[key] = datetime.fromisoformat(raw[key])
            return RunMetrics(**raw)
    return None


def combined_run(runs: Sequence[RunMetrics], started_at: datetime, mode: str) -> RunMetrics:
    """The workers' runs as one: counts summed, the wall-clock time of the whole group."""
    ended_at = datetime.now(UTC)
    elapsed = (ended_at - started_at).total_seconds()
    processed = sum(r.messages_processed for r in runs)
    newest = [r.max_event_time for r in runs if r.max_event_time is not None]
    failed = [r.status for r in runs if r.status != "ok"]
    return RunMetrics(
        run_id=f"group-{uuid.uuid4().hex[:8]}",
        mode=f"{mode} x{len(runs)}",
        topic=runs[0].topic if runs else "",
        started_at=started_at.replace(tzinfo=None),
        ended_at=ended_at.replace(tzinfo=None),
        elapsed_s=elapsed,
        messages_processed=processed,
        rows_inserted=sum(r.rows_inserted for r in runs),
        duplicates=sum(r.duplicates for r in runs),
        errors=sum(r.errors for r in runs),
        max_event_time=max(newest) if newest else None,
        throughput_per_s=processed / elapsed if elapsed > 0 else 0.0,
        status=failed[0] if failed else "ok",
        lost_commits=sum(r.lost_commits for r in runs),
        conflicts=sum(r.conflicts for r in runs),
        # each worker measured the whole topic when it ended; the last word is the least
        behind=min((r.behind for r in runs), default=0),
    )


def consume_all(settings: Settings, *, progress: bool = True) -> RunMetrics:
    """Consume until caught up with ``settings.consumers`` workers; their runs combined.

    One worker is this process (what the consume notebook always did); more are
    child processes, and a failing one fails the call with its last log lines.
    """
    if settings.consumers == 1:
        from marketstream.consume import consume

        return consume(settings, progress=progress)
    started_at = datetime.now(UTC)
    children = start_workers(settings, settings.consumers, live=False)
    consumers = [c for c in children if c.name != WRITER_NAME]
    try:
        for child in consumers:
            child.proc.wait()
    finally:
        stop_workers(children)  # the writer process last: it waits for its workers
    failed = [c for c in children if c.proc.returncode not in (0, None)]
    if failed:
        child = failed[0]
        raise ConsumeError(
            f"{child.name} exited with {child.proc.returncode}: {child.log_tail()} "
            f"(log {child.log_path})"
        )
    runs = [run for run in map(worker_run, consumers) if run is not None]
    return combined_run(runs, started_at, "batch")


def stop_workers(children: Sequence[Child]) -> None:
    """SIGTERM the workers (each finishes its batch) and wait; then the writer process,
    which closes the file once they have hung up."""
    consumers = [c for c in children if c.name != WRITER_NAME]
    for child in consumers:
        if child.alive():
            child.proc.terminate()
    for child in [*consumers, *(c for c in children if c.name == WRITER_NAME)]:
        child.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """One worker: consume with the environment's settings until done (or SIGTERM)."""
    parser = argparse.ArgumentParser(prog="python -m marketstream.workers")
    parser.add_argument("--live", action="store_true", help="run until stopped (live mode)")
    args = parser.parse_args(argv)
    from marketstream.consume import consume

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    started = time.monotonic()
    gate_file = os.environ.get(GATE_ENV)
    gate = Path(gate_file).exists if gate_file else None
    try:
        settings = Settings.from_env()
        run = consume(settings, live=args.live, stop=stop, progress=False, gate=gate)
    except MarketstreamError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    values = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(run).items()}
    print(f"worker done in {time.monotonic() - started:.1f}s", flush=True)
    print(RUN_MARKER + json.dumps(values), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
