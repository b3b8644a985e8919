"""Soak run: N ticks through a real broker into DuckDB while the consumer's memory is watched.

``marketstream soak -n 1000000`` produces N ticks (a streamed random
walk, never all in memory) to a topic of its own, then runs the real consumer
(``marketstream consume``) as a child process over the whole backlog and
samples its resident memory (RSS) a few times a second against its progress
(the consumer group's committed offsets). It prints the RSS curve at 10%, 25%,
50%, 75% and 100% of the ticks and the peak, which the kernel reports exactly
when the child exits.

What bounds the consumer's memory is the batch (``MARKET_BATCH_SIZE``, at
most that many records per poll and per DuckDB transaction) and kafka-python's
fetch limits (``fetch_max_bytes``, ``max_partition_fetch_bytes``), not the
number of ticks: a flat curve from 10% to 100% is the evidence.

The run uses its own topic, consumer group and DuckDB file (under
``<output dir>/soak/``), so it never touches the demo's data, and deletes the
topic afterwards. A broker is started if none answers, and stopped again
(:func:`marketstream.broker.owned_broker`). The consumer is a child like any
other (:mod:`marketstream.processes`): its settings reach it through its
environment, its output goes to a file beside the log, and it is stopped with
SIGTERM, then SIGKILL, if the run fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil

from marketstream.clients import DEFAULT_CLIENTS
from marketstream.errors import SoakError
from marketstream.processes import child_env, start_child
from marketstream.settings import Settings
from marketstream.ticks import DEFAULT_START, RandomWalk, Tick

__all__ = ["CHECKPOINTS", "Sample", "SoakError", "SoakReport", "run_soak", "stream_ticks"]

#: Points of the run (share of all ticks committed) at which the RSS is reported.
CHECKPOINTS = (10, 25, 50, 75, 100)


@dataclass
class Sample:
    """One observation of the consumer: seconds since start, ticks committed, RSS."""

    t_s: float
    committed: int
    rss_bytes: int


@dataclass
class SoakReport:
    """What a soak run measured."""

    n: int
    batch_size: int
    produce_s: float
    consume_s: float
    rows: int
    exit_code: int
    peak_rss_bytes: int
    samples: list[Sample] = field(default_factory=list)

    def rss_at(self, percent: int) -> int | None:
        """RSS of the first sample at or past ``percent`` of the ticks; for 100, of the
        last sample taken before the consumer exited (it exits once caught up)."""
        if percent >= 100:
            return self.samples[-1].rss_bytes if self.samples else None
        target = self.n * percent / 100
        for sample in self.samples:
            if sample.committed >= target:
                return sample.rss_bytes
        return None

    @property
    def curve(self) -> dict[int, int | None]:
        return {p: self.rss_at(p) for p in CHECKPOINTS}

    @property
    def growth(self) -> float | None:
        """RSS at 100% over RSS at 10%: about 1 when memory does not grow with ticks."""
        first, last = self.rss_at(10), self.rss_at(100)
        return last / first if first and last else None

    def describe(self) -> str:
        """A few lines for the terminal."""
        mb = 1024 * 1024
        rate = self.n / self.consume_s if self.consume_s > 0 else 0.0
        lines = [
            f"soak: {self.n:,} ticks, batch size {self.batch_size:,}",
            f"  produce : {self.produce_s:.1f} s ({self.n / max(self.produce_s, 1e-9):,.0f}/s)",
            f"  consume : {self.consume_s:.1f} s ({rate:,.0f}/s), exit code {self.exit_code}, "
            f"{self.rows:,} rows in DuckDB",
            "  consumer RSS by progress:",
        ]
        for percent, rss in self.curve.items():
            shown = f"{rss / mb:7.1f} MB" if rss is not None else "      (not sampled)"
            lines.append(f"    {percent:3d}% {shown}")
        lines.append(f"  peak RSS: {self.peak_rss_bytes / mb:.1f} MB")
        if self.growth is not None:
            lines.append(f"  growth 10% -> 100%: x{self.growth:.2f}")
        return "\n".join(lines)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {**asdict(self), "curve": self.curve, "growth": self.growth},
            option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
        )


def stream_ticks(symbols: Sequence[str], n: int, *, seed: int = 42) -> Iterator[Tick]:
    """n ticks of a continuous random walk, one second apart per symbol, generated lazily."""
    walk = RandomWalk(symbols, seed=seed)
    for i in range(n):
        symbol = symbols[i % len(symbols)]
        yield walk.step(symbol, DEFAULT_START + timedelta(seconds=i // len(symbols)))


def soak_settings(settings: Settings, run_id: str | None = None) -> Settings:
    """Settings with a topic, group, DuckDB file and log of the soak's own."""
    run_id = run_id or uuid.uuid4().hex[:8]
    folder = settings.output_dir / "soak"
    return settings.with_(
        topic=f"{settings.topic}-soak-{run_id}",
        consumer_group=f"{settings.consumer_group}-soak-{run_id}",
        db_path=folder / f"soak-{run_id}.duckdb",
        log_path=folder / f"soak-{run_id}.log",
    )


def consumer_output(settings: Settings) -> Path:
    """Where the consumer's stdout and stderr go: beside its JSON log."""
    return settings.log_path.with_name(f"{settings.log_path.stem}-consumer.out")


def _committed(admin: Any, settings: Settings) -> int:
    """Ticks the consumer group has committed on the topic (0 before its first commit)."""
    from kafka.errors import KafkaError

    group = settings.consumer_group
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except KafkaError:
        return 0
    return sum(m.offset for tp, m in offsets.items() if tp.topic == settings.topic and m.offset > 0)


def _reap(proc: subprocess.Popen[bytes]) -> tuple[int, int] | None:
    """Non-blocking: (exit code, peak RSS in bytes) once the child has exited, else None.

    ``os.wait4`` hands back the child's resource usage, whose ``ru_maxrss`` is the
    kernel's own high-water mark of its RSS (KiB on Linux, bytes on macOS).
    """
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    scale = 1 if sys.platform == "darwin" else 1024
    return code, usage.ru_maxrss * scale


def _rss(process: psutil.Process) -> int | None:
    """The process's RSS, or None once it has exited: a process that exits between
    ``_reap`` and this call is a zombie, whose RSS reads as 0, not as an error."""
    with contextlib.suppress(psutil.Error):
        return process.memory_info().rss or None
    return None


def consume_and_sample(
    settings: Settings,
    n: int,
    *,
    interval_s: float = 0.2,
    timeout_s: float = 3600,
    progress: bool = True,
) -> tuple[int, float, int, list[Sample]]:
    """Run ``marketstream consume`` over the topic, sampling its RSS against committed
    offsets until it exits; return (exit code, seconds, peak RSS, samples)."""
    from tqdm.auto import tqdm

    admin = DEFAULT_CLIENTS.admin(settings)
    cmd = [sys.executable, "-m", "marketstream.cli", "consume", "-q"]
    started = time.monotonic()
    child = start_child("soak consumer", cmd, child_env(settings), consumer_output(settings))
    proc = child.proc
    process = psutil.Process(proc.pid)
    samples: list[Sample] = []
    bar = tqdm(total=n, unit="tick", desc="consume", disable=not progress)
    try:
        while True:
            done = _reap(proc)
            if done is not None:
                code, peak = done
                break
            rss = _rss(process)
            committed = _committed(admin, settings)
            if rss is not None:
                samples.append(Sample(round(time.monotonic() - started, 2), committed, rss))
            bar.update(committed - bar.n)
            if time.monotonic() - started > timeout_s:
                raise SoakError(f"the consumer did not finish {n:,} ticks in {timeout_s:g} s")
            time.sleep(interval_s)
        elapsed = time.monotonic() - started
        bar.update(_committed(admin, settings) - bar.n)
    finally:
        bar.close()
        admin.close()
        child.stop()  # reaped already unless the run failed: then SIGTERM, then SIGKILL
    if code != 0:
        raise SoakError(f"the consumer exited with code {code}: {child.log_tail(8)[-500:]}")
    return code, elapsed, peak, samples


def run_soak(
    settings: Settings,
    n: int,
    *,
    own_names: bool = True,
    keep: bool = False,
    progress: bool = True,
    interval_s: float = 0.2,
) -> SoakReport:
    """Produce n ticks, consume them in a child process while sampling its memory.

    ``own_names`` gives the run a topic, group and DuckDB file of its own (see
    :func:`soak_settings`); ``keep`` leaves the topic and the DuckDB file behind.
    """
    from marketstream import broker, store
    from marketstream.produce import delete_topic, produce_ticks

    if n < 1:
        raise SoakError("--n must be at least 1")
    if own_names:
        settings = soak_settings(settings)
    store.remove_db(settings.db_path)
    settings.db_path.parent.mkdir(parents=True, exist_ok=True)

    with broker.owned_broker(settings, say=print if progress else None):
        t0 = time.monotonic()
        summary = produce_ticks(
            stream_ticks(settings.symbols, n, seed=settings.seed),
            settings,
            total=n,
            progress=progress,
        )
        produce_s = time.monotonic() - t0
        if summary.sent != n:
            raise SoakError(f"only {summary.sent:,} of {n:,} ticks were acknowledged")
        code, consume_s, peak, samples = consume_and_sample(
            settings, n, progress=progress, interval_s=interval_s
        )
        rows = store.tick_count(settings.db_path)
        if not keep:
            delete_topic(settings)
    report = SoakReport(
        n=n,
        batch_size=settings.batch_size,
        produce_s=produce_s,
        consume_s=consume_s,
        rows=rows,
        exit_code=code,
        peak_rss_bytes=peak,
        samples=samples,
    )
    if not keep:
        store.remove_db(settings.db_path)
        consumer_output(settings).unlink(missing_ok=True)
    return report
