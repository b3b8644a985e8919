"""The DuckDB store (:mod:`marketstream.store`): schema, idempotent inserts, views, reads,
reads beside a writer, and the file signature the API's cache relies on."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from marketstream import store
from marketstream.decode import decode_records
from marketstream.errors import StoreUnavailable
from marketstream.store import NO_SIGNATURE, RunMetrics, open_writer, signature
from marketstream.ticks import generate_ticks
from support.factories import Record, batch_for, dead_table, tick_table, write_store

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "m.duckdb"
    with open_writer(path) as writer:
        writer.write_batch(batch_for(generate_ticks(SYMBOLS, 50)).ticks)
    return path


def test_batch_lands_with_lineage(db):
    frame = store.ticks(db)
    assert len(frame) == 150
    assert set(frame["symbol"]) == set(SYMBOLS)
    assert {"topic", "partition", "offset", "received_at"} <= set(frame.columns)
    assert frame["offset"].min() == 0


def test_writing_the_same_ticks_again_adds_nothing(db):
    ticks = generate_ticks(SYMBOLS, 50)
    with open_writer(db, hold=False) as writer:
        assert writer.write_batch(batch_for(ticks).ticks) == 0
        # the same ticks arriving at new offsets (the CSV produced twice) also dedupe
        assert writer.write_batch(batch_for(ticks, topic="other").ticks) == 0
        # and a mixed batch only adds the new ones
        more = generate_ticks(SYMBOLS, 60)
        assert writer.write_batch(batch_for(more).ticks) == 30
    assert store.tick_count(db) == 180


def test_duplicates_within_one_batch_are_collapsed(tmp_path):
    ticks = generate_ticks(("A",), 3)
    path = tmp_path / "d.duckdb"
    with open_writer(path) as writer:
        assert writer.write_batch(batch_for(ticks + ticks).ticks) == 3


def test_dead_letters_are_stored_with_reason_and_raw_bytes(tmp_path):
    path = tmp_path / "dl.duckdb"
    good = generate_ticks(("A",), 2)
    records = [
        Record("t", 0, 0, b"A", good[0].to_message()),
        Record("t", 0, 1, b"A", b"\xff garbage"),
        Record("t", 0, 2, None, None),
        Record("t", 0, 3, b"A", good[1].to_message()),
    ]
    batch = decode_records(records, datetime.now(UTC))
    assert batch.ticks.num_rows == 2 and batch.dead.num_rows == 2
    with open_writer(path) as writer:
        assert writer.write_batch(batch.ticks, batch.dead) == 2
        writer.write_batch(batch.ticks, batch.dead)  # replay: dead letters not doubled
    dead = store.dead_letters(path)
    assert sorted(dead["offset"]) == [1, 2]
    raw = dict(zip(dead["offset"], dead["raw"], strict=True))
    assert bytes(raw[1]) == b"\xff garbage"
    assert all(dead["reason"].str.len() > 5)


def test_market_metrics_view(db):
    metrics = store.market_metrics(db).set_index("symbol")
    assert list(metrics.index) == sorted(SYMBOLS)
    assert (metrics["tickcount"] == 50).all()
    assert (metrics["maxprice"] >= metrics["avgprice"]).all()
    assert (metrics["avgprice"] >= metrics["minprice"]).all()
    assert (metrics["session_duration_s"] == 49.0).all()


def test_live_wide_has_a_price_and_volume_column_per_symbol(db):
    wide = store.live_wide(db, limit=10)
    assert len(wide) == 10
    assert set(wide.columns) == {"time", *SYMBOLS, *(f"{s}volume" for s in SYMBOLS)}
    since = wide["time"].iloc[4].to_pydatetime()
    assert len(store.live_wide(db, limit=100, since=since)) == 50 - 45


def test_candles_ohlc_and_vwap(db):
    bars = store.candles(db, "SP500", 10)
    assert bars["ticks"].sum() == 50
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert ((bars["vwap"] >= bars["low"]) & (bars["vwap"] <= bars["high"])).all()


def test_run_metrics_and_health(db):
    now = datetime(2025, 1, 1)
    with open_writer(db) as writer:
        writer.record_run(RunMetrics("r1", "batch", "t", now, now, 1.0, 150, 150, 0, 2, now, 150.0))
    runs = store.pipeline_runs(db)
    assert runs.loc[0, "messages_processed"] == 150
    health = store.health(db)
    assert health["ticks"] == 150 and health["errors"] == 2
    assert health["freshness_s"] > 0


def test_signature_changes_with_every_committed_write(tmp_path):
    db = tmp_path / "s.duckdb"
    assert signature(db) == NO_SIGNATURE == (0, 0, 0, 0)
    write_store(db, tick_table(generate_ticks(("A",), 5, seed=1)), hold=False)
    first = signature(db)
    assert first != (0, 0, 0, 0)
    assert signature(db) == first  # reading does not change it
    write_store(db, tick_table(generate_ticks(("B",), 5, seed=2)), hold=False)
    assert signature(db) != first


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(StoreUnavailable, match="run the pipeline first"):
        store.market_metrics(tmp_path / "nope.duckdb")
    assert store.tick_count(tmp_path / "nope.duckdb") == 0


def _hold_write_lock(path: str, ready, release) -> None:
    import duckdb

    con = duckdb.connect(path)
    ready.set()
    release.wait(30)
    con.close()


def test_reader_waits_for_a_writer_in_another_process(db):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_write_lock, args=(str(db), ready, release))
    proc.start()
    try:
        assert ready.wait(120)  # a spawned interpreter: slow to start on a loaded machine
        with (
            pytest.raises(StoreUnavailable, match="held by another program"),
            store.read_connection(db, 0.2),
        ):
            pass
        release.set()  # the writer lets go while the reader retries
        with store.read_connection(db, timeout_s=60) as con:  # retries until it lets go
            assert con.execute("SELECT count(*) FROM market_ticks").fetchone()[0] == 150
    finally:
        release.set()
        proc.join(30)


@pytest.mark.parametrize(
    ("gaps", "limit", "since_index", "until_index"),
    [
        ((), 20, None, None),  # dense: the window holds every second asked for
        ((), 500, None, None),  # fewer seconds stored than asked
        ((5, 17, 100), 30, None, None),  # gaps inside the window: older seconds must fill it
        ((5, 17, 100), 30, 60, None),  # ... but never from before `since`
        ((3,), 1, 10, None),
        ((110,), 30, None, None),  # a stream started after a long pause: one step down
        (tuple(range(5, 115, 5)), 100, None, None),  # many gaps: the steps run out, group all
        ((), 20, None, 70),  # a range in the past: the window ends at `until`
        ((), 20, 40, 70),  # `since` and `until`: at most what lies between
        ((), 500, 40, 70),
        ((5, 17, 100), 30, 10, 90),  # gaps before `until`
        ((110,), 30, None, 109),  # `until` just before a long pause
        ((), 20, 70, 70),  # an empty range
    ],
)
def test_live_wide_window_matches_grouping_the_whole_table(
    tmp_path, gaps, limit, since_index, until_index
):
    """The fast path (read the last `limit` seconds first) returns exactly what grouping
    every tick would: the newest `limit` seconds that have ticks in (`since`, `until`]."""
    from datetime import timedelta

    ticks = generate_ticks(SYMBOLS, 120)
    shifted = []
    for t in ticks:  # push later ticks further out: each gap is a 40 s hole in the data
        i = int((t.timestamp - ticks[0].timestamp).total_seconds())
        extra = sum(40 for g in gaps if i >= g)
        shifted.append(type(t)(t.timestamp + timedelta(seconds=extra), t.symbol, t.price, t.volume))
    path = tmp_path / "w.duckdb"
    with open_writer(path) as writer:
        writer.write_batch(batch_for(shifted).ticks)
    stamps = sorted({t.timestamp.replace(tzinfo=None) for t in shifted})
    since = None if since_index is None else stamps[since_index]
    until = None if until_index is None else stamps[until_index]
    with store.read_connection(path) as con:
        whole = store.pivot_wide(
            con.execute(store.reads._LIVE_SQL, [since, until, None, limit]).df()
        )
    got = store.live_wide(path, limit=limit, since=since, until=until)
    assert got.equals(whole)
    inside = [s for s in stamps if (since is None or s > since) and (until is None or s <= until)]
    assert len(got) == min(limit, len(inside))
    if inside:
        assert got["time"].iloc[-1] == inside[-1]  # the newest second in the range is there
    else:
        assert got.empty


def test_ingest_rate_counts_ticks_stored_in_the_last_window(tmp_path):
    """Live throughput for dashboards: ticks by ``received_at``, not the last finished run."""
    path = tmp_path / "rate.duckdb"
    old = batch_for(
        generate_ticks(("A",), 40, seed=1), received_at=datetime(2025, 1, 1, tzinfo=UTC)
    )
    recent = batch_for(generate_ticks(("B",), 25, seed=2), topic="u")
    with open_writer(path, hold=False) as writer:  # lets the reads in between
        writer.write_batch(old.ticks)
        assert store.health(path)["ingest_rate_per_s"] == 0.0  # nothing stored lately
        writer.write_batch(recent.ticks)
    health = store.health(path)
    assert health["ticks"] == 65
    assert health["ingest_rate_per_s"] == 25 / store.INGEST_WINDOW_S


def test_a_kept_health_snapshot_follows_the_clock(tmp_path):
    """The API keeps the snapshot while the store is unchanged: its ingest rate must still
    fall to 0 once nothing is written, and its freshness must keep growing."""
    path = tmp_path / "snap.duckdb"
    with open_writer(path, hold=False) as writer:
        writer.write_batch(batch_for(generate_ticks(("A",), 30, seed=3)).ticks)
    snapshot = store.health_snapshot(path)
    now = datetime.now(UTC).replace(tzinfo=None)
    assert snapshot.at(now)["ingest_rate_per_s"] == 30 / store.INGEST_WINDOW_S
    later = snapshot.at(now + timedelta(seconds=store.INGEST_WINDOW_S + 1))
    assert later["ingest_rate_per_s"] == 0.0
    assert later["freshness_s"] > snapshot.at(now)["freshness_s"] + store.INGEST_WINDOW_S


def test_stats_counts_ticks_distinct_ticks_dead_letters_and_offsets_per_partition(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    assert store.stats(path)["ticks"] == 0  # no file yet: zeros, not an error
    ticks = generate_ticks(("SP500",), 5, seed=1)
    dead = dead_table(("t", 0, 9, None, b"x", "not valid UTF-8 JSON", datetime(2026, 1, 1)))
    write_store(path, ticks, dead=dead)
    report = store.stats(path)
    assert (report["store"], report["ticks"], report["distinct_ticks"]) == ("duckdb", 5, 5)
    assert report["dead_letters"] == 1
    [row] = report["partitions"]
    newest = max(t.timestamp for t in ticks).replace(tzinfo=None).isoformat()
    assert row == {
        "topic": "t",
        "partition": 0,
        "stored_position": 10,  # no position stored (written without offsets): 9 + 1
        "max_offset": 9,
        "ticks": 5,
        "dead_letters": 1,
        "newest_event_time": newest,
    }
    assert "distinct ticks  5" in store.render_stats(report)


def test_a_store_an_earlier_kit_made_gets_the_new_run_columns(tmp_path) -> None:
    """``pipeline_metrics`` gained ``lost_commits`` and ``conflicts``; a file made before
    has neither, and ``CREATE TABLE IF NOT EXISTS`` would not add them."""
    path = tmp_path / "old.duckdb"
    store.init_db(path)
    con = duckdb.connect(str(path))
    for column in ("lost_commits", "conflicts"):
        con.execute(f"ALTER TABLE pipeline_metrics DROP COLUMN {column}")
    con.execute("INSERT INTO pipeline_metrics (run_id, status) VALUES ('old', 'ok')")
    con.close()
    now = datetime(2026, 1, 1)
    run = RunMetrics("new", "batch", "t", now, now, 1.0, 1, 1, 0, 0, None, 1.0, lost_commits=3)
    with open_writer(path) as writer:
        writer.record_run(run)
    rows = store.pipeline_runs(path).set_index("run_id")
    assert rows.loc["new", "lost_commits"] == 3
    assert rows.loc["old", "status"] == "ok"  # the earlier rows stay, their new cells empty
