"""What a benchmark run measures and against what: the plan, the targets, the statistics.

Why ratios, not absolutes: the targets compare our consumer with the bare
kafka-python client and with a per-message baseline. Machines (and the
neighbours on a shared one) differ, so every reference is measured in the
same run, back to back, on the same topic, and the ceiling/consume pair is
interleaved and repeated (best of each is kept, all samples are saved).

Pure: no Kafka, no processes; the phases and the report read these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Live phases (freshness, API) produce at this fixed total rate, ticks/s.
LIVE_RATE = 1_000.0
#: Concurrent keep-alive connections of the API load generator.
API_CONCURRENCY = 100
#: What the load generator asks for, round-robin: what Grafana's panels poll.
API_PATHS = ("/live", "/metrics")
#: The freshness reader polls DuckDB this often (adds up to this much to each figure).
READER_POLL_S = 0.05
#: The issue's targets, as (key, comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "consume_vs_ceiling": (">=", 0.90),
    "speedup_vs_baseline": (">=", 50.0),
    # 1 s until issue 20 asked for 0.25 s at 1,000 ticks/s (it was 0.31-0.36 s then)
    "freshness_p99_s": ("<=", 0.25),
    "api_p99_ms": ("<=", 50.0),
}
#: The flat figures every result holds (bench/README.md documents each).
REQUIRED_KEYS = (
    "n_ticks",
    "produce_rate",
    "consume_rate",
    "client_ceiling_rate",
    "baseline_rate",
    "e2e_rate",
    "freshness_p99_s",
    "api_p99_ms",
    "consumer_peak_rss_mb",
)


@dataclass(frozen=True)
class Plan:
    """How much of each phase to run for a given tick count (small N: a quick smoke run)."""

    n_ticks: int
    baseline_n: int
    repeats: int
    live_s: float
    warmup_s: float
    api_s: float
    live_rate: float = LIVE_RATE
    concurrency: int = API_CONCURRENCY

    @classmethod
    def for_ticks(cls, n_ticks: int) -> Plan:
        """Full-length phases from 100,000 ticks; a few seconds each below (CI smoke)."""
        big = n_ticks >= 100_000
        return cls(
            n_ticks=n_ticks,
            baseline_n=min(n_ticks, 20_000, max(1_000, n_ticks // 10)),
            repeats=2 if big else 1,
            live_s=15.0 if big else 4.0,
            warmup_s=2.0 if big else 1.0,
            api_s=15.0 if big else 3.0,
        )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def distribution(values: list[float], scale: float = 1.0) -> dict[str, float | int]:
    """Count, p50, p95, p99 and max of the samples, each multiplied by ``scale``."""
    return {
        "count": len(values),
        "p50": percentile(values, 50) * scale,
        "p95": percentile(values, 95) * scale,
        "p99": percentile(values, 99) * scale,
        "max": (max(values) * scale) if values else math.nan,
    }


def met(value: float | None, op: str, bound: float) -> bool:
    """Does a figure meet its target (``op`` is ">=" or "<=")? A missing figure does not."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return value >= bound if op == ">=" else value <= bound
