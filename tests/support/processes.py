"""Child processes of a test: which are still alive, ending them, and none left over."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import suppress

import psutil

from marketstream.processes import child_env
from marketstream.settings import Settings

#: How long processes get to end by themselves before a test calls them left over. It is
#: only reached when something is wrong: ``psutil.wait_procs`` returns once they are gone.
GRACE_S = 30.0

#: KAFKA_SESSION_TIMEOUT_S of the consumers the crash and scale-out tests kill or stall:
#: a default broker's minimum, so a dead member's partitions move in 6 s (Kafka's 45 s
#: default would make each kill wait that long).
QUICK_SESSION_S = 6.0


def cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``marketstream ARGS`` with ``settings`` in its environment, as a user exports them;
    output captured; ``check``: a non-zero exit fails."""
    return subprocess.run(
        [sys.executable, "-m", "marketstream.cli", *args],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (a zombie has ended, it only waits to be reaped)."""
    out = []
    for p in procs:
        with suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILL whatever of ``procs`` is still running."""
    for p in alive(procs):
        with suppress(psutil.NoSuchProcess):
            p.kill()


def no_stray_children() -> Iterator[None]:
    """Body of conftest's ``no_stray_children`` fixture: every child process of pytest
    that appeared during the test must be gone (within :data:`GRACE_S`) at its end;
    stragglers are killed, and the test fails naming them."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    new = [p for p in me.children(recursive=True) if p.pid not in before]
    _, still = psutil.wait_procs(alive(new), timeout=GRACE_S)
    still = alive(still)
    names = []
    for p in still:
        with suppress(psutil.NoSuchProcess):
            names.append(p.cmdline())
    kill_all(still)
    assert not still, f"stray processes: {names}"


class CommandLines:
    """Every command line of this process's descendants, sampled while a block runs
    (the kernels papermill starts, the broker JVMs, anything else the kit spawns)."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s = every_s
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> None:
        for child in psutil.Process().children(recursive=True):
            try:
                self.seen.add(" ".join(child.cmdline()))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
