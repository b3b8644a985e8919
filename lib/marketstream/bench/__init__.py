"""The benchmark behind ``make bench`` and ``marketstream bench``: every figure from one run.

Why it is built this way (each module holds the why of its part):

- **Ratios, not absolutes** (:mod:`.plan`): every reference is measured in the
  same run, back to back, on the same topic.
- **Each consumer in its own process** (:mod:`.workers`, :mod:`.consumers`):
  peak RSS is the consumer's own and the GIL is not shared with the bench.
- **Its own topics, consumer groups and DuckDB files** (:mod:`.run`), in a
  temporary folder, so the user's data is never touched; topics are deleted
  at the end. A broker is started only if none answers, and then stopped
  again (:func:`marketstream.broker.owned_broker`, the kit's one place of that rule).
- **Live figures in live mode** (:mod:`.phases`, :mod:`.load`): freshness with
  the real live consumer and paced producer; API latency on the real server
  with 100 concurrent keep-alive connections while that live ingest runs.
- **Scaling** (:mod:`.scaling`, optional): 1, 2 and 3 consumer worker
  processes per store on the same topic, against the same run's ceiling;
  on by default from 100,000 ticks, chosen by ``scaling=`` or
  ``$MARKET_BENCH_SCALING`` (0, 1, or stores: ``duckdb,ducklake``).

The results go to ``bench/latest.json`` (keys documented in bench/README.md)
with a plotly chart beside it (:mod:`.report`). :mod:`.soak` is the other
measurement: the consumer's memory over a million ticks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from marketstream.bench import phases
from marketstream.bench.plan import REQUIRED_KEYS, TARGETS, Plan, distribution, percentile
from marketstream.bench.report import format_table, summarize, write_chart, write_json
from marketstream.bench.run import BenchRun
from marketstream.bench.scaling import selected_stores
from marketstream.errors import BenchError, SettingsError
from marketstream.settings import Settings, home

__all__ = [
    "REQUIRED_KEYS",
    "TARGETS",
    "BenchError",
    "Plan",
    "distribution",
    "format_table",
    "percentile",
    "run_bench",
    "summarize",
    "write_chart",
]

#: The fewest ticks a run takes (the phases' slices need that many).
MIN_TICKS = 1_000


def _output_path(output: str | Path) -> Path:
    path = Path(output).expanduser()
    return path if path.is_absolute() else home() / path


def _run_phases(
    run: BenchRun, load_generator: str | None, scaling: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The phases in order, on generated ticks; their raw figures by name
    (``scaling``: the stores of the scaling phase, none to skip it)."""
    from marketstream.ticks import generate_ticks

    settings, n_ticks = run.settings, run.plan.n_ticks
    per_symbol = -(-n_ticks // len(settings.symbols))
    ticks = generate_ticks(settings.symbols, per_symbol, seed=settings.seed)[:n_ticks]
    results: dict[str, Any] = {}
    results["produce"] = phases.produce(run, ticks)
    results["ceiling_consume"] = phases.ceiling_and_consume(run)
    results["baseline"] = phases.baseline(run)
    results["e2e"] = phases.end_to_end(run, ticks)
    del ticks
    results["freshness"] = phases.freshness(run)
    results["api"] = phases.api(run, run.work / "consume-0.duckdb", load_generator)
    if scaling:  # last: it reads the main topic again and starts its own PostgreSQL
        results["scaling"] = phases.scaling(run, results["ceiling_consume"], scaling)
    return results


def run_bench(
    settings: Settings,
    n_ticks: int,
    output: str | Path,
    *,
    progress: bool = True,
    load_generator: str | None = None,
    scaling: str | None = None,
) -> int:
    """Run every phase for ``n_ticks`` ticks, print the table, write JSON and chart; 0 if done.

    Targets missed are reported, not errors: the exit code says whether the
    benchmark ran, not whether the machine was fast enough. ``load_generator``
    is the API phase's ("wrk" or "python"; by default wrk if installed).
    ``scaling`` selects the scaling phase ("0", "1", or stores such as "duckdb");
    by default ``$MARKET_BENCH_SCALING``, else on from 100,000 ticks.
    """
    from marketstream import broker

    if n_ticks < MIN_TICKS:
        raise SettingsError(f"bench needs at least {MIN_TICKS:,} ticks, got {n_ticks:,}")
    phases.choose_generator(load_generator)  # fail before anything starts
    scaling_stores = selected_stores(n_ticks, scaling)
    out = _output_path(output)
    plan = Plan.for_ticks(n_ticks)
    load_start = [round(x, 2) for x in os.getloadavg()]  # summarize() runs at the end
    with (
        broker.owned_broker(settings, say=print if progress else None) as owned,
        tempfile.TemporaryDirectory(prefix="marketstream-bench-") as tmp,
    ):
        run = BenchRun(settings, plan, Path(tmp), progress)
        try:
            results = _run_phases(run, load_generator, scaling_stores)
        finally:
            run.cleanup()
        result = summarize(plan, settings, results)
        result["broker_started_by_bench"] = owned.started
    result["machine"]["load_average_start"] = load_start
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["chart"] = write_chart(result, out.with_suffix(".html"))
    write_json(result, out, secrets=settings.secret_values)
    print(format_table(result))
    print(f"\nwrote {out} and {result['chart']['html']}")
    return 0
