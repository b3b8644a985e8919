"""One benchmark run's resources: its own names, the workers and servers it starts, cleanup.

Why: the bench uses its own topics, consumer groups and DuckDB files (in a
temporary folder), so the user's data is never touched; its topics are
deleted at the end. Everything a run starts is recorded here, so all of it is
stopped at the end whichever phase failed. Processes go through
:mod:`marketstream.processes` (settings by :func:`child_env`, stopping by
TERM-then-KILL), like every other child of the kit.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from marketstream.bench.plan import Plan
from marketstream.bench.workers import Worker
from marketstream.errors import BenchError
from marketstream.processes import Child, child_env, start_child
from marketstream.settings import Settings

#: The line the API prints once it answers: "marketstream API on http://HOST:PORT (db ...)".
_API_READY = re.compile(r"marketstream API on http://\[?([^\s\],]+)\]?:(\d+)")

#: How long the API may take to answer after its start.
API_START_S = 90.0

#: A finite worker (a whole consume of N ticks) must finish within this.
WORKER_TIMEOUT_S = 3600.0


class BenchRun:
    """Everything one benchmark run starts, so that all of it is stopped at the end."""

    def __init__(self, settings: Settings, plan: Plan, work: Path, progress: bool):
        self.settings = settings
        self.plan = plan
        self.work = work
        self.progress = progress
        self.run_id = uuid.uuid4().hex[:8]
        self.workers: list[Worker] = []
        self.servers: list[Child] = []
        self.topics: list[Settings] = []

    def settings_for(self, name: str, **overrides: Any) -> Settings:
        """Settings for one phase: the bench's own topic, group, DuckDB file and log."""
        values: dict[str, Any] = {
            "topic": f"marketstream-bench-{self.run_id}-{name}",
            "consumer_group": f"marketstream-bench-{self.run_id}-{name}",
            "db_path": self.work / f"{name}.duckdb",
            "log_path": self.work / "bench.log",
            **overrides,
        }
        return self.settings.with_(**values)

    def own_topic(self, settings: Settings) -> Settings:
        """Create the settings' topic and delete it at cleanup."""
        from marketstream.produce import ensure_topic

        self.topics.append(settings)
        ensure_topic(settings)
        return settings

    # ----------------------------------------------------------------------- workers

    def worker(
        self,
        kind: str,
        settings: Settings,
        desc: str | None = None,
        total: int | None = None,
        **cfg: Any,
    ) -> tuple[Worker, Any]:
        """Start a worker with a progress bar (shown only with ``desc``); (worker, bar)."""
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total, desc=desc or kind, unit="tick", disable=not (self.progress and desc)
        )

        def on_progress(done: int) -> None:
            bar.update(done - bar.n)

        worker = Worker(kind, settings, cfg, self.work, on_progress)
        self.workers.append(worker)
        return worker, bar

    def run_worker(
        self, kind: str, settings: Settings, desc: str, total: int, **cfg: Any
    ) -> dict[str, Any]:
        """Run a finite worker to its end, with a progress bar."""
        worker, bar = self.worker(kind, settings, desc, total, **cfg)
        try:
            return worker.wait(timeout_s=WORKER_TIMEOUT_S)
        finally:
            bar.close()

    # ----------------------------------------------------------------------- servers

    def start_api(self, settings: Settings) -> tuple[str, int]:
        """``python -m marketstream_api.serve`` on the settings' DuckDB file, on a free
        port of 127.0.0.1; (host, port) once it answers."""
        api = settings.with_(api_host="127.0.0.1", api_port=0)  # 0: the server picks a port
        child = start_child(
            "api",
            [sys.executable, "-m", "marketstream_api.serve"],
            child_env(api),
            self.work / f"api-{len(self.servers)}.log",
        )
        self.servers.append(child)
        deadline = time.monotonic() + API_START_S
        while time.monotonic() < deadline:
            text = child.log_path.read_text(encoding="utf-8", errors="replace")
            found = _API_READY.search(text)
            if found:
                return found.group(1), int(found.group(2))
            if not child.alive():
                break
            time.sleep(0.05)
        raise BenchError(f"the API did not start: {child.log_tail(12)[:500] or 'no output'}")

    def stop_servers(self) -> None:
        """Stop every server (and its worker processes) this run started."""
        for server in self.servers:
            server.stop()

    # ----------------------------------------------------------------------- time, cleanup

    def sleep(self, seconds: float, desc: str) -> None:
        """Wait ``seconds`` behind a progress bar (one step a second)."""
        from tqdm.auto import tqdm

        steps = max(1, int(seconds))
        for _ in tqdm(
            range(steps),
            desc=desc,
            unit="",
            disable=not self.progress,
            bar_format="{l_bar}{bar}| {elapsed}",
        ):
            time.sleep(seconds / steps)

    def cleanup(self) -> None:
        """Stop every worker and server, then delete the run's topics (best effort)."""
        from marketstream.produce import delete_topic

        for worker in self.workers:
            worker.kill()
        self.stop_servers()
        for settings in self.topics:
            with contextlib.suppress(Exception):  # best effort: the broker may be gone
                delete_topic(settings)
