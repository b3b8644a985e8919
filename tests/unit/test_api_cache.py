"""The API's read cache (:mod:`marketstream_api.cache`): exact while the store is
unchanged, recomputed after a write, shared by concurrent requests.

No test here waits for the clock to pass a bound: an answer's age is moved by
:func:`make_older` instead, so "still kept" and "too old now" are decided by the
cache's rules and not by how fast a loaded machine runs the lines in between.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest

from marketstream.store import INGEST_WINDOW_S
from marketstream.ticks import generate_ticks
from marketstream_api.cache import ReadCache
from support.api import app_for
from support.factories import tick_table, write_store
from support.waiting import wait_until

#: How long a test waits for a background refresh (it normally takes milliseconds).
REFRESH_WAIT_S = 30


def write_ticks(db: Path, symbols: tuple[str, ...], n: int, seed: int, offset0: int = 0) -> None:
    """A committed write of ``n`` ticks per symbol (received now), file opened per batch."""
    write_store(db, tick_table(generate_ticks(symbols, n, seed=seed), offset0=offset0), hold=False)


def make_older(cache: ReadCache, key: object, seconds: float) -> None:
    """Age ``key``'s kept answer by ``seconds``, as if that much time had passed."""
    cache._slots[key].entry.computed_at -= seconds


def counting() -> tuple[list[int], object]:
    """A computation that answers how often it has run: b"1", b"2", ..."""
    calls: list[int] = []

    def compute() -> bytes:
        calls.append(1)
        return str(len(calls)).encode()

    return calls, compute


def test_unchanged_store_computes_once_and_a_write_recomputes(tmp_path):
    db = tmp_path / "c.duckdb"
    write_ticks(db, ("A",), 5, seed=1)
    cache = ReadCache(db, min_age_s=0)
    _calls, compute = counting()

    assert [cache.get("k", compute) for _ in range(20)] == [b"1"] * 20
    write_ticks(db, ("B",), 5, seed=2)
    assert cache.get("k", compute) == b"2"
    assert cache.get("other", compute) == b"3"  # keys are separate
    assert (cache.hits, cache.misses) == (19, 3)


def test_min_age_bounds_how_often_a_moving_store_is_read(tmp_path):
    db = tmp_path / "m.duckdb"
    write_ticks(db, ("A",), 5, seed=1)
    cache = ReadCache(db, min_age_s=60)
    _calls, compute = counting()

    assert cache.get("k", compute) == b"1"
    write_ticks(db, ("B",), 5, seed=2)
    assert cache.get("k", compute) == b"1"  # younger than min_age: kept
    make_older(cache, "k", 60)
    assert cache.get("k", compute) == b"2"  # min_age old and the store moved: read again


def test_concurrent_requests_share_one_computation(tmp_path):
    db = tmp_path / "x.duckdb"
    write_ticks(db, ("A",), 5, seed=1)
    cache = ReadCache(db, min_age_s=0)
    calls = []
    gate = threading.Event()
    entered = threading.Semaphore(0)

    def slow() -> bytes:
        calls.append(1)
        gate.wait(60)
        return b"answer"

    def request() -> None:
        entered.release()
        results.append(cache.get("k", slow))

    results: list[bytes] = []
    threads = [threading.Thread(target=request) for _ in range(40)]
    for t in threads:
        t.start()
    for _ in threads:  # every request has started while the first computation is held
        assert entered.acquire(timeout=60)
    wait_until(lambda: calls, 60, "the first computation to start")
    gate.set()
    for t in threads:
        t.join(60)
    assert results == [b"answer"] * 40
    assert len(calls) == 1


def test_errors_propagate_and_are_not_kept(tmp_path):
    db = tmp_path / "e.duckdb"
    cache = ReadCache(db, min_age_s=10)

    def fail() -> bytes:
        raise RuntimeError("store gone")

    with pytest.raises(RuntimeError, match="store gone"):
        cache.get("k", fail)
    assert cache.get("k", lambda: b"ok") == b"ok"


def test_entries_are_bounded(tmp_path):
    cache = ReadCache(tmp_path / "b.duckdb", max_entries=8)
    for i in range(100):
        cache.get(i, lambda i=i: str(i).encode())
    assert len(cache._slots) == 8


def test_api_answers_follow_the_store_through_the_cache(tmp_path):
    db = tmp_path / "api.duckdb"
    write_ticks(db, ("SP500",), 10, seed=1)
    app = app_for(db, tmp_path, broker_up=False, api_cache_s=0.0, api_stale_s=0.0)
    client = app.test_client()
    metrics = orjson.loads(client.get("/metrics").get_data())
    assert [(m["symbol"], m["tickcount"]) for m in metrics] == [("SP500", 10)]
    live = orjson.loads(client.get("/live").get_data())
    assert set(live[0]) == {"time", "SP500", "SP500volume"}

    write_ticks(db, ("STOXX600",), 7, seed=2, offset0=100)
    metrics = orjson.loads(client.get("/metrics").get_data())
    assert [(m["symbol"], m["tickcount"]) for m in metrics] == [("SP500", 10), ("STOXX600", 7)]
    live = orjson.loads(client.get("/live").get_data())
    assert {"STOXX600", "STOXX600volume"} <= set().union(*live)

    db.unlink()  # the store is gone: a 503, not an old answer
    response = client.get("/metrics")
    assert response.status_code == 503
    assert "no database" in orjson.loads(response.get_data())["error"]


def test_a_young_stale_answer_is_served_while_it_is_refreshed_in_the_background(tmp_path):
    db = tmp_path / "r.duckdb"
    write_ticks(db, ("A",), 5, seed=1)
    cache = ReadCache(db, min_age_s=0, max_stale_s=30)
    gate = threading.Event()
    calls: list[int] = []
    released: list[int] = []  # the held refresh got past the gate
    gate_s = 60  # a failure bound: only the test opens the gate

    def compute() -> bytes:
        calls.append(1)
        if len(calls) > 1:
            gate.wait(gate_s)  # the refresh is slow: nobody may wait for it
            released.append(1)
        return str(len(calls)).encode()

    assert cache.get("k", compute) == b"1"
    write_ticks(db, ("B",), 5, seed=2)
    assert cache.get("k", compute) == b"1"  # at once, the previous answer
    assert cache.get("k", compute) == b"1"  # the refresh is still running: no second one
    # neither waited for the held refresh: it is still at the gate (a condition, not a clock)
    assert not released
    wait_until(lambda: len(calls) == 2, REFRESH_WAIT_S, "the background refresh to start")
    assert cache.get("k", compute) == b"1"  # still held: still the previous answer
    gate.set()
    wait_until(lambda: cache.get("k", compute) == b"2", REFRESH_WAIT_S, "the refreshed answer")
    assert cache.get("k", compute) == b"2"
    assert len(calls) == 2


def test_an_old_stale_answer_is_recomputed_before_answering(tmp_path):
    db = tmp_path / "o.duckdb"
    write_ticks(db, ("A",), 5, seed=1)
    cache = ReadCache(db, min_age_s=0, max_stale_s=30)
    _calls, compute = counting()

    assert cache.get("k", compute) == b"1"
    make_older(cache, "k", 60)  # a slow poller: older than max_stale_s
    write_ticks(db, ("B",), 5, seed=2)
    assert cache.get("k", compute) == b"2"


def test_a_failed_background_refresh_lets_the_next_request_see_the_error(tmp_path):
    db = tmp_path / "f.duckdb"
    write_ticks(db, ("A",), 5, seed=1)
    cache = ReadCache(db, min_age_s=0, max_stale_s=30)
    assert cache.get("k", lambda: b"ok") == b"ok"
    write_ticks(db, ("B",), 5, seed=2)

    def fail() -> bytes:
        raise RuntimeError("store gone")

    assert cache.get("k", fail) == b"ok"  # served; the refresh fails in the background
    wait_until(lambda: cache.refresh_errors, REFRESH_WAIT_S, "the background refresh to fail")
    assert cache.refresh_errors == 1
    make_older(cache, "k", 60)  # the failed refresh kept nothing: the old answer ages out
    with pytest.raises(RuntimeError, match="store gone"):
        cache.get("k", fail)


def test_a_removed_store_is_never_answered_from_the_cache(tmp_path):
    db = tmp_path / "gone.duckdb"
    write_ticks(db, ("A",), 5, seed=1)
    cache = ReadCache(db, min_age_s=0, max_stale_s=30)
    assert cache.get("k", lambda: b"ok") == b"ok"
    db.unlink()

    def fail() -> bytes:
        raise FileNotFoundError("no database")

    with pytest.raises(FileNotFoundError):
        cache.get("k", fail)


def test_replayed_responses_equal_flasks_and_errors_are_never_replayed(tmp_path):
    db = tmp_path / "replay.duckdb"
    write_ticks(db, ("SP500", "NIKKEI225"), 20, seed=3)
    app = app_for(db, tmp_path, broker_up=False, api_cache_s=60.0)
    cache = app.extensions["marketstream_read_cache"]
    client = app.test_client()
    for path in ("/metrics", "/live?limit=5", "/candles?symbol=SP500&interval=5s"):
        first = client.get(path)
        misses = cache.misses
        again = client.get(path)
        assert cache.misses == misses  # the second came from the cache, not from Flask
        assert first.status_code == again.status_code == 200
        assert first.get_data() == again.get_data()
        assert list(first.headers.items()) == list(again.headers.items())
        assert again.headers["Access-Control-Allow-Origin"] == "*"
    for _ in range(3):  # a bad parameter: Flask's JSON 400 every time, nothing kept
        bad = client.get("/live?limit=x")
        assert bad.status_code == 400
        assert orjson.loads(bad.get_data())["parameter"] == "limit"
    assert ("replay", "/live", "limit=x") not in cache._slots or (
        cache._slots[("replay", "/live", "limit=x")].entry is None
    )
    assert client.head("/metrics").status_code == 200  # not a GET: straight to Flask
    assert client.get("/health").status_code in (200, 503)  # not cached: always asked


def test_runs_is_kept_but_its_freshness_is_taken_at_answer_time(tmp_path):
    db = tmp_path / "runs.duckdb"
    write_ticks(db, ("SP500",), 10, seed=1)
    app = app_for(db, tmp_path, broker_up=False, api_cache_s=60.0, api_stale_s=0.0)
    cache = app.extensions["marketstream_read_cache"]
    client = app.test_client()
    first = orjson.loads(client.get("/runs").get_data())["health"]
    misses = cache.misses
    time.sleep(0.2)  # the clock moves on (a loaded machine only makes the gap longer)
    second = orjson.loads(client.get("/runs").get_data())["health"]
    assert cache.misses == misses  # the store was not read again
    assert second["ticks"] == first["ticks"] == 10
    assert second["freshness_s"] >= first["freshness_s"] + 0.2  # but the clock moved on
    assert second["ingest_rate_per_s"] == first["ingest_rate_per_s"] == 10 / INGEST_WINDOW_S
