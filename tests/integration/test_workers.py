"""Several consumer workers on the DuckDB file: they take turns on its lock, one batch each.

``marketstream consume --workers 3`` on a real broker, into one DuckDB file,
ends with every tick stored once and the store's per-partition counts showing
that the three workers had a partition each to do (the spread partitioner).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from marketstream.processes import child_env
from marketstream.produce import ensure_topic, produce_ticks
from marketstream.ticks import generate_ticks

pytestmark = pytest.mark.usefixtures("no_stray_children")


def cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketstream.cli", *args],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def test_three_workers_fill_one_duckdb_file_exactly_once(fresh) -> None:
    settings = fresh.with_(batch_size=1000)
    ensure_topic(settings)
    ticks = generate_ticks(settings.symbols, 5000, seed=11)
    produce_ticks(ticks, settings, progress=False)
    status = cli(settings, "broker", "status").stdout  # the topic's spread, before any consumer
    assert "messages per partition: 0: 5,000, 1: 5,000, 2: 5,000" in status
    out = cli(settings, "consume", "--workers", "3", "-q")
    assert f"consumed {len(ticks)} messages: {len(ticks)} new rows" in out.stdout
    report = json.loads(cli(settings, "stats", "--json").stdout)
    assert report["store"] == "duckdb"
    assert (report["ticks"], report["distinct_ticks"], report["dead_letters"]) == (15000, 15000, 0)
    assert [p["ticks"] for p in report["partitions"]] == [5000, 5000, 5000]
    again = cli(settings, "consume", "--workers", "3", "-q")  # nothing new: nothing added
    assert "consumed 0 messages" in again.stdout
