"""tools/pictures.py, which makes the README's pictures (``make pictures``): each Grafana
dashboard drawn from its JSON with every panel's query replayed against the real API (the
Flask app, no server, on a DuckDB file of recent ticks and a run), and the units, colours
and legends it draws them with. The PNG export in headless Chromium, and the explore
notebook's figures: tests/browser/test_pictures.py."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from marketstream import store
from marketstream.settings import DEFAULT_SYMBOLS
from marketstream.ticks import Tick
from support.api import app_for
from support.factories import recent_ticks, run_metrics, write_store
from support.tools import load_tool

pictures = load_tool("pictures")
BOARDS = sorted(pictures.DASHBOARDS.glob("*.json"))


@dataclass(frozen=True)
class Market:
    """Two minutes of ticks ending now, one a second per symbol, and the run that stored them."""

    path: Path
    end: datetime
    ticks: list[Tick]

    def time_range(self) -> Any:
        """The range ``make pictures`` draws: from a little before the first tick to now."""
        return pictures.TimeRange(self.ticks[0].timestamp - timedelta(seconds=5), self.end)


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Market:
    end = datetime.now(UTC).replace(microsecond=0)
    ticks = recent_ticks(DEFAULT_SYMBOLS, 120, end=end, per_second=1)
    run = run_metrics(
        ticks,
        run_id="picture-run",
        mode="live",
        started_at=(end - timedelta(minutes=3)).replace(tzinfo=None),
        elapsed_s=150,
        throughput_per_s=2.4,
    )
    path = write_store(tmp_path_factory.mktemp("pictures") / "market.duckdb", ticks, run=run)
    return Market(path, end, ticks)


@pytest.fixture(scope="module")
def fetch(market, tmp_path_factory) -> Any:
    caught_up = {key: row[0] for key, row in store.partition_positions(market.path).items()}
    app = app_for(market.path, tmp_path_factory.mktemp("api"), broker_up=False, ends=caught_up)
    return pictures.app_fetch(app)


def render(path: Path, fetch: Any, market: Market) -> tuple[dict[str, Any], Any]:
    board = json.loads(path.read_text(encoding="utf-8"))
    picture = pictures.render_dashboard(
        board, fetch, time_range=market.time_range(), variables={"candle": "5s"}, source=path.name
    )
    return board, picture


def _overlap(a: Any, b: Any) -> bool:
    return a.left < b.right and b.left < a.right and a.top < b.bottom and b.top < a.bottom


def _traces(picture: Any, panel_id: int) -> list[Any]:
    return [t for t in picture.figure.data if t.meta == panel_id]


def _annotation(picture: Any, name: str) -> Any:
    (found,) = [a for a in picture.figure.layout.annotations if a.name == name]
    return found


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_every_panel_is_drawn_in_its_place_from_its_own_query(path, fetch, market):
    """One drawn panel per panel of the JSON, in order, each with rows from its query and
    something of its own in the figure (traces tagged with its id, or its stat value),
    framed where its gridPos puts it: inside the picture, none overlapping, left/right and
    above/below as in the grid."""
    board, picture = render(path, fetch, market)
    panels = [p for p in pictures.all_panels(board) if p["type"] != "row"]
    assert [(p.id, p.type) for p in picture.panels] == [(p["id"], p["type"]) for p in panels]
    assert all(p.drawn and p.rows > 0 for p in picture.panels), picture.panels
    stats = {
        int(a.name.removeprefix("stat-"))
        for a in picture.figure.layout.annotations
        if a.name and a.name.startswith("stat-")
    }
    assert {t.meta for t in picture.figure.data} | stats == {p["id"] for p in panels}

    width, height = picture.size
    assert (picture.figure.layout.width, picture.figure.layout.height) == (width, height)
    for drawn in picture.panels:
        box = drawn.box
        assert 0 <= box.left < box.right <= width and 0 < box.top < box.bottom <= height
    for (a, pa), (b, pb) in itertools.combinations(zip(panels, picture.panels, strict=True), 2):
        assert not _overlap(pa.box, pb.box), (a["title"], b["title"])
        ga, gb = a["gridPos"], b["gridPos"]
        if ga["x"] + ga["w"] <= gb["x"]:
            assert pa.box.right < pb.box.left, (a["title"], b["title"])
        if ga["y"] + ga["h"] <= gb["y"]:
            assert pa.box.bottom < pb.box.top, (a["title"], b["title"])
    title = _annotation(picture, f"title-{panels[0]['id']}")
    assert "$" not in title.text  # variables filled in (plotly.js reads $...$ as LaTeX)


def test_the_markets_series_are_the_api_s_rows_on_their_own_axes(fetch, market):
    """The price panel draws every second /live returns for the range, one line per index on
    the axis its override names (SP500 left, the other two right); its legend carries the
    last/min/max the panel asks for. Volumes are stacked bars; candles have volume bars
    and the VWAP line."""
    board, picture = render(pictures.DASHBOARDS / "marketstream-markets.json", fetch, market)
    by_title = {p["title"]: p for p in pictures.all_panels(board)}
    prices_panel = by_title["Live Price Trends – Global Markets"]
    url = pictures.fill_variables(prices_panel["targets"][0]["url"], market.time_range().macros())
    rows = fetch(url)
    assert len(rows) == 120  # a row per second with ticks: all the store's seconds

    prices = _traces(picture, prices_panel["id"])
    assert [t.name.split()[0] for t in prices] == list(DEFAULT_SYMBOLS)
    assert all(t.type == "scatter" and len(t.x) == len(rows) for t in prices)
    assert list(prices[0].y) == [row["SP500"] for row in rows]
    sides = {t.name.split()[0]: picture.figure.layout[f"yaxis{t.yaxis[1:]}"].side for t in prices}
    assert sides == {"SP500": "left", "STOXX600": "right", "NIKKEI225": "right"}
    assert len({t.yaxis for t in prices}) == 3
    last = pictures.format_value(rows[-1]["SP500"], {"decimals": 2})
    assert f"last {last}" in prices[0].name

    volumes = _traces(picture, by_title["Trading Volume"]["id"])
    assert {t.type for t in volumes} == {"bar"} and picture.figure.layout.barmode == "stack"
    assert [t.name.split()[0] for t in volumes] == list(DEFAULT_SYMBOLS)

    candles = _traces(picture, by_title["Candles – $symbol ($candle)"]["id"])
    assert [t.type for t in candles] == ["candlestick", "bar", "scatter"]
    assert candles[2].name == "VWAP"
    assert (
        "SP500 (5s)"
        in _annotation(picture, f"title-{by_title['Candles – $symbol ($candle)']['id']}").text
    )


def test_the_pipeline_stats_and_runs_are_the_api_s(fetch, market):
    """Each stat shows the /runs health figure in the panel's unit on its threshold colour;
    the runs table lists the run, its status in the colour its value mapping gives."""
    board, picture = render(pictures.DASHBOARDS / "marketstream-pipeline.json", fetch, market)
    by_title = {p["title"]: p for p in pictures.all_panels(board)}
    health = fetch("/runs")["health"]
    stored = by_title["Ticks stored"]["id"]
    assert _annotation(picture, f"stat-{stored}").text == f"<b>{len(market.ticks)}</b>"
    errors = by_title["Errors"]["id"]
    assert health["errors"] == 0
    assert _annotation(picture, f"stat-{errors}").text == "<b>0</b>"
    (background,) = [
        s for s in picture.figure.layout.shapes if s.name == f"stat-background-{errors}"
    ]
    assert background.fillcolor == pictures.NAMED_COLORS["green"]

    (table,) = _traces(picture, by_title["Consumer Runs"]["id"])
    header = [h.removeprefix("<b>").removesuffix("</b>") for h in table.header.values]
    columns = dict(zip(header, table.cells.values, strict=True))
    assert list(columns["Run"]) == ["picture-run"] and list(columns["Mode"]) == ["live"]
    status = header.index("Status")
    mapping = pictures.field_config(by_title["Consumer Runs"], "Status")
    assert table.cells.font.color[status][0] == pictures.mapped_color(columns["Status"][0], mapping)


def test_values_are_written_in_the_panel_s_unit():
    assert pictures.format_value(97433, {"unit": "short"}) == "97.4 K"
    assert pictures.format_value(150, {"unit": "short", "decimals": 0}) == "150"
    assert pictures.format_value(50.21, {"unit": "s", "decimals": 1}) == "50.2 s"
    assert pictures.format_value(90, {"unit": "s", "decimals": 1}) == "1.5 min"
    assert pictures.format_value(1.84, {"unit": "suffix: ticks/s", "decimals": 1}) == "1.8 ticks/s"
    assert pictures.format_value(None, {"noValue": "–"}) == "–"
    assert pictures.format_value(datetime(2025, 1, 6, 14, 30), {}) == "2025-01-06 14:30:00"
    assert pictures.format_value(5900.9414, {"decimals": 2}) == "5900.94"


def test_a_value_takes_the_colour_of_the_highest_threshold_it_reaches():
    config = {
        "thresholds": {
            "steps": [
                {"color": "green", "value": None},
                {"color": "yellow", "value": 10},
                {"color": "red", "value": 60},
            ]
        }
    }
    colors = [pictures.threshold_color(v, config) for v in (None, 0, 9.9, 10, 59, 60, 1e6)]
    green, yellow, red = (pictures.NAMED_COLORS[c] for c in ("green", "yellow", "red"))
    assert colors == [green, green, green, yellow, yellow, red, red]


def test_the_dashboard_s_own_range_and_its_macros():
    now = datetime(2026, 1, 6, 14, 30, tzinfo=UTC)
    board = {"time": {"from": "now-15m", "to": "now"}}
    time_range = pictures.TimeRange.of_board(board, now)
    assert time_range.end - time_range.start == timedelta(minutes=15)
    macros = time_range.macros()
    assert macros["__timeTo"] == macros["__to"] == str(int(now.timestamp() * 1000))
    url = "/live?since=${__timeFrom}&until=${__timeTo}&symbol=$symbol"
    filled = pictures.fill_variables(url, {**macros, "symbol": "SP500"})
    assert filled == f"/live?since={macros['__from']}&until={macros['__to']}&symbol=SP500"


def test_the_explore_figures_are_named_after_the_chart_each_cell_draws(tmp_path):
    """An executed notebook's plotly outputs, each named by the ``charts.<name>(...)`` call
    of its cell; cells without a figure are skipped."""
    figure = {"data": [{"type": "bar", "y": [1, 2]}], "layout": {"height": 300}}
    cells = [
        {"cell_type": "markdown", "source": ["# Explore"]},
        {"cell_type": "code", "source": ["ticks = store.ticks(db)"], "outputs": []},
        {
            "cell_type": "code",
            "source": ["charts.volume_bars(ticks)"],
            "outputs": [{"output_type": "display_data", "data": {pictures.PLOTLY_MIME: figure}}],
        },
    ]
    executed = tmp_path / "04_explore.ipynb"
    executed.write_text(json.dumps({"cells": cells}), encoding="utf-8")
    assert pictures.notebook_figures(executed) == {"volume_bars": figure}
