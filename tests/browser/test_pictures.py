"""tools/pictures.py in headless Chromium: a dashboard rendered from its JSON becomes a PNG
of the picture's size, and the explore notebook, executed by papermill as the pipeline runs
it, has its plotly figures turned into one PNG each, as ``make pictures`` does. (What is
drawn, panel by panel: tests/unit/test_pictures.py.)

Neither needs a broker: the dashboards read the API (the Flask app, no server) and the
explore notebook reads the store, both on a DuckDB file written here."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import papermill
import pytest

from marketstream.pipeline import notebook_parameters
from marketstream.resources import notebook
from marketstream.settings import DEFAULT_SYMBOLS, Settings
from support.api import app_for
from support.factories import recent_ticks, run_metrics, write_store
from support.tools import load_tool

pictures = load_tool("pictures")

pytestmark = [
    pytest.mark.usefixtures("no_stray_children"),
    pytest.mark.skipif(
        shutil.which("chromium") is None or shutil.which("chromedriver") is None,
        reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium "
        "chromium-driver; .ci/run installs them)",
    ),
]

#: A PNG this small has nothing drawn on it (a blank 900x500 plot is ~5 KB).
NOT_BLANK_BYTES = 15_000


@pytest.fixture
def store_path(tmp_path):
    """Two minutes of ticks ending now and the run that stored them."""
    end = datetime.now(UTC).replace(microsecond=0)
    ticks = recent_ticks(DEFAULT_SYMBOLS, 120, end=end, per_second=1)
    run = run_metrics(
        ticks,
        run_id="picture-run",
        started_at=(end - timedelta(minutes=3)).replace(tzinfo=None),
        elapsed_s=150,
        throughput_per_s=2.4,
    )
    return write_store(tmp_path / "market.duckdb", ticks, run=run)


def test_a_dashboard_becomes_a_png_of_its_picture_s_size(store_path, tmp_path):
    path = pictures.DASHBOARDS / "marketstream-markets.json"
    board = json.loads(path.read_text(encoding="utf-8"))
    fetch = pictures.app_fetch(app_for(store_path, tmp_path, broker_up=False))
    end = datetime.now(UTC)
    picture = pictures.render_dashboard(
        board, fetch, time_range=pictures.TimeRange(end - timedelta(minutes=3), end)
    )
    with pictures.chromium() as driver:
        png = pictures.figure_png(
            driver, picture.figure, tmp_path / "out" / "markets.png", picture.size
        )
    assert pictures.png_size(png) == picture.size == (1400, picture.figure.layout.height)
    assert NOT_BLANK_BYTES < png.stat().st_size <= pictures.MAX_PICTURE_BYTES


def test_the_executed_explore_notebook_s_figures_become_pngs(store_path, tmp_path):
    """04_explore run by papermill with the pipeline's parameters on the store: one PNG per
    figure it displayed, named after the chart function of its cell, at the figure's own
    height (plotly's default 500 px where it sets none), 900 px wide."""
    settings = Settings().with_(db_path=store_path, log_path=tmp_path / "logs" / "pipeline.log")
    executed = tmp_path / "04_explore.ipynb"
    papermill.execute_notebook(
        str(notebook("04_explore")),
        str(executed),
        parameters=notebook_parameters(settings),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=120,
        cwd=str(tmp_path),
    )
    figures = pictures.notebook_figures(executed)
    assert list(figures) == ["price_lines", "volume_bars", "stats_table", "run_metrics"]
    with pictures.chromium() as driver:
        written = pictures.explore_pictures(driver, executed, tmp_path / "images")
    assert [p.name for p in written] == [
        "explore-price-lines.png",
        "explore-volume-bars.png",
        "explore-stats-table.png",
        "explore-run-metrics.png",
    ]
    for png, figure in zip(written, figures.values(), strict=True):
        assert pictures.png_size(png) == (900, figure["layout"].get("height", 500))
        assert png.stat().st_size <= pictures.MAX_PICTURE_BYTES
    assert all(p.stat().st_size > NOT_BLANK_BYTES for p in written if "stats" not in p.name)
