"""``marketstream live`` as the real CLI in a subprocess, always cleaned up.

A subprocess because DuckDB forbids one process from holding a file read-write
(the live consumer) and read-only (a test's reads) at once, and because it is
what a user runs. Used by tests/integration/test_live.py and the browser test.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import IO

import psutil

from marketstream import store
from marketstream.processes import child_env
from marketstream.settings import Settings
from marketstream.workers import settled
from support.processes import GRACE_S, alive, kill_all
from support.waiting import wait_until

#: How long a group of worker processes may take to start and settle, on a loaded machine,
#: with a worker whose Kafka client stalled rejoining first (consume.STALLED_MARGIN_S: a
#: session timeout, 45 s by default, and 15 s).
GROUP_SETTLES_S = 240.0


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

    def gone(self) -> str | None:
        """For :func:`support.waiting.wait_until`'s ``died``: why it cannot get there."""
        if self.proc.poll() is None:
            return None
        return f"marketstream live exited early ({self.proc.returncode}):\n{self.output()}"


def _pump(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line.rstrip())


@contextmanager
def live_cli(settings: Settings, *args: str) -> Iterator[LiveProcess]:
    """Run ``marketstream live ARGS`` with ``settings`` in its environment; always cleaned up.

    Leaving the block without having stopped it sends SIGINT (Ctrl-C), then kills
    whatever is still there, so a failing test never leaves a server behind.
    """
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "marketstream.cli", "live", *args],
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
        _, still = psutil.wait_procs(alive(family), timeout=GRACE_S)
        still = alive(still)
        for p in still:
            with suppress(psutil.NoSuchProcess):
                live.leftovers.append(" ".join(p.cmdline()))
        kill_all(still)
        reader.join(timeout=5)
        proc.stdout.close()


def wait_for_workers_to_store(live: LiveProcess, workers: int, partitions: int) -> None:
    """Wait until ``workers`` consumer runs hold all ``partitions`` between them, each
    some, and every partition has had ticks stored since: then each worker has stored.

    A fixed duration cannot promise that: under load the second worker's join and
    the rebalance it starts took most of a 15 s run in CI, and it stored nothing.
    """
    at = store.locate(live.settings)
    log, group = live.settings.log_path, live.settings.consumer_group

    def counts_once_settled() -> dict[int, int] | None:
        if not settled(log, group, workers, partitions):
            return None
        return {p["partition"]: p["ticks"] for p in store.stats(at)["partitions"]}

    before = wait_until(
        counts_once_settled,
        GROUP_SETTLES_S,
        f"{workers} workers to share {partitions} partitions",
        interval_s=0.5,
        died=live.gone,
        context=live.output,
    )

    def every_partition_grew() -> bool:
        now = {p["partition"]: p["ticks"] for p in store.stats(at)["partitions"]}
        return all(now.get(n, 0) > before.get(n, 0) for n in range(partitions))

    wait_until(
        every_partition_grew,
        GROUP_SETTLES_S,
        "ticks stored on every partition after that",
        interval_s=0.5,
        died=live.gone,
        context=live.output,
    )


def worker_logs(settings: Settings) -> str:
    """The workers' and the writer's output (and the JSON log), for a failing assertion."""
    folder = settings.log_path.parent
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(folder.glob("*.log"))
    )
