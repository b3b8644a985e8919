"""The store owns its stream position, on a real broker (:mod:`marketstream.store.positions`).

Each test would silently lose ticks if a run resumed where a consumer group left
off rather than where the store is:

* a second store on the same topic and group name gets every tick, not only
  what arrived after the first store's run;
* a copy of the file restored from a backup takes again exactly what it lacks;
* the user moves the store's position back (replay) or on (skip) with
  ``marketstream positions``;
* ``GET /lag`` and ``marketstream stats --json`` show each partition's lag
  falling to 0 while a live consumer works through the topic.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import timedelta

import duckdb
import pytest

from marketstream import store
from marketstream.consume import consume
from marketstream.processes import child_env
from marketstream.produce import ensure_topic, produce_ticks
from marketstream.ticks import generate_ticks
from marketstream_api.app import create_app
from support.processes import cli
from support.stored import store_counts, store_difference
from support.waiting import wait_until

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")
SECOND = timedelta(seconds=1)


def test_a_second_store_on_the_same_group_gets_every_tick(fresh, tmp_path) -> None:
    """The newcomer's trap: a second store under the group name the first one used.
    Resuming from the group's offsets, it got only what arrived after the first run."""
    first = generate_ticks(SYMBOLS, 400, seed=1)
    produce_ticks(first, fresh, progress=False)
    run = consume(fresh, progress=False)
    assert (run.rows_inserted, run.behind) == (len(first), 0)

    more = generate_ticks(SYMBOLS, 100, seed=2, start=first[-1].timestamp + SECOND)
    produce_ticks(more, fresh, progress=False)
    other = fresh.with_(db_path=tmp_path / "second.duckdb")  # same topic, same group
    run = consume(other, progress=False)
    assert run.rows_inserted == len(first) + len(more)
    assert store_difference(other.db_path, first + more) == (0, 0)
    # and the first store, rerun, takes only what it lacks
    run = consume(fresh, progress=False)
    assert (run.messages_processed, run.rows_inserted, run.duplicates) == (len(more), len(more), 0)


def test_a_restored_copy_of_the_file_catches_up_exactly(fresh, tmp_path) -> None:
    ticks = generate_ticks(SYMBOLS, 1000, seed=3)
    produce_ticks(ticks, fresh, progress=False)
    consume(fresh, progress=False, max_messages=1200)  # part of the topic
    backup = tmp_path / "backup.duckdb"
    shutil.copy(fresh.db_path, backup)  # the writer has closed it: no WAL beside it
    consume(fresh, progress=False)
    later = generate_ticks(SYMBOLS, 500, seed=4, start=ticks[-1].timestamp + SECOND)
    produce_ticks(later, fresh, progress=False)
    consume(fresh, progress=False)
    assert store_counts(fresh.db_path) == (4500, 4500, 4500)

    store.remove_store(fresh.db_path)  # the file is lost; the backup comes back
    shutil.copy(backup, fresh.db_path)
    run = consume(fresh, progress=False)
    # it read exactly what the backup lacked, duplicated nothing, and ended caught up
    assert (run.messages_processed, run.rows_inserted, run.duplicates) == (3300, 3300, 0)
    assert run.behind == 0
    assert store_counts(fresh.db_path) == (4500, 4500, 4500)
    assert store_difference(fresh.db_path, ticks + later) == (0, 0)


def test_the_user_replays_or_skips_with_the_positions_verb(fresh) -> None:
    ticks = generate_ticks(SYMBOLS, 200, seed=5)
    produce_ticks(ticks, fresh, progress=False)
    consume(fresh, progress=False)
    # rows lost from the store (a user deleted a day, say): a replay brings them back
    con = duckdb.connect(str(fresh.db_path))
    con.execute('DELETE FROM market_ticks WHERE "partition" = 0 AND "offset" >= 100')
    con.close()
    lost = len(ticks) - store_counts(fresh.db_path)[0]
    assert lost > 0
    done = cli(fresh, "positions", "--set", "0=100", check=False)
    assert done.returncode == 0, done.stderr
    assert f"{fresh.topic}[0]: the store resumes at offset 100" in done.stdout
    run = consume(fresh, progress=False)
    assert run.rows_inserted == lost
    assert store_difference(fresh.db_path, ticks) == (0, 0)

    # skip: what is in the topic now is never read
    skipped = generate_ticks(SYMBOLS, 50, seed=6, start=ticks[-1].timestamp + SECOND)
    produce_ticks(skipped, fresh, progress=False)
    done = cli(fresh, "positions", "--to-end", check=False)
    assert done.returncode == 0, done.stderr
    assert "lag 0" in done.stdout
    run = consume(fresh, progress=False)
    assert (run.messages_processed, run.behind) == (0, 0)
    assert store_counts(fresh.db_path)[0] == len(ticks)


def test_lag_falls_to_zero_in_the_api_and_in_stats(fresh) -> None:
    ensure_topic(fresh)
    ticks = generate_ticks(SYMBOLS, 1500, seed=8)
    produce_ticks(ticks, fresh, progress=False)
    client = create_app(fresh).test_client()

    report = json.loads(cli(fresh, "stats", "--json").stdout)
    assert report["lag"] == len(ticks)  # nothing stored yet: all of it is lag
    assert {p["lag"] for p in report["partitions"]} == {1500}  # one symbol per partition
    assert {p["stored_position"] for p in report["partitions"]} == {None}

    seen: list[int] = []
    # a live consumer process in small batches: the file is free between writes
    worker = subprocess.Popen(
        [sys.executable, "-m", "marketstream.workers", "--live"],
        env=child_env(fresh.with_(batch_size=100)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def lag_now() -> int:
            answer = client.get("/lag")
            assert answer.status_code == 200, answer.get_json()
            body = answer.get_json()
            seen.append(body["lag"])
            return body["lag"]

        wait_until(lambda: lag_now() == 0, 120, "lag 0 in /lag", interval_s=0.05)
    finally:
        worker.terminate()
        worker.wait(60)
    assert seen[0] > 0 and seen == sorted(seen, reverse=True)  # it only ever fell
    body = client.get("/lag").get_json()
    for p in body["partitions"]:
        assert p["end_offset"] == p["stored_position"] == 1500
        assert p["lag"] == 0 and p["newest_tick_age_s"] > 0
    report = json.loads(cli(fresh, "stats", "--json").stdout)
    assert report["lag"] == 0 and report["broker"] is None
    assert [(p["end_offset"], p["stored_position"], p["lag"]) for p in report["partitions"]] == [
        (1500, 1500, 0)
    ] * 3


@pytest.mark.parametrize("group", ["g-one", "g-two"])
def test_consume_exits_0_only_when_caught_up(fresh, group) -> None:
    """The CLI's last line: success only with nothing left; --max-messages leaves some."""
    produce_ticks(generate_ticks(SYMBOLS, 300, seed=9), fresh, progress=False)
    settings = fresh.with_(consumer_group=group)
    partial = cli(settings, "consume", "-q", "--max-messages", "200", check=False)
    assert partial.returncode == 1
    assert f"not caught up: 700 messages of {fresh.topic}" in partial.stderr
    done = cli(settings, "consume", "-q", check=False)
    assert done.returncode == 0, done.stderr
    assert "consumed 700 messages: 700 new rows, 0 already stored" in done.stdout
