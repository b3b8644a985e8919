"""What is stored, counted the same way for both backends (``marketstream stats``).

The exactly-once tests end by comparing these numbers with what was produced,
so they are computed in the store, not from a run's own tally: ticks, distinct
``(symbol, event_time)`` (equal to ticks when nothing is duplicated), dead
letters, and per topic-partition the highest offset stored (a tick's or a dead
letter's), which is how far the store has got in each partition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marketstream.store import lake
from marketstream.store.where import Where, describe, exists, read_connection

_COUNTS_SQL = """
    SELECT (SELECT count(*) FROM market_ticks),
           (SELECT count(*) FROM (SELECT DISTINCT symbol, event_time FROM market_ticks)),
           (SELECT count(*) FROM dead_letters),
           (SELECT count(*) FROM (SELECT DISTINCT topic, "partition", "offset" FROM dead_letters))
"""

_PARTITIONS_SQL = """
    SELECT topic, "partition", max("offset") AS max_offset,
           count(*) FILTER (WHERE kind = 'tick') AS ticks,
           count(*) FILTER (WHERE kind = 'dead') AS dead_letters
    FROM (SELECT topic, "partition", "offset", 'tick' AS kind FROM market_ticks
          UNION ALL
          SELECT topic, "partition", "offset", 'dead' AS kind FROM dead_letters)
    GROUP BY ALL ORDER BY topic, "partition"
"""


def stats(at: Where) -> dict[str, Any]:
    """The store's counts (see the module docstring); an empty store has zeros."""
    backend = "duckdb" if isinstance(at, Path) else "ducklake"
    out: dict[str, Any] = {
        "store": backend,
        "location": describe(at),
        "ticks": 0,
        "distinct_ticks": 0,
        "dead_letters": 0,
        "distinct_dead_letters": 0,
        "partitions": [],
    }
    if not exists(at):
        return out
    with read_connection(at) as con:
        ticks, distinct, dead, distinct_dead = con.execute(_COUNTS_SQL).fetchone()
        rows = con.execute(_PARTITIONS_SQL).fetchall()
        extra = lake.lake_info(con) if not isinstance(at, Path) else {}
        fences = lake.stored_offsets(con) if not isinstance(at, Path) else {}
    out.update(
        ticks=int(ticks),
        distinct_ticks=int(distinct),
        dead_letters=int(dead),
        distinct_dead_letters=int(distinct_dead),
        partitions=[
            {
                "topic": topic,
                "partition": int(partition),
                "max_offset": int(max_offset),
                "ticks": int(n_ticks),
                "dead_letters": int(n_dead),
                **({"fence": fences.get((topic, int(partition)))} if fences else {}),
            }
            for topic, partition, max_offset, n_ticks, n_dead in rows
        ],
        **extra,
    )
    return out


def render(report: dict[str, Any]) -> str:
    """The report as a person reads it (``marketstream stats`` without ``--json``)."""
    lines = [
        f"store           {report['store']}: {report['location']}",
        f"ticks           {report['ticks']:,}",
        f"distinct ticks  {report['distinct_ticks']:,}  ((symbol, event_time))",
        f"dead letters    {report['dead_letters']:,}",
    ]
    if "data_files" in report:
        lines.append(
            f"lake            {report['data_files']} data files, {report['snapshots']} snapshots"
        )
    if report["partitions"]:
        lines.append("partition       highest stored offset   ticks   dead letters")
        for p in report["partitions"]:
            lines.append(
                f"  {p['topic']}[{p['partition']}]".ljust(16)
                + f"{p['max_offset']:>21,}   {p['ticks']:>5,}   {p['dead_letters']:>12,}"
            )
    return "\n".join(lines)
