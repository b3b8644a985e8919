"""The bench's worker protocol, both sides: how a worker is started, told, heard and stopped.

Why each consumer runs in its own process: peak RSS is then the consumer's
own (``ru_maxrss`` of that process), the GIL is not shared with the bench,
and the numbers are what ``marketstream consume`` would see. A worker is
``python -m marketstream.bench --worker KIND``:

* its settings come through its environment (:func:`processes.child_env`, so
  ``Settings.from_env()`` there rebuilds the bench's exactly, and no secret is
  in ``ps``); its own few numbers (``n``, a port...) come as JSON in
  :data:`CONFIG_ENV`;
* it reports JSON lines on stdout: ``ready``, ``progress`` (~10 a second) and
  one ``result``;
* it stops when its stdin closes, so a dying bench never leaves one behind
  (and, on Linux, the parent-death signal covers a ``kill -9`` of the bench).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from marketstream.errors import BenchError
from marketstream.processes import child_env, parent_death_signal, terminate
from marketstream.settings import Settings, variable

#: The worker's own configuration (JSON), beside the settings' variables.
CONFIG_ENV = variable("MARKET_BENCH_WORKER")

#: The module whose ``--worker KIND`` runs a worker.
WORKER_MODULE = "marketstream.bench"

#: A worker's cleanup: this long between SIGTERM and SIGKILL.
KILL_GRACE_S = 10.0


# --------------------------------------------------------------------------- child side


class Emitter:
    """JSON lines to the parent; progress lines are rate-limited to ~10 a second."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: str, **data: Any) -> None:
        """One event line (``ready``, ``progress``, ``result``) with its data."""
        with self._lock:
            self._stream.write(json.dumps({"event": event, **data}, default=str) + "\n")
            self._stream.flush()

    def progress(self, done: int) -> None:
        """How many messages are done; dropped if the last line is under 0.1 s old."""
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            self("progress", done=done)


#: What a worker kind runs: (settings, its config, stop event, emitter) -> its result.
WorkerFn = Callable[[Settings, dict[str, Any], threading.Event, Emitter], dict[str, Any]]


def cpu_s() -> float:
    """CPU seconds (user + system) this process and its ended children have used, all
    threads: a child a consumer starts and waits for (a writer process of its own, as
    issue 20 measured one) counts, so per-tick CPU compares whole consumers."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def children_rss_peak_mb() -> float:
    """The largest peak RSS of this process's ended children (0: none)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rss_peak_mb() -> float:
    """This process's peak resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def worker_main(kind: str, kinds: Mapping[str, WorkerFn]) -> int:
    """Entry point of a worker process: settings and config from the environment,
    EOF on stdin = stop; the result (with CPU and RSS) is the last line."""
    emit = Emitter(sys.stdout)
    config = json.loads(os.environ.get(CONFIG_ENV) or "{}")
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the parent closes the pipe (or dies)
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    settings = Settings.from_env()
    import marketstream.consume  # noqa: F401  (base RSS: with pyarrow, duckdb, kafka loaded)

    base_rss = rss_peak_mb()
    cpu = cpu_s()
    result = kinds[kind](settings, config, stop, emit)
    result["cpu_s"] = cpu_s() - cpu
    emit(
        "result",
        **result,
        peak_rss_mb=rss_peak_mb(),
        base_rss_mb=base_rss,
        children_peak_rss_mb=children_rss_peak_mb(),
    )
    return 0


# --------------------------------------------------------------------------- parent side


class Worker:
    """A worker process and the thread that reads its JSON lines."""

    def __init__(
        self,
        kind: str,
        settings: Settings,
        config: Mapping[str, Any],
        log_dir: Path,
        on_progress: Callable[[int], None] | None = None,
    ):
        self.kind = kind
        self.stderr_path = log_dir / f"{kind}-{uuid.uuid4().hex[:6]}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, "--worker", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=child_env(settings, {CONFIG_ENV: json.dumps(dict(config))}),
            start_new_session=True,  # Ctrl-C reaches the bench, which then stops us in order
            preexec_fn=parent_death_signal(),
        )
        self.ready = threading.Event()
        self.result: dict[str, Any] | None = None
        self._on_progress = on_progress
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            event = message.pop("event", None)
            if event == "ready":
                self.ready.set()
            elif event == "progress" and self._on_progress is not None:
                self._on_progress(int(message["done"]))
            elif event == "result":
                self.result = message
        self.ready.set()  # EOF: never leave a waiter hanging on a dead worker

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the worker says it is ready; BenchError if it died or never did."""
        if not self.ready.wait(timeout_s) or self.proc.poll() not in (None, 0):
            self._fail()

    def stop(self) -> None:
        """Ask the worker to finish (it sees EOF on stdin)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def wait(self, timeout_s: float) -> dict[str, Any]:
        """The worker's result; raises BenchError (with its stderr) if it failed or hung."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(
                f"the {self.kind} worker did not finish in {timeout_s:.0f} s"
            ) from None
        self._reader.join(timeout=5)
        if self.result is None or self.proc.returncode != 0:
            self._fail()
        self.stop()
        assert self.result is not None
        return self.result

    def _fail(self) -> None:
        self.kill()
        tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-12:]
        detail = " | ".join(tail) or "no output"
        raise BenchError(f"the {self.kind} worker failed: {detail}")

    def kill(self) -> None:
        """Stop it now (cleanup): EOF, then :func:`processes.terminate` (TERM, then KILL)."""
        self.stop()
        terminate(self.proc, KILL_GRACE_S, name=f"bench {self.kind} worker")
        self._stderr.close()
