"""The soak harness (:mod:`marketstream.bench.soak`) on a real broker, and its RSS sampler.

``marketstream soak -n 1000000`` is the evidence that the
consumer's memory does not grow with the number of ticks; here a small run
checks that the harness lands every tick, reports a curve and cleans up.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from marketstream.bench.soak import CHECKPOINTS, _rss, run_soak


@pytest.mark.integration
def test_soak_harness_small_run_lands_every_tick_with_flat_memory(fresh):
    """``marketstream soak -n 1000000`` on 60,000 ticks: every tick lands
    and the consumer's RSS curve is reported (the 1M run is the real evidence)."""
    report = run_soak(fresh, 60_000, own_names=False, progress=False, interval_s=0.1)
    print("\n" + report.describe())
    assert report.exit_code == 0
    assert report.rows == 60_000
    assert len(report.samples) >= 3
    assert 0 < max(s.rss_bytes for s in report.samples) <= report.peak_rss_bytes
    assert list(report.curve) == list(CHECKPOINTS)
    # loose on purpose (a short run on a shared machine): the consumer keeps nothing of
    # what it has written, so its memory at the end is nowhere near 3x that at 10%
    assert report.growth is not None and report.growth < 3
    assert not fresh.db_path.exists()  # the soak cleans up after itself


def test_soak_sampler_reads_an_exited_consumer_as_no_sample():
    """A consumer that exits between the sampler's checks is a zombie whose RSS reads 0;
    that must not enter the curve as its memory at 100 % (it did, once, in CI)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(proc.pid)
    deadline = time.monotonic() + 10
    while process.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.status() == psutil.STATUS_ZOMBIE
    assert _rss(process) is None
    proc.wait()
    assert _rss(psutil.Process()) > 0
