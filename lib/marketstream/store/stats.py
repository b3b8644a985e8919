"""What is stored, counted the same way for both backends (``marketstream stats``).

The exactly-once tests end by comparing these numbers with what was produced,
so they are computed in the store, not from a run's own tally: ticks, distinct
``(symbol, event_time)`` (equal to ticks when nothing is duplicated), dead
letters, and per topic-partition the store's position (where a consumer
resumes), the highest offset stored and the newest tick's event time. Over all
consumer runs: the Kafka commits refused because the group had moved on, and the
lake's commits lost to another writer and retried (both harmless one by one: the
store skips what it has; many mean a worker that stalls).
``marketstream stats`` adds each partition's end offset and lag
(:func:`marketstream.lag.annotate`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marketstream.store.positions import with_implied
from marketstream.store.where import Where, backend, describe, exists, read_connection

_COUNTS_SQL = """
    SELECT (SELECT count(*) FROM market_ticks),
           (SELECT count(*) FROM (SELECT DISTINCT symbol, event_time FROM market_ticks)),
           (SELECT count(*) FROM dead_letters),
           (SELECT count(*) FROM (SELECT DISTINCT topic, "partition", "offset" FROM dead_letters)),
           (SELECT count(*) FROM pipeline_metrics),
           (SELECT coalesce(sum(lost_commits), 0) FROM pipeline_metrics),
           (SELECT coalesce(sum(conflicts), 0) FROM pipeline_metrics)
"""

_PARTITIONS_SQL = """
    SELECT topic, "partition", max("offset") AS max_offset,
           count(*) FILTER (WHERE kind = 'tick') AS ticks,
           count(*) FILTER (WHERE kind = 'dead') AS dead_letters,
           max(event_time) AS newest_event_time
    FROM (SELECT topic, "partition", "offset", 'tick' AS kind, event_time FROM market_ticks
          UNION ALL
          SELECT topic, "partition", "offset", 'dead' AS kind, NULL FROM dead_letters)
    GROUP BY ALL ORDER BY topic, "partition"
"""


def stats(at: Where) -> dict[str, Any]:
    """The store's counts (see the module docstring); an empty store has zeros.

    Each partition's ``stored_position`` is the store's own position (where a
    consumer resumes), or, in a store an older kit wrote, its highest offset + 1
    (:func:`.positions.with_implied`).
    """
    impl = backend(at)
    out: dict[str, Any] = {
        "store": impl.name,
        "location": describe(at),
        "ticks": 0,
        "distinct_ticks": 0,
        "dead_letters": 0,
        "distinct_dead_letters": 0,
        "runs": 0,
        "lost_commits": 0,
        "conflicts": 0,
        "partitions": [],
    }
    if not exists(at):
        return out
    with read_connection(at) as con:
        ticks, distinct, dead, distinct_dead, runs, lost, conflicts = con.execute(
            _COUNTS_SQL
        ).fetchone()
        rows = con.execute(_PARTITIONS_SQL).fetchall()
        positions = with_implied(con, impl.stored_positions(con))
        extra = impl.extra_stats(con)
    held = {(topic, int(partition)): rest for topic, partition, *rest in rows}
    out.update(
        ticks=int(ticks),
        distinct_ticks=int(distinct),
        dead_letters=int(dead),
        distinct_dead_letters=int(distinct_dead),
        runs=int(runs),
        lost_commits=int(lost),
        conflicts=int(conflicts),
        # every partition with rows has a position (its own, or the one its rows imply);
        # one the store has moved past with nothing stored has a position alone
        partitions=[
            partition_row(*key, positions[key], *held.get(key, ())) for key in sorted(positions)
        ],
        **extra,
    )
    return out


def partition_row(
    topic: str,
    partition: int,
    position: int | None,
    max_offset: int | None = None,
    ticks: int = 0,
    dead_letters: int = 0,
    newest: datetime | None = None,
) -> dict[str, Any]:
    """One partition of the report (also for one only Kafka knows: :mod:`marketstream.lag`)."""
    return {
        "topic": topic,
        "partition": int(partition),
        "stored_position": position,
        "max_offset": None if max_offset is None else int(max_offset),
        "ticks": int(ticks),
        "dead_letters": int(dead_letters),
        "newest_event_time": newest.isoformat() if newest is not None else None,
    }


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def render(report: dict[str, Any]) -> str:
    """The report as a person reads it (``marketstream stats`` without ``--json``)."""
    lines = [
        f"store           {report['store']}: {report['location']}",
        f"ticks           {report['ticks']:,}",
        f"distinct ticks  {report['distinct_ticks']:,}  ((symbol, event_time))",
        f"dead letters    {report['dead_letters']:,}",
        f"consumer runs   {report['runs']:,}: {report['lost_commits']:,} Kafka commits refused "
        f"(the group had moved on), {report['conflicts']:,} lake commit conflicts retried",
    ]
    if "data_files" in report:
        lines.append(
            f"lake            {report['data_files']} data files, {report['snapshots']} snapshots"
        )
    if report.get("broker"):
        lines.append(f"kafka           {report['broker']}")
    if report["partitions"]:
        lines.append(
            "partition         end offset   stored position        lag     ticks   dead letters"
        )
        for p in report["partitions"]:
            lines.append(
                f"  {p['topic']}[{p['partition']}]".ljust(16)
                + f"{_cell(p.get('end_offset')):>12} {_cell(p['stored_position']):>17} "
                + f"{_cell(p.get('lag')):>10} {p['ticks']:>9,} {p['dead_letters']:>14,}"
            )
    return "\n".join(lines)
