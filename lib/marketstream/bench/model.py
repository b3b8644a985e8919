"""The scaling model: what N workers would store on a machine with more cores than this one.

Two cores cannot show N workers scaling, so the bench measures what one costs and
predicts from that. The inputs come from the scaling rows of one run, each counted from
the gate's opening to the last worker's exit:

* ``rate1``: one worker's own rate while it works, ticks/s (its RunMetrics, N = 1). A
  worker is one Python process whose parse holds the GIL: more cores do not make one
  worker faster;
* ``overhead_s``: what a row's wall time holds besides the work (the gate's opening to
  the first fetch, the last commit, the exits): the N = 1 row's wall time minus its
  ticks / ``rate1``;
* ``worker_cpu``, ``store_cpu``, ``broker_cpu``: CPU seconds per 1,000 ticks of the
  workers and the broker (N = 1), and of the store's side: on the file, the writer
  process the workers hand their batches to (it exists from N = 2, so it is read from
  the first row that has one); on the lake, the catalog's PostgreSQL (N = 1);
* ``contention``: CPU seconds per 1,000 ticks that each worker beyond the first adds to
  the workers' side (the workers and the catalog): the N = 2 row's minus the N = 1
  row's, 0 if it fell. On the lake each commit makes every other writer's snapshot
  stale, and each reloads it (measured 2026-12-02: 21.5, 36.2 and 50.8 µs a tick with
  1, 2 and 3 lake workers, +14.7 µs per worker); on the file the workers hand batches to
  one writer and add almost nothing;
* ``serial``: ticks/s the store takes at most, whatever the cores. The file has one
  writer process, single-threaded (DuckDB ``threads=1``): one core's worth,
  ``1000 / store_cpu``. The lake's catalog serialises commits (each makes a snapshot):
  its best commits/s with several writers (:func:`marketstream.bench.costs.commit_rate`)
  × the rows a batch commits.

N workers on P cores, a topic of ``p`` partitions and T ticks then take
``overhead_s + max(busiest / rate1, T × cpu / P, T / serial)`` seconds, where the
busiest worker holds ``ceil(p / N)`` partitions (``T × ceil(p/N) / p`` ticks) and
``cpu`` is the whole path's CPU per tick with N workers (``contention`` × (N − 1) more
than one's, the file's writer counted from N = 2): the
busiest worker, the cores, or the store, whichever takes longest. The prediction for 16
cores assumes as many partitions as workers and a long run (T = 10 million ticks). It
is checked against the rows of the same run on this machine (P = 2, p = 3).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: The machine the prediction is made for, the worker counts it covers, and its run.
TARGET_CORES = 16
TARGET_WORKERS = tuple(range(1, 17))
TARGET_TICKS = 10_000_000
#: How far a prediction may be from the measured rate and still hold.
TOLERANCE = 0.15


@dataclass(frozen=True)
class Inputs:
    """One store's measured inputs (see the module docstring)."""

    store: str
    rate1: float
    overhead_s: float
    worker_cpu: float
    store_cpu: float
    broker_cpu: float
    contention: float
    serial: float

    def cpu_per_1000(self, workers: int) -> float:
        """CPU seconds the whole path spends per 1,000 ticks with ``workers`` workers (the
        file's writer process exists from two)."""
        store = self.store_cpu if workers > 1 or self.store != "duckdb" else 0.0
        side = self.worker_cpu + self.contention * (workers - 1)
        return side + store + self.broker_cpu


def _per_1000(seconds: float, ticks: int) -> float:
    return 1000.0 * seconds / ticks if ticks else math.nan


def inputs(
    rows: Sequence[dict[str, Any]],
    store: str,
    *,
    commit_rates: Sequence[dict[str, float]] = (),
    batch_rows: int = 0,
) -> Inputs | None:
    """A store's inputs from its rows (None without an N = 1 row)."""
    mine = sorted((r for r in rows if r["store"] == store and "costs" in r), key=_workers)
    if not mine or mine[0]["workers"] != 1:
        return None
    one = mine[0]
    ticks = int(one["stored"])
    rate1 = one["per_worker_rate"][0]
    if store == "ducklake":
        store_cpu = _per_1000(one["costs"].get("catalog_cpu_s", 0.0), ticks)
        best = max((r["commits_per_s"] for r in commit_rates), default=math.nan)
        serial = best * batch_rows
    else:
        with_writer = [r for r in mine if r["costs"].get("writer_cpu_s", 0.0) > 0]
        store_cpu = (
            _per_1000(with_writer[0]["costs"]["writer_cpu_s"], int(with_writer[0]["stored"]))
            if with_writer
            else 0.0
        )
        serial = 1000.0 / store_cpu if store_cpu > 0 else math.inf
    two = [r for r in mine if r["workers"] == 2]
    contention = 0.0
    if two:
        contention = max(0.0, _side(two[0]) - _side(one))
    return Inputs(
        store=store,
        rate1=rate1,
        overhead_s=max(0.0, one["wall_s"] - ticks / rate1),
        worker_cpu=_per_1000(one["costs"]["workers_cpu_s"], ticks),
        store_cpu=store_cpu,
        broker_cpu=_per_1000(one["costs"].get("broker_cpu_s", 0.0), ticks),
        contention=contention,
        serial=serial,
    )


def _side(row: dict[str, Any]) -> float:
    """A row's CPU per 1,000 ticks on the workers' side: the workers and the catalog."""
    costs = row["costs"]
    return _per_1000(costs["workers_cpu_s"] + costs.get("catalog_cpu_s", 0.0), int(row["stored"]))


def _workers(row: dict[str, Any]) -> int:
    return int(row["workers"])


def predict(
    model: Inputs, workers: int, cores: float, partitions: int, ticks: int
) -> tuple[float, str]:
    """Ticks/s (over the wall time) that ``workers`` workers store, and what binds."""
    busiest = ticks * math.ceil(partitions / workers) / partitions
    times = {
        "workers": busiest / model.rate1,
        "cores": ticks * model.cpu_per_1000(workers) / 1000.0 / cores,
        "store": ticks / model.serial,
    }
    bound = max(times, key=lambda name: times[name])
    return ticks / (model.overhead_s + times[bound]), bound


def table(
    model: Inputs, cores: float = TARGET_CORES, counts: Iterable[int] = TARGET_WORKERS
) -> list[dict[str, Any]]:
    """The prediction for each worker count on ``cores`` cores, as many partitions as
    workers, a long run."""
    rows = []
    for n in counts:
        rate, bound = predict(model, n, cores, n, TARGET_TICKS)
        rows.append({"workers": n, "rate": rate, "bound": bound})
    return rows


def saturation(model: Inputs, cores: float = TARGET_CORES) -> dict[str, Any]:
    """Where adding workers stops paying: the first count not bound by its workers."""
    for row in table(model, cores, range(1, 257)):
        if row["bound"] != "workers":
            return row
    return {"workers": None, "rate": math.nan, "bound": "workers"}


def check(
    model: Inputs, rows: Sequence[dict[str, Any]], cores: float, partitions: int
) -> list[dict[str, Any]]:
    """The model against the measured rows of its store on this machine."""
    out = []
    for r in rows:
        if r["store"] != model.store or not r.get("wall_s"):
            continue
        measured = r["stored"] / r["wall_s"]
        predicted, bound = predict(model, r["workers"], cores, partitions, int(r["stored"]))
        error = predicted / measured - 1.0
        out.append(
            {
                "store": model.store,
                "workers": r["workers"],
                "measured": measured,
                "predicted": predicted,
                "bound": bound,
                "error": error,
                "within": abs(error) <= TOLERANCE,
            }
        )
    return out


def build(
    rows: Sequence[dict[str, Any]],
    *,
    cores: float,
    partitions: int,
    commit_rates: Sequence[dict[str, float]] = (),
    batch_rows: int = 0,
) -> dict[str, Any]:
    """The model of every store with an N = 1 row: inputs, check here, prediction at 16."""
    result: dict[str, Any] = {
        "cores_here": cores,
        "partitions_here": partitions,
        "tolerance": TOLERANCE,
        "stores": {},
        "commit_rates": list(commit_rates),
    }
    for store in dict.fromkeys(r["store"] for r in rows):
        model = inputs(rows, store, commit_rates=commit_rates, batch_rows=batch_rows)
        if model is None:
            continue
        result["stores"][store] = {
            "inputs": asdict(model),
            "check": check(model, rows, cores, partitions),
            "predicted": table(model),
            "saturates": saturation(model),
        }
    return result


def format_model(result: dict[str, Any]) -> str:
    """The model for the terminal and bench/README.md: inputs, check, prediction."""
    lines = []
    for store, m in result.get("stores", {}).items():
        i = m["inputs"]
        lines.append(
            f"{store}: one worker {i['rate1']:,.0f} ticks/s (+{i['overhead_s']:.2f} s a row); "
            f"CPU s per 1,000 ticks: workers {i['worker_cpu']:.4f}, store {i['store_cpu']:.4f}, "
            f"broker {i['broker_cpu']:.4f}, each further worker +{i['contention']:.4f}; "
            f"the store's own ceiling {i['serial']:,.0f} ticks/s"
        )
        for c in m["check"]:
            lines.append(
                f"  check, {c['workers']} worker(s) on {result['cores_here']:g} cores, "
                f"{result['partitions_here']} partitions: "
                f"measured {c['measured']:,.0f}, predicted {c['predicted']:,.0f} "
                f"({c['bound']}-bound), {c['error']:+.0%} "
                f"{'within' if c['within'] else 'OUTSIDE'} ±{result['tolerance']:.0%}"
            )
        s = m["saturates"]
        picks = [p for p in m["predicted"] if p["workers"] in (1, 2, 4, 8, 16)]
        lines.append(
            f"  on {TARGET_CORES} cores, as many partitions as workers: "
            + ", ".join(f"N={p['workers']} {p['rate']:,.0f}" for p in picks)
            + f"; adding workers stops paying at N={s['workers']} ({s['bound']}-bound, "
            f"{s['rate']:,.0f} ticks/s)"
        )
    for r in result.get("commit_rates", []):
        lines.append(
            f"  lake catalog: {r['commits_per_s']:.0f} commits/s with {r['writers']:g} "
            f"writer(s) ({r['conflicts']:g} conflicts)"
        )
    return "\n".join(lines)
