"""Consumer workers joining and leaving one group, watched: how the scale-out notebook shows
Kafka's group protocol moving partitions between them.

:class:`WorkerGroup` starts live worker processes (``python -m marketstream.workers
--live``, the ones ``marketstream live --consumers N`` runs) one at a time, so a worker can
be added to a running group or killed with SIGKILL. On the DuckDB file they hand their
batches to one writer process (:mod:`marketstream.store.relay`), started first.

Each worker writes its own JSON log, so what it holds is its own last
``partitions_assigned`` / ``partitions_revoked`` line
(:class:`~marketstream.consume.PartitionLog`); :meth:`WorkerGroup.wait_settled` waits
until the live workers hold every partition exactly once between them, which after a
SIGKILL takes the group's session timeout (``KAFKA_SESSION_TIMEOUT_S``: the broker waits
that long for the dead member's heartbeat before it hands its partitions on).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from marketstream.processes import Child, child_env, start_child
from marketstream.settings import Settings, home

#: How long a change of the group may take to settle (a SIGKILLed member: the session
#: timeout, then a rebalance; on a loaded 2-core machine, more).
SETTLE_TIMEOUT_S = 180.0


def held(log_path: Path) -> list[int]:
    """The partitions a worker holds now, by its own JSON log: those of its last
    ``partitions_assigned``, none after a ``partitions_revoked`` or before any."""
    from marketstream.logs import read_log

    current: list[int] = []
    if not log_path.exists():
        return current
    for entry in read_log(log_path):
        if entry.get("event") == "partitions_assigned":
            current = list(entry["partitions"])
        elif entry.get("event") == "partitions_revoked":
            current = []
    return current


def covers_once(holdings: list[list[int]], partitions: int) -> bool:
    """True if ``holdings`` together hold each of ``partitions`` partitions exactly once."""
    return sorted(p for h in holdings for p in h) == list(range(partitions))


@dataclass
class Worker:
    """One worker process: its number (in order of start), process and JSON log."""

    number: int
    child: Child
    log_path: Path
    killed: bool = False

    @property
    def name(self) -> str:
        return f"worker {self.number}"

    def alive(self) -> bool:
        return self.child.alive()


@dataclass
class WorkerGroup:
    """Live workers in ``settings.consumer_group`` (see the module docstring)."""

    settings: Settings
    folder: Path
    workers: list[Worker] = field(default_factory=list)
    writer: Child | None = None
    _extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from marketstream.store import init_store, locate, relay

        self.folder.mkdir(parents=True, exist_ok=True)
        init_store(locate(self.settings))
        # each worker must know it has company: one alone takes every partition itself
        self.settings = self.settings.with_(consumers=max(2, self.settings.consumers))
        if self.settings.store == "duckdb":
            address, key = relay.new_address(self.settings.db_path)
            self._extra = {relay.ADDRESS_ENV: address, relay.KEY_ENV: key}
            self.writer = start_child(
                "store-writer",
                relay.relay_command(hold=False),
                child_env(self.settings, self._extra),
                self.folder / "store-writer.log",
                cwd=home(),
            )
            relay.wait_listening(address, self.writer.alive)

    def add(self) -> Worker:
        """Start one more worker (it joins the group; the group rebalances)."""
        from marketstream.workers import worker_command

        number = len(self.workers) + 1
        log_path = self.folder / f"worker-{number}.jsonl"
        env = child_env(self.settings.with_(log_path=log_path), self._extra)
        child = start_child(
            f"worker-{number}",
            worker_command(live=True),
            env,
            self.folder / f"worker-{number}.out",
            cwd=home(),
        )
        worker = Worker(number, child, log_path)
        self.workers.append(worker)
        return worker

    def kill(self, number: int) -> None:
        """SIGKILL worker ``number``: it leaves without a word, as a crashed machine would."""
        worker = self.workers[number - 1]
        os.kill(worker.child.proc.pid, signal.SIGKILL)
        worker.child.proc.wait()
        worker.child.close_log()
        worker.killed = True

    def live(self) -> list[Worker]:
        return [w for w in self.workers if not w.killed]

    def assignment(self) -> pd.DataFrame:
        """Each worker started so far: alive or killed, and the partitions it holds."""
        return pd.DataFrame(
            [
                {
                    "worker": w.name,
                    "state": "killed" if w.killed else ("running" if w.alive() else "exited"),
                    "partitions": [] if w.killed else held(w.log_path),
                }
                for w in self.workers
            ],
            columns=["worker", "state", "partitions"],
        ).set_index("worker")

    def settled(self, partitions: int) -> bool:
        """The live workers hold every partition once, and each holds some (with no more
        workers than partitions: the group has finished handing them out)."""
        live = self.live()
        holdings = [held(w.log_path) for w in live]
        enough = all(holdings) if len(live) <= partitions else True
        return enough and covers_once(holdings, partitions)

    def wait_settled(self, partitions: int, timeout_s: float = SETTLE_TIMEOUT_S) -> float:
        """Wait until :meth:`settled`; the seconds it took. A worker that exits meanwhile,
        or a timeout, raises RuntimeError with its log."""
        started = time.monotonic()
        while not self.settled(partitions):
            for w in self.live():
                if not w.alive():
                    raise RuntimeError(f"{w.name} exited: {w.child.log_tail()}")
            if time.monotonic() - started > timeout_s:
                tails = "\n".join(f"{w.name}: {w.child.log_tail()}" for w in self.workers)
                raise RuntimeError(
                    f"the group did not settle in {timeout_s:.0f}s:\n{self.assignment()}\n"
                    f"{tails}\nstore writer: {self.writer.log_tail() if self.writer else '-'}"
                )
            time.sleep(0.2)
        return time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM the live workers (each finishes its batch), then the writer process."""
        for w in self.live():
            if w.alive():
                w.child.proc.terminate()
        for w in self.live():
            w.child.stop()
        if self.writer is not None:
            self.writer.stop()


def wait_caught_up(settings: Settings, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Wait until the store has every message of the topic (lag 0 on every partition)."""
    from marketstream import store
    from marketstream.lag import measure

    at = store.locate(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        report = measure(settings, at)
        if report.broker_error is None and report.total == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the store did not catch up in {timeout_s:.0f}s: lag {report.total}"
            )
        time.sleep(0.2)


def shares(settings: Settings, group: WorkerGroup, before: dict[int, int]) -> pd.DataFrame:
    """Each live worker's share of the messages that arrived since ``before`` (each
    partition's end offset then): the messages of the partitions it holds."""
    from marketstream.lag import end_offsets

    ends = {p: o for (_t, p), o in end_offsets(settings).items()}
    rows = []
    for w in group.live():
        mine = held(w.log_path)
        rows.append(
            {
                "worker": w.name,
                "partitions": mine,
                "messages": sum(ends.get(p, 0) - before.get(p, 0) for p in mine),
            }
        )
    frame = pd.DataFrame(rows, columns=["worker", "partitions", "messages"]).set_index("worker")
    total = frame["messages"].sum()
    frame["share"] = (frame["messages"] / total).map("{:.0%}".format) if total else "-"
    return frame


def summary(group: WorkerGroup, partitions: int) -> str:
    """One line that is the same on every run: how many workers hold how many partitions
    each (which worker holds which depends on the group's member ids)."""
    live = group.live()
    counts = sorted((len(held(w.log_path)) for w in live), reverse=True)
    once = (
        "each exactly once"
        if covers_once([held(w.log_path) for w in live], partitions)
        else "NOT each once"
    )
    return (
        f"{len(live)} live workers hold the {partitions} partitions, {once}: "
        f"{counts} partitions per worker"
    )


def send_ticks(settings: Settings, phase: int) -> dict[int, int]:
    """Produce ``ticks_per_symbol`` new ticks per symbol (phase ``phase``'s: later event
    times than the phase before, so each phase's ticks are new to the store); each
    partition's end offset before them (for :func:`shares`)."""
    from datetime import timedelta

    from marketstream import progress
    from marketstream.lag import end_offsets
    from marketstream.ticks import DEFAULT_START, generate_ticks, write_csv

    before = {p: o for (_t, p), o in end_offsets(settings).items()}  # {}: no topic yet
    start = DEFAULT_START + timedelta(seconds=phase * settings.ticks_per_symbol)
    ticks = generate_ticks(
        settings.symbols, settings.ticks_per_symbol, seed=settings.seed + phase, start=start
    )
    path = settings.csv_path.with_name(f"{settings.csv_path.stem}-{phase}.csv")
    write_csv(ticks, path)
    progress.produce_csv(path, settings)
    return before
