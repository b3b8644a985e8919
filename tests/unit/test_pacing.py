"""Paced replay (:mod:`marketstream.pacing`) on a fake clock: when each tick goes, without
sleeping. A paced replay through a real broker: tests/integration/test_replay.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from marketstream.errors import ReplayError
from marketstream.pacing import MAX_BACKLOG_S, Pace, paced, schedule
from marketstream.ticks import CsvProblem, Tick

T0 = datetime(2025, 1, 6, 14, 30, tzinfo=UTC)
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class FakeClock:
    """A monotonic clock that only moves when the replay waits (or a test says so)."""

    def __init__(self, start: float = 1000.0, stop_after: int | None = None):
        self.now = start
        self.waits: list[float] = []
        self.stop_after = stop_after

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return self.stop_after is not None and len(self.waits) >= self.stop_after


def tick(seconds: float, symbol: str = "SP500") -> Tick:
    return Tick(T0 + timedelta(seconds=seconds), symbol, 100.0, 1)


def replay(items: list[Tick | CsvProblem], pace: Pace, clock: FakeClock) -> list[tuple]:
    """(clock time, item) for each item the replay yields."""
    return [
        (clock.now, item)
        for item in paced(items, pace, clock=clock, wait=clock.wait, wall=lambda: NOW)
    ]


def test_each_tick_goes_at_its_event_time_divided_by_the_speed():
    clock = FakeClock()
    sent = replay([tick(0), tick(0, "DAX"), tick(1), tick(3.5)], Pace(speed=10), clock)
    assert [round(t - 1000.0, 6) for t, _ in sent] == [0.0, 0.0, 0.1, 0.35]
    assert [item.timestamp for _, item in sent] == [tick(s).timestamp for s in (0, 0, 1, 3.5)]


def test_speed_one_is_real_time():
    clock = FakeClock()
    sent = replay([tick(0), tick(60)], Pace(), clock)
    assert sent[-1][0] - 1000.0 == pytest.approx(60.0)


def test_bad_rows_pass_at_once_and_the_good_ones_still_go():
    clock = FakeClock()
    bad = CsvProblem(3, "price 'abc' is not a number")
    sent = replay([tick(0), bad, tick(2)], Pace(speed=2), clock)
    assert [item for _, item in sent] == [tick(0), bad, tick(2)]
    assert sent[1][0] == 1000.0 and sent[2][0] == pytest.approx(1001.0)


def test_a_row_earlier_than_the_one_before_goes_at_once_and_moves_nothing():
    clock = FakeClock()
    sent = replay([tick(0), tick(10), tick(5), tick(11)], Pace(), clock)
    assert [round(t - 1000.0, 6) for t, _ in sent] == [0.0, 10.0, 10.0, 11.0]


def test_a_late_replay_shifts_the_rest_instead_of_bursting():
    clock = FakeClock()
    items = iter([tick(0), tick(1), tick(2), tick(3)])
    out = paced(items, Pace(), clock=clock, wait=clock.wait)
    assert next(out) == tick(0)
    clock.now += 1 + MAX_BACKLOG_S + 4  # the producer stalled ~6 s after the first tick
    late = clock.now
    assert next(out) == tick(1) and clock.now == late  # due now, not skipped
    assert next(out) == tick(2) and clock.now == pytest.approx(late + 1)  # spacing kept
    assert next(out) == tick(3) and clock.now == pytest.approx(late + 2)


def test_a_little_lateness_is_caught_up_without_moving_the_schedule():
    due, anchor = schedule(100.0, 5.0, now=105.5)
    assert (due, anchor) == (105.0, 100.0)
    due, anchor = schedule(100.0, 5.0, now=105.0 + MAX_BACKLOG_S + 1)
    assert due == 107.0 and anchor == 102.0


def test_retime_stamps_each_tick_with_when_it_is_due():
    clock = FakeClock()
    sent = replay([tick(0), tick(0, "DAX"), tick(30)], Pace(speed=30, retime=True), clock)
    assert [item.timestamp for _, item in sent] == [NOW, NOW, NOW + timedelta(seconds=1)]
    assert [item.symbol for _, item in sent] == ["SP500", "DAX", "SP500"]


def test_a_stop_during_a_wait_ends_the_replay():
    clock = FakeClock(stop_after=2)
    sent = replay([tick(0), tick(1), tick(2), tick(3)], Pace(), clock)
    assert [item for _, item in sent] == [tick(0), tick(1)]


@pytest.mark.parametrize("speed", [0, -1, float("inf"), float("nan")])
def test_a_speed_must_be_positive(speed):
    with pytest.raises(ReplayError, match="--speed"):
        Pace(speed=speed)
