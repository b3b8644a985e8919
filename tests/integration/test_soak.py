"""The soak harness (:mod:`marketstream.bench.soak`) on a real broker.

``marketstream soak -n 1000000`` is the evidence that the
consumer's memory does not grow with the number of ticks; here a small run
checks that the harness lands every tick, reports a curve and cleans up.
Its RSS sampler alone: tests/unit/test_bench.py.
"""

from __future__ import annotations

from marketstream.bench.soak import CHECKPOINTS, run_soak


def test_soak_harness_small_run_lands_every_tick_with_flat_memory(fresh):
    """``marketstream soak -n 1000000`` on 60,000 ticks: every tick lands
    and the consumer's RSS curve is reported (the 1M run is the real evidence)."""
    report = run_soak(fresh, 60_000, own_names=False, progress=False, interval_s=0.1)
    print("\n" + report.describe())
    assert report.exit_code == 0
    assert report.rows == 60_000
    assert len(report.samples) >= 3
    # the kernel's high-water mark (wait4's ru_maxrss) is updated lazily, so a sample
    # read from /proc a moment before it was seen 80 KB above it (307.89 vs 307.81 MB)
    assert 0 < max(s.rss_bytes for s in report.samples) <= report.peak_rss_bytes * 1.01
    assert list(report.curve) == list(CHECKPOINTS)
    # loose on purpose (a short run on a shared machine): the consumer keeps nothing of
    # what it has written, so its memory at the end is nowhere near 3x that at 10%
    assert report.growth is not None and report.growth < 3
    assert not fresh.db_path.exists()  # the soak cleans up after itself
