"""The kit on DuckLake: the pipeline's notebooks, the API and upkeep read and write it unchanged."""

from __future__ import annotations

import subprocess
import sys

import pytest

from marketstream import store
from marketstream.pipeline import run_pipeline
from marketstream.processes import child_env
from marketstream.ticks import generate_ticks
from marketstream_api.app import create_app
from support.factories import tick_table

pytestmark = pytest.mark.usefixtures("no_stray_children")


def test_the_pipeline_runs_on_ducklake_with_three_workers(lake_settings) -> None:
    settings = lake_settings.with_(consumers=3)
    summary = run_pipeline(settings, progress=False)
    assert summary.rows == 150
    assert "DuckLake" in summary.location
    at = store.locate(settings)
    report = store.stats(at)
    # the consume notebook sends one bad message per partition, to show its dead letters
    assert (report["ticks"], report["distinct_ticks"], report["dead_letters"]) == (150, 150, 3)
    assert len(report["partitions"]) == 3  # three symbols, three partitions, three workers
    runs = store.pipeline_runs(at)
    assert len(runs) == 3 and set(runs["status"]) == {"ok"}  # one row per worker
    assert int(runs["rows_inserted"].sum()) == 150
    explore = (settings.output_dir / "04_explore.ipynb").read_text()
    assert "150 ticks, 3 symbols" in explore  # the explore notebook read the lake


def test_the_api_reads_the_lake(lake_settings) -> None:
    run_pipeline(lake_settings, progress=False)
    client = create_app(lake_settings, broker_check=lambda *_: True).test_client()
    metrics = client.get("/metrics").get_json()
    assert sorted(row["symbol"] for row in metrics) == sorted(lake_settings.symbols)
    assert sum(row["tickcount"] for row in metrics) == 150
    live = client.get("/live?limit=5").get_json()
    assert len(live) == 5
    runs = client.get("/runs").get_json()
    assert runs["health"]["ticks"] == 150 and runs["runs"][0]["rows_inserted"] == 150
    health = client.get("/health").get_json()
    assert health["store"]["reachable"] and "DuckLake" in health["store"]["path"]


def test_upkeep_merges_small_files_and_keeps_every_row(lake_settings) -> None:
    at = store.locate(lake_settings)
    store.init_store(at)
    ticks = generate_ticks(("SP500",), 600, seed=3)
    with store.open_writer(at) as writer:
        for i in range(12):  # twelve commits: twelve small Parquet files
            part = ticks[i * 50 : (i + 1) * 50]
            batch = tick_table(part, topic=lake_settings.topic, offset0=i * 50)
            writer.write_batch(batch, offsets={(lake_settings.topic, 0): (i + 1) * 50})
    before = store.stats(at)
    done = store.upkeep(at, keep_snapshots_s=0)
    after = store.stats(at)
    assert done.files_after < done.files_before
    assert after["ticks"] == before["ticks"] == 600
    assert after["distinct_ticks"] == 600 and after["snapshots"] < before["snapshots"]
    out = subprocess.run(
        [sys.executable, "-m", "marketstream.cli", "upkeep", "--keep-snapshots", "0"],
        env=child_env(lake_settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.startswith("lake upkeep:")
