"""The scaling model's arithmetic (bench/model.py): inputs from the rows, the bound that
binds, where adding workers stops paying, and the check against measured rows."""

from __future__ import annotations

import math

import pytest

from marketstream.bench.model import (
    Inputs,
    build,
    check,
    format_model,
    inputs,
    predict,
    saturation,
)


def row(store: str, workers: int, wall_s: float, rate: float, **costs: float) -> dict:
    """A scaling row of 300,000 ticks: its wall time, first worker's rate and CPU costs."""
    return {
        "store": store,
        "workers": workers,
        "stored": 300_000,
        "wall_s": wall_s,
        "per_worker_rate": [rate] * workers,
        "costs": {"workers_cpu_s": 0.0, "writer_cpu_s": 0.0, "broker_cpu_s": 0.0} | costs,
    }


FILE_ROWS = [
    row("duckdb", 1, 6.5, 50_000, workers_cpu_s=9.0, broker_cpu_s=0.6),
    row("duckdb", 2, 5.0, 40_000, workers_cpu_s=9.0, writer_cpu_s=1.5, broker_cpu_s=0.6),
]


def test_inputs_per_1000_ticks_the_files_writer_from_the_row_that_has_one():
    m = inputs(FILE_ROWS, "duckdb")
    assert (m.rate1, m.overhead_s) == (50_000, pytest.approx(0.5))
    assert (m.worker_cpu, m.store_cpu, m.broker_cpu) == pytest.approx((0.03, 0.005, 0.002))
    assert m.contention == 0.0  # the workers' side did not grow with the second worker
    assert m.serial == pytest.approx(200_000)  # one core's worth of a 5 ms/1,000 writer
    assert m.cpu_per_1000(1) == pytest.approx(0.032)  # no writer process for one worker
    assert m.cpu_per_1000(2) == pytest.approx(0.037)


def test_the_lake_grows_its_cpu_with_each_writer_and_is_bound_by_its_catalog():
    rows = [
        row("ducklake", 1, 6.0, 50_000, workers_cpu_s=6.0, catalog_cpu_s=0.6),
        row("ducklake", 2, 6.0, 50_000, workers_cpu_s=9.0, catalog_cpu_s=0.9),
    ]
    rates = [{"writers": 1, "commits_per_s": 60.0}, {"writers": 2, "commits_per_s": 75.0}]
    m = inputs(rows, "ducklake", commit_rates=rates, batch_rows=5000)
    assert m.serial == pytest.approx(375_000) and m.store_cpu == pytest.approx(0.002)
    assert m.contention == pytest.approx(0.011)  # (9.9 - 6.6) s per 300,000 ticks
    assert m.cpu_per_1000(3) == pytest.approx(0.02 + 0.022 + 0.002)


def test_no_one_worker_row_no_model():
    assert inputs(FILE_ROWS[1:], "duckdb") is None


def test_the_busiest_worker_the_cores_or_the_store_binds():
    m = Inputs("duckdb", 50_000, 0.0, 0.03, 0.005, 0.005, 0.0, 200_000)
    assert predict(m, 1, 2, 3, 300_000) == (pytest.approx(50_000), "workers")
    # two workers on 3 partitions: the busier holds two, 200,000 ticks, 4 s; the cores
    # need 300,000 x 0.04 ms / 2 = 6 s
    assert predict(m, 2, 2, 3, 300_000) == (pytest.approx(50_000), "cores")
    assert predict(m, 2, 16, 3, 300_000) == (pytest.approx(75_000), "workers")
    assert predict(m, 8, 16, 8, 300_000) == (pytest.approx(200_000), "store")
    assert saturation(m, 16) == {"workers": 5, "rate": pytest.approx(200_000), "bound": "store"}


def test_check_says_how_far_each_measured_row_is_from_the_prediction():
    m = Inputs("duckdb", 50_000, 0.0, 0.03, 0.005, 0.005, 0.0, math.inf)
    rows = [row("duckdb", 1, 6.0, 0), row("duckdb", 2, 5.0, 0), row("duckdb", 3, 4.0, 0)]
    got = [(c["workers"], round(c["error"], 3), c["within"]) for c in check(m, rows, 2, 3)]
    # predicted: 50,000 (6 s), 2 cores: 300,000 x 0.04 ms / 2 = 6 s -> 50,000 for 2 and 3
    assert got == [(1, 0.0, True), (2, -0.167, False), (3, -0.333, False)]


def test_build_models_every_store_with_a_one_worker_row_and_formats_it():
    result = build(FILE_ROWS, cores=2, partitions=3)
    model = result["stores"]["duckdb"]
    assert [c["workers"] for c in model["check"]] == [1, 2]
    assert [p["workers"] for p in model["predicted"]] == list(range(1, 17))
    text = format_model(result)
    assert "check, 2 worker(s) on 2 cores, 3 partitions" in text and "on 16 cores" in text
