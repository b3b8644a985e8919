"""A smoke run of the benchmark (:func:`marketstream.bench.run_bench`) with a small N on
the session broker: every required figure is there and positive, the chart exists,
and nothing is left behind (topics, worker processes). No timing is asserted:
figures depend on the machine; only that the benchmark runs is tested, so it
cannot rot. Its pure parts: tests/unit/test_bench.py."""

from __future__ import annotations

import json
import shutil

import psutil
import pytest

from marketstream.bench import REQUIRED_KEYS, run_bench
from marketstream.clients import DEFAULT_CLIENTS


@pytest.mark.parametrize("generator", ["wrk", "python"])
def test_bench_smoke_writes_every_figure_and_the_chart(kafka, tmp_path, generator):
    """Both API load generators: wrk when installed (.ci/run installs it), and Python's."""
    if generator == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    output = tmp_path / "bench" / "latest.json"
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    assert run_bench(kafka, 5_000, str(output), progress=False, load_generator=generator) == 0

    result = json.loads(output.read_text())
    for key in REQUIRED_KEYS:
        value = result[key]
        assert isinstance(value, int | float) and value > 0, (key, value)
    assert result["n_ticks"] == 5_000
    assert result["api_load_generator"] == generator
    assert result["api_errors"] == 0
    assert result["consume_vs_ceiling"] > 0 and result["speedup_vs_baseline"] > 0
    assert result["phases"]["freshness"]["never_seen"] == 0
    assert set(result["targets"]) == {
        "consume_vs_ceiling",
        "speedup_vs_baseline",
        "freshness_p99_s",
        "api_p99_ms",
    }
    assert (tmp_path / "bench" / "latest.html").stat().st_size > 0
    assert result["chart"]["html"] == str(tmp_path / "bench" / "latest.html")

    # nothing left behind: the bench's topics and worker processes are gone
    admin = DEFAULT_CLIENTS.admin(kafka)
    try:
        assert not [t for t in admin.list_topics() if t.startswith("marketstream-bench-")]
    finally:
        admin.close()
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left
