"""When a tick is sent: live mode's evenly spaced stream and a CSV replayed at event-time speed.

Why one schedule for both (:func:`schedule`): a tick is due at ``anchor +
offset`` on the monotonic clock, where the offset is ``index / rate`` in live
mode and ``(event time - first event time) / speed`` in a replay. Sleeping
towards an absolute due time, not for an interval after the previous send,
keeps sleep jitter from adding up: measured here through a real broker, the
150-tick demo CSV (49 s of event time) replayed by ``marketstream produce
--pace`` took 4.92-4.93 s at ``--speed 10`` (4.90 s ideal) and 1.01 s at
``--speed 50`` (0.98 s), where sleeping the gaps would add every send's cost. A schedule more than
:data:`MAX_BACKLOG_S` behind (a suspended laptop, a stalled broker) moves its
anchor forward instead of bursting to catch up: live mode skips the missed
instants, a replay sends every tick and shifts the rest later.

Why the clock and the sleeper are parameters (:func:`paced`): the tests step
a fake clock through hours of event time in microseconds, and the CLI's
Ctrl-C (a ``threading.Event``'s ``wait``) ends a replay between two ticks.

A replay goes in file order. A row whose event time is earlier than one
before it goes out at once, without moving the schedule; bad rows
(:class:`~marketstream.ticks.CsvProblem`) pass through at once too, so the
producer names them by line and skips them as without pacing. ``retime``
stamps each tick with the wall-clock time it is due (the spacing divided by
the speed), so historical data can drive live mode and the dashboards, whose
windows end now.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from marketstream.errors import ReplayError
from marketstream.ticks import CsvProblem, Tick

__all__ = ["MAX_BACKLOG_S", "Pace", "paced", "schedule"]

#: If a schedule falls further behind than this, it is re-anchored instead of bursting.
MAX_BACKLOG_S = 1.0


def schedule(
    anchor: float, offset_s: float, now: float, max_backlog_s: float = MAX_BACKLOG_S
) -> tuple[float, float]:
    """When the item ``offset_s`` after the anchor is due, and the (possibly moved) anchor.

    More than ``max_backlog_s`` late, the item is due now and the anchor moves
    forward by the lateness, so what follows keeps its spacing from here on.
    """
    due = anchor + offset_s
    if now - due > max_backlog_s:
        anchor = now - offset_s
        due = now
    return due, anchor


@dataclass(frozen=True)
class Pace:
    """How to replay: ``speed`` times faster than the event times; ``retime`` to stamp now."""

    speed: float = 1.0
    retime: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise ReplayError(f"--speed {self.speed:g}: give a positive number (10: 10x faster)")


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def paced(
    items: Iterable[Tick | CsvProblem],
    pace: Pace,
    *,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[float], bool] = _sleep,
    wall: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Iterator[Tick | CsvProblem]:
    """Yield each item when it is due (see the module docstring).

    ``clock`` is a monotonic clock in seconds; ``wait(seconds)`` sleeps and
    returns True to stop the replay (``threading.Event.wait`` does both);
    ``wall`` gives the UTC time of the first tick, for ``retime``.
    """
    first: datetime | None = None
    anchor = started = 0.0
    wall_start = datetime.min.replace(tzinfo=UTC)
    offset = 0.0
    for item in items:
        if isinstance(item, CsvProblem):
            yield item
            continue
        if first is None:
            first, anchor, wall_start = item.timestamp, clock(), wall()
            started = anchor
        # never earlier than the tick before: an out-of-order row goes out at once
        offset = max(offset, (item.timestamp - first).total_seconds() / pace.speed)
        due, anchor = schedule(anchor, offset, clock())
        delay = due - clock()
        if delay > 0 and wait(delay):
            return
        if pace.retime:
            item = replace(item, timestamp=wall_start + timedelta(seconds=due - started))
        yield item
