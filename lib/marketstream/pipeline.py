"""The headless pipeline: papermill runs the numbered notebooks in order.

The notebooks *are* the pipeline, so the walkthrough a newcomer reads and
the job that runs in CI can never drift apart. Each executed notebook is kept
in the output folder as the record of the run.

Secrets (the SASL password, the client key's password) are not notebook
parameters: papermill writes its parameters into the executed notebook, so a
run against a secured cluster left the password in ``output/*.ipynb``. They
reach the kernels through the environment instead (kernels inherit this
process's environment), set for the run and restored after it.

The notebooks come from the package (:mod:`marketstream.resources`), so an
installed wheel runs the same pipeline as the checkout. The kernels run in the
home (:func:`marketstream.settings.home`: ``$MARKETSTREAM_HOME`` or the
current directory), not in the notebooks' folder, which installed is
site-packages: a kernel then sees the same home and ``.env`` as this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from marketstream import store
from marketstream.broker import owned_broker
from marketstream.errors import PipelineError
from marketstream.logs import get_logger
from marketstream.produce import delete_topic
from marketstream.resources import notebook
from marketstream.settings import OPTIONS, Settings, home
from marketstream.store import owned_store
from marketstream.workers import WorkerShare, describe_shares, shares

PIPELINE_NOTEBOOKS = ("01_generate", "02_produce", "03_consume", "04_explore")

#: Where, in the output folder, the kernels' own stderr goes (:func:`_kernel_manager`).
KERNEL_LOG = "kernels.log"

#: The one papermill parameter every notebook takes: all settings, as ``{field: text}``.
SETTINGS_PARAMETER = "settings_overrides"


@dataclass
class PipelineSummary:
    """What one pipeline run left behind."""

    rows: int
    elapsed_s: float
    throughput_per_s: float | None
    location: str
    outputs: list[Path] = field(default_factory=list)
    broker_started: bool = False
    #: each consumer worker's share, when the consume notebook ran several
    shares: list[WorkerShare] = field(default_factory=list)

    def describe(self) -> str:
        """A few lines for the terminal."""
        rate = f"{self.throughput_per_s:,.0f} ticks/s" if self.throughput_per_s else "n/a"
        what = f"{len(self.shares)} workers together" if len(self.shares) > 1 else "this run"
        lines = [
            f"pipeline finished in {self.elapsed_s:.1f}s",
            f"  rows stored      : {self.rows} ({self.location})",
            f"  consume rate     : {rate} ({what})",
            *describe_shares(self.shares, indent="    - "),
            f"  executed notebooks: {self.outputs[0].parent if self.outputs else '-'}",
        ]
        lines += [f"    - {p.name}" for p in self.outputs]
        return "\n".join(lines)


def notebook_parameters(settings: Settings) -> dict[str, object]:
    """The papermill parameters of every notebook: the whole settings, nothing picked.

    A notebook builds ``Settings.from_env(**settings_overrides)``, so every
    field the caller set (consumer group, partitions, batch size, security...)
    wins over the kernel's environment. Handing over a chosen few let the
    environment silently replace the rest. Secret fields are left out: they
    go through the kernel's environment (:func:`secrets_for_kernels`).
    """
    overrides = settings.to_overrides()
    for option in OPTIONS:
        if option.secret:
            overrides.pop(option.name, None)
    return {SETTINGS_PARAMETER: overrides}


@contextlib.contextmanager
def secrets_for_kernels(settings: Settings) -> Iterator[None]:
    """Put the settings' secrets into this process's environment while kernels start.

    Each is set to the settings' value, empty if it has none (a variable that
    is set, even empty, wins over ``.env``), so a kernel's ``Settings.from_env``
    sees exactly the caller's; the previous environment is restored afterwards.
    """
    secret = [option for option in OPTIONS if option.secret]
    saved = {option.env: os.environ.get(option.env) for option in secret}
    try:
        for option in secret:
            os.environ[option.env] = getattr(settings, option.name)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _kernel_manager(stderr_path: Path) -> type:
    """A kernel manager whose kernels write their own stderr to ``stderr_path``.

    A kernel inherits the terminal's stderr otherwise, and ipykernel 7 warns
    there at every start (its local TCP is not encrypted), and at a slow
    shutdown a killed kernel adds zmq's "Assertion failed" line: noise that
    buried the one line saying why the pipeline failed. Cell output is not
    affected (it goes into the executed notebook).
    """
    from jupyter_client.manager import AsyncKernelManager

    class FileStderrKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
            with stderr_path.open("ab") as stderr:  # the kernel keeps its own copy
                await super().start_kernel(stderr=stderr, **kw)

    return FileStderrKernelManager


def _run_notebook(name: str, settings: Settings, progress: bool, log: logging.Logger) -> Path:
    """Execute one notebook into the output folder; a failure names the notebook and its copy.

    papermill is imported here, not at the top: its import (nbformat's JSON
    schema validators) takes 2.5-4.5 s on the demo machine, and a pipeline
    that cannot reach its broker should say so before paying for it.
    """
    import papermill

    settings.output_dir.mkdir(parents=True, exist_ok=True)
    source = notebook(name)
    target = settings.output_dir / f"{name}.ipynb"
    try:
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters=notebook_parameters(settings),
            cwd=str(home()),
            progress_bar=progress,
            kernel_name="python3",
            kernel_manager_class=_kernel_manager(settings.output_dir / KERNEL_LOG),
        )
    except papermill.PapermillExecutionError as exc:
        log.error("pipeline_error", extra={"notebook": name, "error": f"{exc.ename}: {exc.evalue}"})
        raise PipelineError(
            f"notebook {name} failed: {exc.ename}: {exc.evalue} (see {target})"
        ) from None
    return target


def consume_rate(runs: Any) -> float | None:
    """The consumer runs of this pipeline (a ``pipeline_metrics`` frame) as one rate: every
    message over the span from the first run's start to the last one's end. With several
    workers the last run alone could be one that found its partitions empty (n/a)."""
    if not len(runs):
        return None
    messages = int(runs["messages_processed"].sum())
    span = (runs["ended_at"].max() - runs["started_at"].min()).total_seconds()
    return messages / span if messages and span > 0 else None


def run_shares(runs: Any, settings: Settings) -> list[WorkerShare]:
    """Each consumer run of this pipeline as a worker's share (partitions from the log)."""
    ordered = runs.sort_values("started_at") if len(runs) else runs
    return shares(
        [
            (f"worker {i}", str(r.run_id), int(r.messages_processed), float(r.throughput_per_s))
            for i, r in enumerate(ordered.itertuples(), start=1)
        ],
        settings.log_path,
        settings.consumer_group,
    )


def run_pipeline(
    settings: Settings,
    *,
    fresh: bool = False,
    keep_broker: bool = False,
    notebooks: tuple[str, ...] = PIPELINE_NOTEBOOKS,
    progress: bool = True,
) -> PipelineSummary:
    """Start Kafka if needed, run the notebooks with papermill, and summarise.

    ``fresh`` deletes the topic and the DuckDB file first. A broker this call
    started is stopped at the end unless ``keep_broker``; one that was already
    running is left alone.
    """
    started = time.perf_counter()
    log = get_logger(settings.log_path)
    log.info("pipeline_start", extra={"notebooks": list(notebooks), "fresh": fresh})
    with owned_broker(settings, keep=keep_broker) as kafka, owned_store(settings) as settings:
        at = store.locate(settings)
        if fresh:
            delete_topic(settings)
            store.remove_store(at)
            store.init_store(at)
        since = datetime.now(UTC).replace(tzinfo=None)  # the store's times are naive UTC
        with secrets_for_kernels(settings):
            outputs = [_run_notebook(name, settings, progress, log) for name in notebooks]
        runs = store.pipeline_runs(at, since=since)
        throughput, found = consume_rate(runs), run_shares(runs, settings)
        summary = PipelineSummary(
            rows=store.tick_count(at),
            elapsed_s=time.perf_counter() - started,
            throughput_per_s=throughput,
            location=store.describe(at),
            outputs=outputs,
            broker_started=kafka.started,
            shares=found,
        )
    log.info(
        "pipeline_end",
        extra={"rows": summary.rows, "elapsed_s": round(summary.elapsed_s, 3)},
    )
    return summary
