"""The newcomer's sequence on a real broker and PostgreSQL: the file first, then the lake.

Tried as a new user would, ``make demo`` and ``make live`` on the DuckDB file and
then ``MARKET_STORE=ducklake MARKET_CONSUMERS=3 make demo`` left the lake with only
the 150 re-produced ticks: its workers resumed from the group offsets the file's
runs had committed. Each store now resumes from its own positions (its fences,
for the lake), so both end with every tick of the topic, whatever the group.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from marketstream import store
from marketstream.consume import consume
from marketstream.lag import end_offsets
from marketstream.produce import ensure_topic, produce_ticks
from marketstream.ticks import generate_ticks
from marketstream.workers import consume_all
from support.stored import store_difference

pytestmark = pytest.mark.usefixtures("no_stray_children")

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")


def test_the_file_then_the_lake_with_three_workers_each_hold_every_tick(lake_settings) -> None:
    on_file = lake_settings.with_(store="duckdb")  # same topic, same consumer group
    ensure_topic(on_file)
    demo = generate_ticks(SYMBOLS, 50, seed=1)  # make demo: 150 ticks
    produce_ticks(demo, on_file, progress=False)
    assert consume(on_file, progress=False).rows_inserted == 150
    now = datetime.now(UTC).replace(microsecond=0)
    live = generate_ticks(SYMBOLS, 400, seed=2, start=now)  # make live
    own = generate_ticks(("AAPL", "MSFT"), 20, seed=3, start=now + timedelta(hours=1))
    produce_ticks(live + own, on_file, progress=False)
    assert consume(on_file, progress=False).rows_inserted == len(live) + len(own)

    # MARKET_STORE=ducklake MARKET_CONSUMERS=3 make demo: the demo's ticks again, 3 workers
    produce_ticks(demo, lake_settings, progress=False)
    store.init_store(store.locate(lake_settings))
    run = consume_all(lake_settings.with_(consumers=3), progress=False)
    everything = demo + live + own
    assert run.rows_inserted == len(everything)
    assert run.behind == 0
    report = store.stats(store.locate(lake_settings))
    assert report["ticks"] == report["distinct_ticks"] == len(everything)
    ends = end_offsets(lake_settings)
    assert {(p["topic"], p["partition"]): p["stored_position"] for p in report["partitions"]} == (
        ends
    )
    assert store_difference(on_file.db_path, everything) == (0, 0)  # the file too
