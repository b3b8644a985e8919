"""The Voila page's refresh logic (:mod:`marketstream.livepage`) on a DuckDB file, in a
thread, on an event loop and headless under papermill. In a real browser:
tests/browser/test_voila_browser.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pandas as pd
import papermill
import pytest

from marketstream.live import LIVE_NOTEBOOK
from marketstream.livepage import LivePage, status_html
from marketstream.settings import Settings
from support.factories import recent_ticks, write_store

pytestmark = pytest.mark.usefixtures("no_stray_children")

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")


def test_live_page_draws_from_the_store_and_waits_politely_without_one(tmp_path):
    settings = Settings().with_(db_path=tmp_path / "m.duckdb", symbols=SYMBOLS)
    page = LivePage(settings, window_s=60, refresh_s=0.1)
    assert page.refresh() is False
    assert "waiting for data" in page.status.value and "no database" in page.status.value

    write_store(settings.db_path, recent_ticks(SYMBOLS, 30), hold=False)
    assert page.refresh() is True, page.last_error
    assert [len(t.x) for t in page.traces("price")] == [30] * 3
    assert [len(t.y) for t in page.traces("volume")] == [30] * 3
    (table,) = page.traces("stats")
    assert list(table.cells.values[0]) == sorted(SYMBOLS)
    (freshness,) = page.traces("freshness")
    assert len(freshness.y) == 1
    assert "● live" in page.status.value and "360</b> ticks" in page.status.value

    page.start(max_refreshes=3)
    page.wait(timeout_s=120)  # returns as soon as the three refreshes are done
    assert not page.running
    assert page.refreshes == 5 and len(page.traces("freshness")[0].y) == 4


def test_live_page_refreshes_on_the_running_event_loop(tmp_path):
    """In a kernel the loop is an asyncio task (widgets are not thread-safe), not a thread."""
    settings = Settings().with_(db_path=tmp_path / "m.duckdb", symbols=SYMBOLS)
    write_store(settings.db_path, recent_ticks(SYMBOLS, 10), hold=False)
    page = LivePage(settings, window_s=60, refresh_s=0.05)
    page.figure._view_count = 1  # a browser shows it (before one, the loop only waits)

    async def run() -> None:
        page.start(max_refreshes=3)
        assert page.running and page._thread is None
        while page.running:
            await asyncio.sleep(0.02)

    asyncio.run(run())
    assert page.refreshes == 3 and page.last_error is None
    assert [len(t.x) for t in page.traces("price")] == [10] * 3


def test_a_browser_view_that_appears_later_is_sent_the_series(tmp_path):
    """plotly sends a FigureWidget's browser views only what changed, and the first
    refreshes run before Voila's page has its view. A view that appears after the last new
    tick (a page opened once a replay has ended) still gets the series and the table at the
    next refresh, whole. ``_view_count`` is what ipywidgets' frontend sets when it shows a
    view of the widget; the messages are what plotly sends the views."""
    settings = Settings().with_(db_path=tmp_path / "m.duckdb", symbols=SYMBOLS)
    write_store(settings.db_path, recent_ticks(SYMBOLS, 20), hold=False)
    page = LivePage(settings, window_s=60, refresh_s=0.1)
    sent: list[dict] = []
    page.figure.observe(
        lambda change: change["new"] and sent.append(change["new"]), names=["_py2js_update"]
    )
    series = [i for i, trace in enumerate(page.figure.data) if trace.meta in ("price", "volume")]
    (table,) = [i for i, trace in enumerate(page.figure.data) if trace.meta == "stats"]

    def last_sent() -> tuple[list[int], list[str]] | None:
        """Points per series and the table's symbols, as the last message that carried the
        series sent them (None: no message did)."""
        carrying = [m for m in sent if set(series) <= set(m["style_traces"])]
        if not carrying:
            return None
        message = carrying[-1]
        data = {
            key: dict(zip(message["style_traces"], values, strict=True))
            for key, values in message["style_data"].items()
        }
        return [len(data["x"][i]) for i in series], data["cells.values"][table][0]

    assert page.refresh() and last_sent() == ([20] * 6, sorted(SYMBOLS))
    sent.clear()
    assert page.refresh() and last_sent() is None  # no new tick: only the freshness goes
    page.figure._view_count = 1  # a page opened: its view starts from the figure as built
    assert page.refresh() and last_sent() == ([20] * 6, sorted(SYMBOLS))
    sent.clear()
    assert page.refresh() and last_sent() == ([20] * 6, sorted(SYMBOLS))  # still building
    sent.clear()
    page.figure._js2py_traceDeltas = BUILT  # its plot is built: everything once more
    assert page.refresh() and last_sent() == ([20] * 6, sorted(SYMBOLS))
    sent.clear()
    assert page.refresh() and last_sent() is None


#: What plotly's browser view sends once its plot is built (and after each update it
#: applies); an edit id no update had leaves the figure's traces as they are.
BUILT = {"trace_deltas": [], "trace_edit_id": -1}


def test_a_built_view_is_drawn_for_at_once_not_at_the_next_refresh(tmp_path):
    """With a refresh period far longer than the wait, the view's "built" message alone
    brings the draw that sends it the series; a view that never showed keeps the kernel's
    page from pausing (Voila's pre-heated kernel runs before anyone asks for the page)."""
    settings = Settings().with_(db_path=tmp_path / "m.duckdb", symbols=SYMBOLS)
    write_store(settings.db_path, recent_ticks(SYMBOLS, 10), hold=False)
    page = LivePage(settings, window_s=60, refresh_s=3600, orphan_after_s=0.0)
    assert not page.orphaned  # never viewed: waits for its first browser
    page.orphan_after_s = 3600.0

    async def run() -> int:
        page.start()
        await asyncio.sleep(0)  # the loop's task starts and waits
        page.figure._view_count = 1
        page.figure._js2py_traceDeltas = BUILT
        for _ in range(2000):  # ends as soon as the woken loop has drawn
            if page.refreshes:
                break
            await asyncio.sleep(0.01)
        page.stop()
        return page.refreshes

    assert asyncio.run(run()) == 1
    assert [len(t.x) for t in page.traces("price")] == [10] * 3


def test_status_bar_escapes_errors():
    text = status_html(None, 2.0, error="<script>x</script>")
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_live_notebook_runs_headless_with_papermill(tmp_path):
    """The Voila page's notebook also runs under papermill and ends (bounded refreshes)."""
    db = write_store(tmp_path / "m.duckdb", recent_ticks(SYMBOLS, 20), hold=False)
    out = tmp_path / "05_live.out.ipynb"
    papermill.execute_notebook(
        str(LIVE_NOTEBOOK),
        str(out),
        parameters={
            "settings_overrides": {"db_path": str(db)},
            "refresh_s": 0.2,
            "max_refreshes": 2,
        },
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=120,
    )
    assert "application/vnd.jupyter.widget-view+json" in out.read_text(encoding="utf-8")


def test_status_bar_shows_the_lag_or_that_kafka_does_not_answer():
    from marketstream.lag import LagReport, PartitionLag
    from marketstream.livepage import Snapshot

    rows = [PartitionLag("t", 0, 100, 60, 40, 1.0), PartitionLag("t", 1, 10, 10, 0, 2.0)]
    now = datetime.now(UTC)
    snapshot = Snapshot(now, 70, now.replace(tzinfo=None), pd.DataFrame(), pd.DataFrame())
    snapshot.lag = LagReport(rows)
    assert 'lag <b class="ms-lag">40</b> messages' in status_html(snapshot, 2.0)
    snapshot.lag = LagReport(rows, broker_error="no Kafka broker answers at localhost:1")
    assert "lag unknown: Kafka does not answer" in status_html(snapshot, 2.0)
