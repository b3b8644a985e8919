"""The headless pipeline: papermill runs the numbered notebooks in order.

The notebooks *are* the pipeline, so the walkthrough a newcomer reads and
the job that runs in CI can never drift apart. Each executed notebook is kept
in the output folder as the record of the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import papermill

from marketstream import broker, store
from marketstream.logs import get_logger
from marketstream.produce import delete_topic
from marketstream.settings import PROJECT_ROOT, Settings

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
PIPELINE_NOTEBOOKS = ("01_generate", "02_produce", "03_consume", "04_explore")


class PipelineError(RuntimeError):
    """A notebook failed; the message names it and points at its executed copy."""


@dataclass
class PipelineSummary:
    """What one pipeline run left behind."""

    rows: int
    elapsed_s: float
    throughput_per_s: float | None
    db_path: Path
    outputs: list[Path] = field(default_factory=list)
    broker_started: bool = False

    def describe(self) -> str:
        """A few lines for the terminal."""
        rate = f"{self.throughput_per_s:,.0f} ticks/s" if self.throughput_per_s else "n/a"
        lines = [
            f"pipeline finished in {self.elapsed_s:.1f}s",
            f"  rows in DuckDB   : {self.rows} ({self.db_path})",
            f"  consume rate     : {rate} (last consumer run)",
            f"  executed notebooks: {self.outputs[0].parent if self.outputs else '-'}",
        ]
        lines += [f"    - {p.name}" for p in self.outputs]
        return "\n".join(lines)


def notebook_parameters(settings: Settings) -> dict[str, object]:
    """The papermill parameters every notebook accepts (strings and lists only)."""
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "topic": settings.topic,
        "db_path": str(settings.db_path),
        "csv_path": str(settings.csv_path),
        "log_path": str(settings.log_path),
        "symbols": list(settings.symbols),
        "ticks_per_symbol": settings.ticks_per_symbol,
        "seed": settings.seed,
    }


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
    was_running = broker.is_reachable(settings.bootstrap_servers)
    if not was_running:
        broker.start_broker(settings)
    try:
        if fresh:
            delete_topic(settings)
            for suffix in ("", ".wal"):
                Path(f"{settings.db_path}{suffix}").unlink(missing_ok=True)
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        outputs = []
        for name in notebooks:
            source = NOTEBOOK_DIR / f"{name}.ipynb"
            target = settings.output_dir / f"{name}.ipynb"
            try:
                papermill.execute_notebook(
                    str(source),
                    str(target),
                    parameters=notebook_parameters(settings),
                    cwd=str(NOTEBOOK_DIR),
                    progress_bar=progress,
                    kernel_name="python3",
                )
            except papermill.PapermillExecutionError as exc:
                log.error(
                    "pipeline_error",
                    extra={"notebook": name, "error": f"{exc.ename}: {exc.evalue}"},
                )
                raise PipelineError(
                    f"notebook {name} failed: {exc.ename}: {exc.evalue} (see {target})"
                ) from None
            outputs.append(target)
    finally:
        if not was_running and not keep_broker:
            broker.stop_broker(settings)
    runs = store.pipeline_runs(settings.db_path, limit=1)
    throughput = float(runs["throughput_per_s"].iloc[0]) if len(runs) else None
    summary = PipelineSummary(
        rows=store.tick_count(settings.db_path),
        elapsed_s=time.perf_counter() - started,
        throughput_per_s=throughput,
        db_path=settings.db_path,
        outputs=outputs,
        broker_started=not was_running,
    )
    log.info(
        "pipeline_end",
        extra={"rows": summary.rows, "elapsed_s": round(summary.elapsed_s, 3)},
    )
    return summary
