"""The benchmark's pure parts (:mod:`marketstream.bench`): its plan, its percentiles, and
the soak harness's RSS sampler. The fast paths it measures are tested where they live
(test_decode.py, test_ticks.py, test_clients.py); a smoke run on a real broker:
tests/integration/test_bench.py."""

from __future__ import annotations

import math
import subprocess
import sys

import psutil

from marketstream.bench import Plan, percentile
from marketstream.bench.soak import _rss
from support.waiting import wait_until


def test_plan_scales_phases_down_for_a_smoke_run():
    small, big = Plan.for_ticks(5_000), Plan.for_ticks(1_000_000)
    assert small.baseline_n == 1_000 and big.baseline_n == 20_000
    assert small.repeats == 1 and big.repeats == 2
    assert small.live_s < big.live_s


def test_percentile_interpolates_between_ranks():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_soak_sampler_reads_an_exited_consumer_as_no_sample():
    """A consumer that exits between the sampler's checks is a zombie whose RSS reads 0;
    that must not enter the curve as its memory at 100 % (it did, once, in CI)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(proc.pid)
    wait_until(
        lambda: process.status() == psutil.STATUS_ZOMBIE,
        60,
        "the child to exit (unreaped)",
        interval_s=0.01,
    )
    assert _rss(process) is None
    proc.wait()
    assert _rss(psutil.Process()) > 0


def _sample(rate: float, cpu_s: float, messages: int = 1_000, **extra: float) -> dict:
    return {"rate": rate, "cpu_s": cpu_s, "messages": messages, "peak_rss_mb": 200.0, **extra}


def test_peer_row_and_per_tick_cpu_come_from_the_best_runs():
    from marketstream.bench.report import _cpu_and_peers, _peer_rows

    pair = {
        "ceiling": [_sample(100.0, 0.006), _sample(120.0, 0.005)],
        "consume": [_sample(90.0, 0.012, children_peak_rss_mb=0.0), _sample(60.0, 0.02)],
        "quix": [_sample(75.0, 0.02)],
    }
    figures = _cpu_and_peers(pair)
    assert math.isclose(figures["consume_cpu_us_per_tick"], 12.0)
    assert math.isclose(figures["ceiling_cpu_us_per_tick"], 5.0)
    assert math.isclose(figures["consume_cpu_vs_ceiling"], 2.4)
    assert math.isclose(figures["quix_vs_ceiling"], 75 / 120)
    assert math.isclose(figures["consume_vs_quix"], 90 / 75)
    rows = dict((name, (value, note)) for name, value, note in _peer_rows(figures))
    assert rows["peer: Quix Streams -> DuckDB (batching sink)"][0] == "75 ticks/s"
    assert (
        "2.40x the bare client's 5.0 us" in rows["CPU per tick (all the consumer's processes)"][1]
    )


def test_without_quixstreams_the_peer_row_says_it_was_skipped():
    from marketstream.bench.phases import QUIX_MISSING
    from marketstream.bench.report import _cpu_and_peers, _peer_rows

    pair = {
        "ceiling": [_sample(100.0, 0.006)],
        "consume": [_sample(90.0, 0.012)],
        "quix_skipped": QUIX_MISSING,
    }
    figures = _cpu_and_peers(pair)
    assert "quix_rate" not in figures
    [skipped] = [r for r in _peer_rows(figures) if r[0].startswith("peer")]
    assert skipped[1] == "skipped" and "quixstreams is not installed" in skipped[2]
