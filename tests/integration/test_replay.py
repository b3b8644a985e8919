"""``marketstream produce --pace`` on a real broker: a CSV with bad rows replayed at high
speed delivers every good tick, at the pace of its event times, and names the bad rows."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, timedelta

from marketstream import store
from marketstream.consume import consume
from marketstream.processes import child_env
from marketstream.settings import Settings
from marketstream.ticks import generate_ticks, write_csv

SPEED = 50.0
#: ``produce`` prints its time with two decimals ("in 0.38s"): at most this much below it.
PRINTED_ROUNDING_S = 0.005


def test_a_paced_replay_delivers_every_good_tick_and_names_the_bad_rows(fresh: Settings):
    ticks = generate_ticks(("SP500", "DAX", "N225"), 20, seed=7)  # 19 s of event time
    write_csv(ticks, fresh.csv_path)
    lines = fresh.csv_path.read_text().splitlines()
    bad = [
        "2025-01-06T14:30:05Z,SP500,not-a-price,10",
        "yesterday,DAX,100.0,10",
        "2025-01-06T14:30:06Z,N225,-5,10",
    ]
    # bad rows among the good ones: lines 12, 24 and 36 of the file (the header is line 1)
    for position, row in zip((11, 23, 35), bad, strict=True):
        lines.insert(position, row)
    fresh.csv_path.write_text("\n".join(lines) + "\n")

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "marketstream.cli",
            "produce",
            "--pace",
            "--speed",
            str(SPEED),
            "-q",
        ],
        env=child_env(fresh),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"sent 60 ticks \(0 failed, 3 bad rows skipped\)", result.stdout)
    for line in (12, 24, 36):
        assert f"line {line}: " in result.stderr
    assert "not-a-price" in result.stderr and "yesterday" in result.stderr
    # Paced, not all at once, as a rule rather than a stopwatch: the produce clock starts
    # before the first tick anchors the schedule, and the last tick is never sent before
    # span / SPEED after that, so the time printed is at least that however slow the
    # machine (sent at once, 60 ticks take a few ms). How much longer a loaded machine
    # takes is not a property of the replay, so it has no upper bound here.
    elapsed = float(re.search(r"in ([\d.]+)s", result.stdout).group(1))
    span = (ticks[-1].timestamp - ticks[0].timestamp).total_seconds()
    assert elapsed >= span / SPEED - PRINTED_ROUNDING_S, result.stdout

    run = consume(fresh, progress=False, idle_timeout_s=5)
    assert run.rows_inserted == 60 and run.errors == 0
    stored = store.ticks(fresh.db_path)
    got = {
        (r.symbol, r.event_time.to_pydatetime().replace(tzinfo=UTC)) for r in stored.itertuples()
    }
    assert got == {(t.symbol, t.timestamp) for t in ticks}
    # sent in file order: within each partition, the offsets follow the file's event times
    for partition, part in stored.groupby("partition"):
        by_offset = part.sort_values("offset")["event_time"].tolist()
        assert by_offset == sorted(by_offset), partition
    assert max(t.timestamp for t in ticks) - min(t.timestamp for t in ticks) == timedelta(
        seconds=19
    )
