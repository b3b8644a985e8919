"""The API's read cache: exact while the store is unchanged, recomputed after a write, shared."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from marketstream.settings import Settings
from marketstream.store import TICK_BATCH_SCHEMA, TickWriter
from marketstream.ticks import generate_ticks
from marketstream_api.app import create_app
from marketstream_api.cache import ReadCache, store_signature


def write_ticks(db: Path, symbols: tuple[str, ...], n: int, seed: int, offset0: int = 0) -> None:
    ticks = generate_ticks(symbols, n, seed=seed)
    now = datetime.now(UTC).replace(tzinfo=None)
    table = pa.table(
        {
            "symbol": [t.symbol for t in ticks],
            "event_time": [t.timestamp.replace(tzinfo=None) for t in ticks],
            "price": [t.price for t in ticks],
            "volume": [t.volume for t in ticks],
            "topic": ["t"] * len(ticks),
            "partition": pa.array([0] * len(ticks), pa.int32()),
            "offset": list(range(offset0, offset0 + len(ticks))),
            "received_at": [now] * len(ticks),
        },
        schema=TICK_BATCH_SCHEMA,
    )
    with TickWriter(db, hold=False) as writer:
        writer.write_batch(table)


def test_signature_changes_with_every_committed_write(tmp_path):
    db = tmp_path / "s.duckdb"
    assert store_signature(db) == (0, 0, 0, 0)
    write_ticks(db, ("A",), 5, seed=1)
    first = store_signature(db)
    assert first != (0, 0, 0, 0)
    assert store_signature(db) == first  # reading does not change it
    write_ticks(db, ("B",), 5, seed=2)
    assert store_signature(db) != first


def test_unchanged_store_computes_once_and_a_write_recomputes(tmp_path):
    db = tmp_path / "c.duckdb"
    write_ticks(db, ("A",), 5, seed=1)
    cache = ReadCache(db, min_age_s=0)
    calls = []

    def compute() -> bytes:
        calls.append(1)
        return str(len(calls)).encode()

    assert [cache.get("k", compute) for _ in range(20)] == [b"1"] * 20
    write_ticks(db, ("B",), 5, seed=2)
    assert cache.get("k", compute) == b"2"
    assert cache.get("other", compute) == b"3"  # keys are separate
    assert (cache.hits, cache.misses) == (19, 3)


def test_min_age_bounds_how_often_a_moving_store_is_read(tmp_path):
    db = tmp_path / "m.duckdb"
    write_ticks(db, ("A",), 5, seed=1)
    cache = ReadCache(db, min_age_s=0.5)
    calls = []

    def compute() -> bytes:
        calls.append(1)
        return str(len(calls)).encode()

    assert cache.get("k", compute) == b"1"
    write_ticks(db, ("B",), 5, seed=2)
    assert cache.get("k", compute) == b"1"  # younger than min_age: kept
    time.sleep(0.6)
    assert cache.get("k", compute) == b"2"


def test_concurrent_requests_share_one_computation(tmp_path):
    db = tmp_path / "x.duckdb"
    write_ticks(db, ("A",), 5, seed=1)
    cache = ReadCache(db, min_age_s=0)
    calls = []
    gate = threading.Event()

    def slow() -> bytes:
        calls.append(1)
        gate.wait(5)
        return b"answer"

    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get("k", slow))) for _ in range(40)
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(10)
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
    settings = Settings().with_(db_path=db, log_path=tmp_path / "api.log", api_cache_s=0.0)
    client = create_app(settings, broker_check=lambda servers, timeout: False).test_client()
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
