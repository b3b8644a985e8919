"""What the other processes of a scaling row cost: the broker's and the catalog's CPU, and
how many commits the lake's catalog takes per second with N writers at once.

The scaling model (:mod:`marketstream.bench.model`) needs, besides the workers' own CPU
(``wait4`` on each, in :mod:`marketstream.bench.scaling`), what serving them costs the
rest of the machine:

* **the broker's CPU** while it serves a row: the Java process that listens on the
  bootstrap port, its CPU time read before the gate opens and after the last worker
  exits (one process, all its threads);
* **the catalog's CPU** (the lake): the postmaster and every backend; a backend that
  exits is reaped by the postmaster, so its time moves into the postmaster's
  ``children_*`` and is counted once either way;
* **the catalog's commit rate with N writers** (:func:`commit_rate`): N processes,
  each committing one-row transactions to one lake as fast as it can for a few
  seconds. DuckLake serialises commits on the catalog (each makes a new snapshot), so
  this is the ceiling of commits, and so of batches, that N lake workers can share.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

#: Seconds each writer of :func:`commit_rate` commits for (after one warm-up commit).
PROBE_S = 3.0


def listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` on this machine (None if none is seen, or the
    system does not say: another user's process, or a broker on another host)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live children (0 if gone)."""
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        children = proc.children(recursive=True)
    except psutil.Error:
        return 0.0
    for child in children:
        try:
            c = child.cpu_times()
        except psutil.Error:  # ended meanwhile: its time is now in the parent's children_*
            continue
        total += c.user + c.system
    return total


@dataclass
class CpuMeter:
    """CPU seconds named processes (and their children) spend between start and stop."""

    pids: dict[str, int]
    _start: dict[str, float] | None = None

    def start(self) -> None:
        self._start = {name: tree_cpu_s(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        assert self._start is not None, "CpuMeter.stop() before start()"
        return {name: tree_cpu_s(pid) - self._start[name] for name, pid in self.pids.items()}


def _commit_loop(catalog: str, data_path: str, seconds: float, ready, go, out) -> None:
    """One writer of :func:`commit_rate` (a process of its own): commits until time is up."""
    from marketstream.settings import Settings
    from marketstream.store import lake as lake_store
    from marketstream.store import locate

    at = locate(
        Settings().with_(store="ducklake", ducklake_catalog=catalog, ducklake_data=data_path)
    )
    con = lake_store.connect(at)
    con.execute("SET enable_progress_bar = false")
    con.execute("CREATE TABLE IF NOT EXISTS commit_probe (writer INTEGER, n INTEGER)")
    ready.set()
    go.wait()
    done = conflicts = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            con.execute("BEGIN")
            con.execute("INSERT INTO commit_probe VALUES (0, ?)", [done])
            con.execute("COMMIT")
            done += 1
        except Exception:  # a conflict with another writer's commit: counted, retried
            conflicts += 1
            con.execute("ROLLBACK")
    con.close()
    out.put((done, conflicts))


def commit_rate(
    catalog: str, data_path: str, writers: int, seconds: float = PROBE_S
) -> dict[str, float]:
    """Commits per second to one lake with ``writers`` processes committing at once.

    Returns ``{"writers", "commits_per_s", "per_writer", "conflicts"}``.
    """
    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event() for _ in range(writers)]
    go = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_commit_loop, args=(catalog, data_path, seconds, r, go, out))
        for r in ready
    ]
    for p in procs:
        p.start()
    try:
        for r, p in zip(ready, procs, strict=True):
            while not r.wait(0.5):
                if not p.is_alive():
                    raise RuntimeError(f"commit probe writer exited ({p.exitcode})")
        go.set()
        results = [out.get(timeout=seconds + 120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    commits = sum(done for done, _ in results)
    return {
        "writers": writers,
        "commits_per_s": commits / seconds,
        "per_writer": commits / seconds / writers,
        "conflicts": sum(c for _, c in results),
    }


def commit_rates(
    catalog: str, data_path: str, counts: Sequence[int] = (1, 2, 4)
) -> list[dict[str, float]]:
    """:func:`commit_rate` for each writer count."""
    return [commit_rate(catalog, data_path, n) for n in counts]
