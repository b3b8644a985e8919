"""The Voila live page: one plotly FigureWidget whose data is replaced in place every few seconds.

Why it is built this way:

- A Voila page runs its notebook once, then keeps the kernel connected to the
  browser. Changing a FigureWidget's trace data in the kernel sends only that
  data over the widget channel, and plotly.js restyles the chart where it is:
  no reload, no flicker, and the user's zoom survives (``uirevision``).
- All charts (prices, volumes, freshness, statistics table) are subplots of a
  *single* FigureWidget. Each FigureWidget is an anywidget that ships plotly's
  5 MB JavaScript bundle with its state; with one widget per chart, pages
  loaded slowly and some charts never received their updates in Voila 0.5.
  One widget loads once and updates reliably, with one message per refresh.
- Widgets are not thread-safe (ipywidgets defers, and can drop, a change made
  while the kernel applies a message from the browser to the same widget), so
  in a kernel the refresh loop is an asyncio task on the kernel's own event
  loop; only the DuckDB read runs in a worker thread. Outside a kernel (tests,
  scripts) a daemon thread refreshes instead.
- The cells all finish at once (Voila shows the page, papermill and nbval end),
  and the loop lives as long as the kernel, or ``max_refreshes`` for headless runs.

Reads go through :mod:`marketstream.store` only, whose read-only connections
wait politely while the live consumer holds the file; anything that still goes
wrong becomes one line in the page's status bar, never a traceback.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import html
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from marketstream import store
from marketstream.lag import LagReport
from marketstream.lag import measure as measure_lag
from marketstream.settings import Settings, variable

#: Columns of the statistics table: the store's ``market_metrics``, in the API's order.
STATS_COLUMNS = store.METRIC_COLUMNS

#: The variable naming the file :func:`announce_ready` makes (set by live mode for Voila).
PAGE_READY_ENV = variable("MARKET_PAGE_READY")

#: Freshness samples kept for the freshness chart (one per refresh).
FRESHNESS_HISTORY = 300

#: In a kernel, stop refreshing when no browser has acknowledged an update for this long.
ORPHAN_AFTER_S = 60.0

#: What the browser's plotly view sends back after applying an update (or after a zoom).
_FRONTEND_TRAITS = ("_js2py_traceDeltas", "_js2py_relayout", "_js2py_restyle", "_js2py_update")

#: Pixel heights of the page's rows: one per symbol's price, then volume, freshness, table;
#: the gap between rows leaves room for each row's title.
PRICE_ROW_PX, VOLUME_ROW_PX, FRESHNESS_ROW_PX, TABLE_ROW_PX, GAP_PX = 150, 220, 170, 150, 50
MARGIN = {"l": 70, "r": 20, "t": 40, "b": 20}


@dataclass
class Snapshot:
    """One read of the store: everything a refresh draws."""

    taken_at: datetime
    ticks: int
    newest: datetime | None
    wide: pd.DataFrame
    metrics: pd.DataFrame
    #: the store's lag behind the topic (:mod:`marketstream.lag`); None if not measured
    lag: LagReport | None = None

    @property
    def freshness_s(self) -> float | None:
        """Seconds from the newest stored tick's event time to this read."""
        if self.newest is None:
            return None
        return (self.taken_at - self.newest.replace(tzinfo=UTC)).total_seconds()


def read_snapshot(settings: Settings, window_s: int) -> Snapshot:
    """Health, the last ``window_s`` seconds per symbol, and the per-symbol statistics."""
    taken_at = datetime.now(UTC)
    at = store.locate(settings)
    health = store.health(at)
    since = (taken_at - timedelta(seconds=window_s)).replace(tzinfo=None)
    wide = store.live_wide(at, limit=window_s, since=since)
    metrics = store.market_metrics(at)
    lag = measure_lag(settings, at)
    return Snapshot(taken_at, health["ticks"], health["newest_event_time"], wide, metrics, lag)


def lag_text(lag: LagReport | None) -> str:
    """The status bar's lag: messages in the topic the store has not taken yet."""
    if lag is None:
        return ""
    if lag.broker_error is not None:
        return " · lag unknown: Kafka does not answer"
    return f' · lag <b class="ms-lag">{lag.total:,}</b> messages'


def live_figure(symbols: tuple[str, ...]) -> go.FigureWidget:
    """Every chart of the page as rows of one figure; traces are tagged by ``meta``.

    Traces, in order: one price line per symbol, one volume bar per symbol,
    the freshness line, the statistics table.
    """
    n = len(symbols)
    heights = [PRICE_ROW_PX] * n + [VOLUME_ROW_PX, FRESHNESS_ROW_PX, TABLE_ROW_PX]
    plot_px = sum(heights) + GAP_PX * (len(heights) - 1)
    fig = make_subplots(
        rows=len(heights),
        cols=1,
        row_heights=heights,
        vertical_spacing=GAP_PX / plot_px,
        subplot_titles=[
            *(f"{s} — last price each second" for s in symbols),
            "Volume per second",
            "Freshness: now − newest event time (s)",
            "Market statistics",
        ],
        specs=[[{"type": "xy"}]] * (n + 2) + [[{"type": "table"}]],
    )
    colors = dict(zip(symbols, itertools.cycle(qualitative.Plotly), strict=False))
    for row, symbol in enumerate(symbols, start=1):
        price = go.Scatter(
            x=[],
            y=[],
            mode="lines",
            name=symbol,
            meta="price",
            showlegend=False,
            line={"color": colors[symbol]},
        )
        fig.add_trace(price, row=row, col=1)
    for symbol in symbols:
        volume = go.Bar(x=[], y=[], name=symbol, meta="volume", marker_color=colors[symbol])
        fig.add_trace(volume, row=n + 1, col=1)
    freshness = go.Scatter(
        x=[], y=[], mode="lines+markers", name="freshness", meta="freshness", showlegend=False
    )
    fig.add_trace(freshness, row=n + 2, col=1)
    table = go.Table(
        header={"values": list(STATS_COLUMNS), "align": "left"},
        cells={"values": [[] for _ in STATS_COLUMNS], "align": "left"},
        meta="stats",
    )
    fig.add_trace(table, row=n + 3, col=1)
    for row in range(1, n + 2):  # prices and volumes: one time axis, labelled under volumes
        fig.update_xaxes(matches="x", showticklabels=row == n + 1, row=row, col=1)
    fig.update_yaxes(rangemode="tozero", row=n + 2, col=1)
    volume_top = fig.layout[f"yaxis{n + 1}"].domain[1]
    fig.update_layout(
        height=plot_px + MARGIN["t"] + MARGIN["b"],
        barmode="stack",
        margin=MARGIN,
        legend={"x": 1, "xanchor": "right", "y": volume_top, "yanchor": "top"},
        uirevision="live",  # keep the user's zoom and hidden traces across updates
    )
    return go.FigureWidget(fig)


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    return frame[name].tolist() if name in frame.columns else []


def stats_cells(metrics: pd.DataFrame) -> list[list[Any]]:
    """Table cells, column by column, with numbers formatted for people."""
    cells: list[list[Any]] = []
    for name in STATS_COLUMNS:
        values = _column(metrics, name)
        if name in ("avgprice", "minprice", "maxprice"):
            values = [f"{v:,.2f}" for v in values]
        elif name in ("tickcount", "totalvolume"):
            values = [f"{int(v):,}" for v in values]
        cells.append(values)
    return cells


def status_html(snapshot: Snapshot | None, refresh_s: float, error: str | None = None) -> str:
    """The status bar: tick count, newest event, freshness, lag, or what is wrong."""
    now = datetime.now(UTC).strftime("%H:%M:%S")
    if error is not None:
        return (
            f'<div class="ms-status ms-waiting">⏳ waiting for data: {html.escape(error)} '
            f"(retrying every {refresh_s:g} s, {now} UTC)</div>"
        )
    if snapshot is None or snapshot.newest is None:
        return f'<div class="ms-status ms-waiting">⏳ no ticks yet ({now} UTC)</div>'
    newest = snapshot.newest.strftime("%H:%M:%S.%f")[:-3]
    return (
        f'<div class="ms-status ms-live">● live · <b class="ms-ticks">{snapshot.ticks:,}</b> '
        f"ticks · newest event {newest} UTC · freshness "
        f'<b class="ms-freshness">{snapshot.freshness_s:.2f} s</b>{lag_text(snapshot.lag)} · '
        f"refreshed {now} UTC, every {refresh_s:g} s</div>"
    )


def paused_html(after_s: float) -> str:
    """The status bar once refreshing stopped because no browser was showing the page."""
    return (
        '<div class="ms-status ms-paused">⏸ paused: no browser showed this page for '
        f"{after_s:g} s; reload the page to resume</div>"
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


#: Pages refreshing from a thread, stopped at interpreter exit (see :func:`_stop_all`).
_THREADED: weakref.WeakSet[LivePage] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Let a threaded refresh finish before the interpreter exits.

    A daemon thread frozen at exit in the middle of a DuckDB call aborts the
    process ("exception not rethrown") as the C++ stack unwinds; stopping the
    loop and joining it first makes every exit quiet.
    """
    for page in list(_THREADED):
        page.stop(timeout_s=5.0)


class LivePage:
    """The live page's widgets and the loop that refreshes them in place."""

    def __init__(
        self,
        settings: Settings,
        *,
        window_s: int = 300,
        refresh_s: float = 2.0,
        orphan_after_s: float = ORPHAN_AFTER_S,
    ):
        self.settings = settings
        self.symbols = tuple(settings.symbols)
        self.window_s = window_s
        self.refresh_s = refresh_s
        self.orphan_after_s = orphan_after_s
        self.status = widgets.HTML(status_html(None, refresh_s))
        self.figure = live_figure(self.symbols)
        self.view = widgets.VBox([self.status, self.figure], layout=widgets.Layout(width="100%"))
        self.refreshes = 0
        self.last_error: str | None = None
        self._history: deque[tuple[datetime, float]] = deque(maxlen=FRESHNESS_HISTORY)
        self._newest_drawn: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._seen_at = time.monotonic()
        #: a browser view was created and has not yet said it is built
        self._view_building = False
        #: a built view needs the series and the table sent whole at the next draw
        self._new_view = False
        #: a browser view has existed (before one, the page is not orphaned: Voila's
        #: pre-heated kernel runs the notebook before anyone asks for the page)
        self._viewed = False
        #: set to cut the loop's wait short (a new view is built: draw for it now)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.figure.observe(self._on_frontend, names=list(_FRONTEND_TRAITS))
        self.figure.observe(self._on_view_count, names=["_view_count"])

    # ------------------------------------------------------------------ frontend

    def _on_frontend(self, change: dict[str, Any]) -> None:
        """A view answered: it acknowledged an update, or it has just built its plot.

        plotly's view sends its trace deltas once its ``Plotly.newPlot`` has
        resolved, and again after each update it applies, so the first deltas after
        a view was created say that the view is built and takes updates: it gets
        everything now, instead of at the next refresh (up to ``refresh_s`` later).
        """
        if not change["new"]:
            return
        self._seen_at = time.monotonic()
        if self._view_building and change["name"] == "_js2py_traceDeltas":
            self._view_building = False
            self._new_view = True
            if self._loop is not None and self._wake is not None:
                self._loop.call_soon_threadsafe(self._wake.set)

    def _on_view_count(self, change: dict[str, Any]) -> None:
        """A browser view of the figure appeared: once built, it is sent everything.

        plotly syncs a FigureWidget's traces to the browser once, as built (empty
        here), and each later change only as an update message to the views there
        are. The notebook's first draw runs before Voila's page has its view (with
        the pre-heated kernel of ``voila.json``, before anyone asked for the page),
        so that view starts empty; a stream that keeps ticking fills it at the next
        tick, but a page opened after a replay's last tick (live mode stays up after
        it) kept empty charts for good. ipywidgets counts the views (plotly turns the
        count on) and tells the kernel when it changes. An update sent before the
        view's plot exists is lost to it, so the draw waits for the view to say it is
        built (:meth:`_on_frontend`); a view that never says so still gets everything
        at the next refresh.
        """
        if (change["new"] or 0) > (change["old"] or 0):
            self._viewed = True
            self._seen_at = time.monotonic()
            self._view_building = True

    @property
    def orphaned(self) -> bool:
        """No browser has acknowledged an update for ``orphan_after_s``.

        The page's tab was closed (Voila 0.5.13 fails to shut its kernel down
        then: its unload request is refused for a missing XSRF token), or a
        headless run has no frontend. Refreshing on would keep reading the
        store and keep the kernel busy for ever; stopping lets the server
        cull the idle kernel. A kernel no browser has viewed yet waits for its first
        (Voila's pre-heated kernel).
        """
        if not self._viewed:
            return False
        return time.monotonic() - self._seen_at > self.orphan_after_s

    # ------------------------------------------------------------------ traces

    def traces(self, meta: str) -> list[Any]:
        """The figure's traces tagged ``meta`` ("price", "volume", "freshness" or "stats")."""
        return [t for t in self.figure.data if t.meta == meta]

    # ------------------------------------------------------------------ drawing

    def _draw_series(self, wide: pd.DataFrame) -> None:
        times = _column(wide, "time")
        for trace, symbol in zip(self.traces("price"), self.symbols, strict=True):
            trace.x, trace.y = times, _column(wide, symbol)
        for trace, symbol in zip(self.traces("volume"), self.symbols, strict=True):
            trace.x, trace.y = times, _column(wide, f"{symbol}volume")

    def _draw_freshness(self, snapshot: Snapshot) -> None:
        if snapshot.freshness_s is None:
            return
        self._history.append((snapshot.taken_at.replace(tzinfo=None), snapshot.freshness_s))
        xs, ys = zip(*self._history, strict=True)
        (trace,) = self.traces("freshness")
        trace.x, trace.y = list(xs), list(ys)

    def _clear_series(self) -> None:
        """Empty the series and the table, so the next draw sends them whole: plotly sends
        only what changed, and setting a trace to the data it holds sends nothing."""
        with self.figure.batch_update():
            for trace in [*self.traces("price"), *self.traces("volume")]:
                trace.x, trace.y = [], []
            (table,) = self.traces("stats")
            table.cells.values = [[] for _ in STATS_COLUMNS]
        self._newest_drawn = None

    def draw(self, snapshot: Snapshot) -> None:
        """Put a snapshot on the page, as one update message for the whole figure.

        Series and table are only re-sent when new ticks arrived, or when a browser
        view appeared since the last draw (:meth:`_on_view_count`).
        """
        if self._new_view or self._view_building:
            # a view still building may miss this draw: it is sent everything again
            # once it says it is built (or at the next refresh, whichever comes first)
            self._new_view = False
            self._clear_series()
        with self.figure.batch_update():
            if snapshot.newest != self._newest_drawn:
                self._draw_series(snapshot.wide)
                (table,) = self.traces("stats")
                table.cells.values = stats_cells(snapshot.metrics)
                self._newest_drawn = snapshot.newest
            self._draw_freshness(snapshot)
        self.status.value = status_html(snapshot, self.refresh_s)

    def show_error(self, exc: BaseException) -> None:
        """Say in the status bar why there is nothing new; the charts keep what they show."""
        self.last_error = _first_line(exc)
        self.status.value = status_html(None, self.refresh_s, self.last_error)

    # ------------------------------------------------------------------ refreshing

    def refresh(self) -> bool:
        """Read and draw once; on any failure show it in the status bar and return False."""
        try:
            snapshot = read_snapshot(self.settings, self.window_s)
            self.draw(snapshot)
        except Exception as exc:  # the page must keep going whatever one read hits
            self.show_error(exc)
            return False
        finally:
            self.refreshes += 1
        self.last_error = None
        return True

    async def _refresh_async(self) -> None:
        """Read in a worker thread, draw on the event loop (the widgets' thread)."""
        try:
            snapshot = await asyncio.to_thread(read_snapshot, self.settings, self.window_s)
            self.draw(snapshot)
            self.last_error = None
        except Exception as exc:
            self.show_error(exc)
        finally:
            self.refreshes += 1

    async def _loop_async(self, max_refreshes: int | None) -> None:
        done, next_at = 0, time.monotonic()
        self._seen_at = next_at
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        while (max_refreshes is None or done < max_refreshes) and not self._stop.is_set():
            next_at += self.refresh_s
            with contextlib.suppress(TimeoutError):  # woken early: a new view is built
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_at - time.monotonic()))
            if self._wake.is_set():
                self._wake.clear()
                next_at = time.monotonic()  # the next refresh one period after this one
            if not self._viewed:
                # what is drawn before a view exists never reaches it (see _on_view_count):
                # a kernel waiting for its first browser (Voila's pre-heated one) only waits
                continue
            if self.orphaned:
                self.status.value = paused_html(self.orphan_after_s)
                return
            if not self._stop.is_set():
                await self._refresh_async()
            done += 1

    def _loop_thread(self, max_refreshes: int | None) -> None:
        done, next_at = 0, time.monotonic()
        while max_refreshes is None or done < max_refreshes:
            next_at += self.refresh_s
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                return
            self.refresh()
            done += 1

    def start(self, max_refreshes: int | None = None) -> None:
        """Refresh every ``refresh_s``; ``max_refreshes`` bounds it (headless runs, tests).

        In a kernel (an event loop is running) this is a task on that loop;
        elsewhere a daemon thread.
        """
        if self.running:
            return
        self._stop.clear()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._task = loop.create_task(self._loop_async(max_refreshes))
            return
        self._thread = threading.Thread(
            target=self._loop_thread, args=(max_refreshes,), name="live-page", daemon=True
        )
        self._thread.start()
        _THREADED.add(self)

    @property
    def running(self) -> bool:
        """True while a refresh loop is active."""
        task_alive = self._task is not None and not self._task.done()
        return task_alive or (self._thread is not None and self._thread.is_alive())

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop refreshing (the charts keep their last data)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until a bounded threaded loop has finished (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout_s)


def live_page(
    settings: Settings,
    *,
    window_s: int = 300,
    refresh_s: float = 2.0,
    max_refreshes: int | None = None,
) -> LivePage:
    """Build the page, draw it once now, and keep it refreshing: what the notebook calls."""
    page = LivePage(settings, window_s=window_s, refresh_s=refresh_s)
    page.refresh()
    page.start(max_refreshes)
    announce_ready()
    return page


def announce_ready(environ: Mapping[str, str] | None = None) -> None:
    """Make the file ``MARKET_PAGE_READY`` names, if set: the page has run and drawn.

    Live mode sets it for Voila, whose pre-heated kernel runs this notebook before
    anyone asks for the page (4.5-5 s here: the kernel's start, its imports, a
    first read), and says where the page is once the file exists: a page requested
    then is served at once, and its first chart is drawn ~3 s after the request
    instead of ~8 s (``tests/browser/test_voila_browser.py`` prints it).
    """
    raw = (os.environ if environ is None else environ).get(PAGE_READY_ENV, "")
    if raw:
        Path(raw).touch()
