"""Live mode's paced producer (:mod:`marketstream.live`): its schedule, without a broker.
``marketstream live`` end to end on a real broker: tests/integration/test_live.py."""

from __future__ import annotations

import pytest

from marketstream.live import tick_schedule
from marketstream.pacing import MAX_BACKLOG_S

pytestmark = pytest.mark.usefixtures("no_stray_children")


def test_schedule_is_anchored_so_jitter_never_accumulates():
    start, interval = 100.0, 1 / 12
    due, anchor = tick_schedule(start, 1200, interval, now=start + 99.9)
    assert anchor == start and due == pytest.approx(start + 100.0)
    due, anchor = tick_schedule(start, 1200, interval, now=start + 100.5)  # a little late
    assert anchor == start and due == pytest.approx(start + 100.0)


def test_schedule_skips_a_long_backlog_instead_of_bursting():
    start, interval = 100.0, 1 / 12
    now = start + 100.0 + MAX_BACKLOG_S + 5  # e.g. a suspended laptop
    due, anchor = tick_schedule(start, 1200, interval, now=now)
    assert due == now
    assert anchor + 1201 * interval == pytest.approx(now + interval)  # next one on time
