"""The scaling table's pure parts (:mod:`marketstream.bench.scaling`): its arithmetic,
its targets, its text, and which stores a run selects. The running is covered by
``make bench`` (bench/README.md has a measured table)."""

from __future__ import annotations

import math

import pytest

from marketstream.bench import scaling
from marketstream.errors import SettingsError


def worker(messages: int, elapsed_s: float, rss: float = 400.0, cpu: float = 1.0) -> dict:
    return {"messages": messages, "elapsed_s": elapsed_s, "peak_rss_mb": rss, "cpu_s": cpu}


def two_workers(store: str = "duckdb") -> dict:
    return scaling.row(
        store,
        [worker(200_000, 2.0, 410.0, 3.0), worker(100_000, 1.25, 390.0, 1.0)],
        ceiling_rate=100_000.0,
        stored=300_000,
        span_s=2.0,
        span_messages=280_000,
        wall_s=4.0,
        freshness_s={"count": 10, "p50": 0.2, "p95": 0.3, "p99": 0.45, "max": 0.5},
    )


def test_row_arithmetic_from_given_numbers():
    r = two_workers()
    assert r["workers"] == 2 and r["messages"] == 300_000
    assert r["aggregate_rate"] == pytest.approx(140_000.0)  # 280,000 after the first poll / 2 s
    assert r["aggregate_vs_ceiling"] == pytest.approx(1.4)
    assert r["wall_rate"] == pytest.approx(75_000.0)  # 300,000 stored / 4 s first start..last exit
    assert r["wall_vs_ceiling"] == pytest.approx(0.75)
    assert r["per_worker_rate"] == pytest.approx([100_000.0, 80_000.0])
    assert r["per_worker_vs_ceiling"] == pytest.approx([1.0, 0.8])
    assert r["per_worker_peak_rss_mb"] == [410.0, 390.0]
    assert r["cpu_s"] == pytest.approx(4.0) and r["cores_busy"] == pytest.approx(1.0)


def test_row_without_time_gives_nan_not_an_error():
    r = scaling.row(
        "duckdb",
        [worker(0, 0.0)],
        ceiling_rate=0.0,
        stored=0,
        span_s=0.0,
        span_messages=0,
        wall_s=0.0,
    )
    assert math.isnan(r["aggregate_rate"]) and math.isnan(r["aggregate_vs_ceiling"])
    assert r["per_worker_rate"] == [0.0]
    assert math.isnan(r["per_worker_vs_ceiling"][0])


def test_verdicts_per_store():
    one = scaling.row(
        "duckdb",
        [worker(300_000, 3.2)],
        ceiling_rate=100_000.0,
        stored=300_000,
        span_s=3.0,
        span_messages=290_000,
        wall_s=4.5,
    )
    targets = scaling.verdicts([one, two_workers()])
    per = targets["duckdb_per_worker_vs_ceiling_min"]
    assert per["value"] == pytest.approx(0.8)  # the slowest worker of any row
    assert per["bound"] == ">= 0.9" and per["met"] is False
    two = targets["duckdb_2_workers_vs_ceiling"]
    assert two["value"] == pytest.approx(1.4) and two["bound"] == ">= 1.3" and two["met"] is True
    # a store without a 2-worker row misses that target rather than passing it
    assert scaling.verdicts([one | {"store": "ducklake"}])["ducklake_2_workers_vs_ceiling"] == {
        "bound": ">= 1.3",
        "value": None,
        "met": False,
    }


def test_table_text_and_markdown():
    r = two_workers()
    assert scaling.table_cells(r) == (
        "duckdb",
        "2",
        "140,000",
        "1.40",
        "75,000",
        "100,000 80,000",
        "100% 80%",
        "410 390",
        "1.00",
        "0.20/0.45",
    )
    text = scaling.format_rows([r, two_workers("ducklake")])
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].startswith("store") and lines[2].startswith("ducklake")
    md = scaling.format_rows([r], markdown=True).splitlines()
    assert md[0].startswith("| store | N |") and md[1] == "|" + "---|" * len(scaling.COLUMNS)
    assert md[2] == "| " + " | ".join(scaling.table_cells(r)) + " |"
    assert scaling.table_cells(r | {"freshness_s": None})[-1] == "-"


def test_summary_and_its_text():
    result = scaling.summary(
        [two_workers()],
        100_000.0,
        symbols=("SP500", "STOXX600", "NIKKEI225"),
        partitions=3,
        skipped={"ducklake": "no PostgreSQL"},
    )
    assert result["partitioner"] == "spread" and result["partitions"] == 3
    assert set(result["targets"]) == {
        "duckdb_per_worker_vs_ceiling_min",
        "duckdb_2_workers_vs_ceiling",
    }
    text = scaling.format_summary(result)
    assert "3 symbols (SP500, STOXX600, NIKKEI225) on 3 partitions" in text
    assert "ducklake: skipped (no PostgreSQL)" in text
    assert "duckdb_2_workers_vs_ceiling 1.40 (target >= 1.3): met" in text
    assert "duckdb_per_worker_vs_ceiling_min 0.80 (target >= 0.9): MISSED" in text


@pytest.mark.parametrize(
    ("n", "choice", "stores"),
    [
        (5_000, None, ()),
        (300_000, None, ("duckdb", "ducklake")),
        (5_000, "1", ("duckdb", "ducklake")),
        (300_000, "off", ()),
        (5_000, "ducklake,duckdb", ("duckdb", "ducklake")),
        (5_000, "duckdb", ("duckdb",)),
    ],
)
def test_selection(monkeypatch, n, choice, stores):
    monkeypatch.delenv(scaling.SELECT_ENV, raising=False)
    assert scaling.selected_stores(n, choice) == stores


def test_selection_from_the_environment(monkeypatch):
    monkeypatch.setenv(scaling.SELECT_ENV, "0")
    assert scaling.selected_stores(1_000_000) == ()
    monkeypatch.setenv(scaling.SELECT_ENV, "duckdb")
    assert scaling.selected_stores(1_000) == ("duckdb",)
    with pytest.raises(SettingsError, match="sqlite"):
        scaling.selected_stores(1_000, "sqlite")


def test_a_failed_row_is_shown_and_misses_its_targets():
    failed = scaling.failed_row("duckdb", 2, ["consumer-1 failed", "again"])
    assert failed["failed"] and failed["workers"] == 2 and len(failed["failed_attempts"]) == 2
    cells = scaling.table_cells(failed)
    assert cells[:3] == ("duckdb", "2", "failed") and len(cells) == len(scaling.COLUMNS)
    targets = scaling.verdicts([failed])
    assert targets["duckdb_2_workers_vs_ceiling"]["met"] is False
    assert targets["duckdb_per_worker_vs_ceiling_min"]["met"] is False
