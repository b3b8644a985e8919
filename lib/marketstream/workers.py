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
adds them up (:func:`consume_all`) and shows each worker's share
(:func:`describe_shares`).

Why a batch run's workers start at a gate (:func:`open_gate_when_settled`): started
one after the other, the first worker up took every partition and read the demo's
150 ticks alone before the second had joined; the others found nothing left, and
``make demo`` with three workers showed no parallelism at all. Each worker now
joins the group with its partitions paused and fetches nothing until the group
has handed every partition out (or :data:`SETTLE_TIMEOUT_S` has passed: a worker
that cannot join must not hold the run up).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
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


#: How long a batch run's workers wait at their start gate for the group to settle.
SETTLE_TIMEOUT_S = 30.0


def holdings(log_path: Path, group: str, since: datetime | None = None) -> dict[str, list[int]]:
    """Each consumer run of ``group``: its partitions as its last ``partitions_assigned``
    in the JSON log said (the consumer's :class:`~marketstream.consume.PartitionLog`);
    with ``since``, only what was logged from then on (earlier runs of the same group
    stay in the log)."""
    from marketstream.logs import read_log

    after = None if since is None else since.astimezone(UTC).isoformat()
    held: dict[str, list[int]] = {}
    for entry in read_log(log_path):
        if entry.get("event") != "partitions_assigned" or entry.get("group") != group:
            continue
        if after is None or str(entry.get("time", "")) >= after:
            held[entry["run_id"]] = entry["partitions"]
    return held


def settled(
    log_path: Path, group: str, workers: int, partitions: int, since: datetime | None = None
) -> bool:
    """True once ``workers`` runs of ``group`` hold every one of ``partitions`` exactly once
    between them: the group's rebalances are over (as long as no one joins or leaves)."""
    held = holdings(log_path, group, since)
    taken = sorted(n for numbers in held.values() for n in numbers)
    return len(held) == workers and taken == list(range(partitions))


def topic_partitions(settings: Settings) -> int:
    """The topic's partitions (the setting's count if the topic cannot be asked)."""
    from marketstream.produce import partition_counts

    try:
        counts = partition_counts(settings)
    except Exception:  # the workers will name a broker problem themselves
        counts = None
    return len(counts) if counts else settings.partitions


def open_gate_when_settled(
    settings: Settings,
    consumers: Sequence[Child],
    gate: Path,
    since: datetime,
    timeout_s: float = SETTLE_TIMEOUT_S,
) -> bool:
    """Open ``gate`` once the workers hold every partition between them, or a worker has
    ended, or ``timeout_s`` has passed; True if the group had settled."""
    partitions = topic_partitions(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and all(c.alive() for c in consumers):
            if settled(
                settings.log_path, settings.consumer_group, len(consumers), partitions, since
            ):
                return True
            time.sleep(0.1)
        return False
    finally:
        gate.touch()


@dataclass(frozen=True)
class WorkerShare:
    """What one worker of a group run did: its partitions, messages and rate."""

    name: str
    partitions: tuple[int, ...]
    messages: int
    rate_per_s: float

    def describe(self) -> str:
        held = ", ".join(map(str, self.partitions))
        return (
            f"{self.name}: partitions [{held}], {self.messages:,} messages, "
            f"{self.rate_per_s:,.0f} msg/s"
        )


def shares(
    runs: Iterable[tuple[str, str, int, float]], log_path: Path, group: str
) -> list[WorkerShare]:
    """Each worker's share from its runs ``(name, run_id, messages, rate)`` and the log's
    record of the partitions each run held."""
    held = holdings(log_path, group)
    return [
        WorkerShare(name, tuple(held.get(run_id, ())), messages, rate)
        for name, run_id, messages, rate in runs
    ]


def describe_shares(found: Sequence[WorkerShare], indent: str = "  ") -> list[str]:
    """One line per worker (none for a run of one consumer: its share is the whole)."""
    return [indent + share.describe() for share in found] if len(found) > 1 else []


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


@dataclass(frozen=True)
class GroupRun:
    """A batch run of several workers: their runs combined, and each one's share."""

    run: RunMetrics
    shares: list[WorkerShare]


def consume_all(settings: Settings, *, progress: bool = True) -> RunMetrics:
    """Consume until caught up with ``settings.consumers`` workers; their runs combined.

    One worker is this process (what the consume notebook always did); more are
    child processes, and a failing one fails the call with its last log lines.
    Each worker's share is logged (``worker_share``) and printed with ``progress``;
    :func:`consume_group` returns it.
    """
    if settings.consumers == 1:
        from marketstream.consume import consume

        return consume(settings, progress=progress)
    group = consume_group(settings)
    if progress:
        for line in describe_shares(group.shares, indent=""):
            print(line, flush=True)
    return group.run


def consume_group(settings: Settings) -> GroupRun:
    """Consume until caught up with ``settings.consumers`` worker processes, started at a
    gate (:func:`open_gate_when_settled`); the runs combined and each worker's share."""
    from marketstream.logs import get_logger

    since = datetime.now(UTC)
    folder = Path(tempfile.mkdtemp(prefix="marketstream-gate-"))
    gate = folder / "open"
    try:
        children = start_workers(settings, settings.consumers, live=False, gate=gate)
        consumers = [c for c in children if c.name != WRITER_NAME]
        try:
            open_gate_when_settled(settings, consumers, gate, since)
            started_at = datetime.now(UTC)  # the workers' runs start at the gate too
            for child in consumers:
                child.proc.wait()
        finally:
            stop_workers(children)  # the writer process last: it waits for its workers
    finally:
        gate.unlink(missing_ok=True)
        folder.rmdir()
    failed = [c for c in children if c.proc.returncode not in (0, None)]
    if failed:
        child = failed[0]
        raise ConsumeError(
            f"{child.name} exited with {child.proc.returncode}: {child.log_tail()} "
            f"(log {child.log_path})"
        )
    reported = [(child.name, worker_run(child)) for child in consumers]
    runs = [run for _, run in reported if run is not None]
    found = shares(
        [(name, r.run_id, r.messages_processed, r.throughput_per_s) for name, r in reported if r],
        settings.log_path,
        settings.consumer_group,
    )
    log = get_logger(settings.log_path)
    for share in found:
        log.info(
            "worker_share",
            extra={
                "group": settings.consumer_group,
                "worker": share.name,
                "partitions": list(share.partitions),
                "messages": share.messages,
                "rate_per_s": round(share.rate_per_s, 1),
            },
        )
    return GroupRun(combined_run(runs, started_at, "batch"), found)


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
