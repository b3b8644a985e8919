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
