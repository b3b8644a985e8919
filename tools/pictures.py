"""The README's pictures, made again from a fresh demo run: ``make pictures``.

Every picture is made by the kit's own code on data the kit just made, so none of them can
show something the code no longer does:

* ``explore-*.png``: the plotly figures the explore notebook (``04_explore``) displayed
  when the papermill pipeline ran it on the demo data, taken from the executed notebook's
  outputs and turned into PNG by plotly.js in headless Chromium (``Plotly.toImage``);
* ``voila-live.png``: a screenshot, in headless Chromium, of the Voila page that
  ``marketstream live --csv <demo CSV> --pace`` serves while it replays the demo CSV
  (retimed to now), taken once every tick of the file is on the page;
* ``grafana-*.png``: Grafana cannot run here (no Docker, no Grafana binary), so each
  dashboard JSON is *rendered*, not screenshotted: every panel's Infinity query is
  replayed against the real API (the Flask app on the live run's store, as
  tests/unit/test_grafana.py replays them), and the rows are drawn with plotly at the
  panel's ``gridPos``, as its type says (time series, stat, table, candlestick). The
  picture's header says so.

Why a script under ``tools/`` and not a module of the package: it reads the checkout's
``grafana/`` folder and writes ``docs/images/``, neither of which exists in an installed
wheel, and it drives Chromium through selenium, a test tool (the ``dev`` extra). Why no
new dependency: Debian's chromium and chromedriver are already what the browser test
uses, and plotly ships plotly.js, which exports PNG by itself (kaleido would add a second
way to drive the same browser).

Nothing of the user's is touched: the run uses a temporary broker on a free port with its
storage in a temporary folder (as the tests do) and its own stores and topics there, so a
broker, a ``data/`` folder or the settings of the user's play no part (only where the Kafka
jars are cached is taken from them) and nothing is left behind.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import re
import shutil
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import plotly
import plotly.graph_objects as go
import psutil

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
DASHBOARDS = ROOT / "grafana" / "dashboards"

#: A picture larger than this is a sign that something changed (the README keeps them small).
MAX_PICTURE_BYTES = 250_000

#: How long a step of the run may take on a loaded 2-core machine before it is given up
#: (each wait ends as soon as what it waits for is there).
STEP_TIMEOUT_S = 180.0

# --------------------------------------------------------------------------- waiting


def wait_for(
    condition: Callable[[], Any],
    what: str,
    *,
    timeout_s: float = STEP_TIMEOUT_S,
    died: Callable[[], str | None] | None = None,
    interval_s: float = 0.25,
) -> Any:
    """Poll ``condition`` until it is truthy and return it; wait on a condition, never
    on a guess of how long something takes. ``died`` names why it can no longer happen."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if died is not None and (why := died()) is not None:
            raise RuntimeError(f"{why} while waiting for {what}")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


# --------------------------------------------------------------------------- the browser

#: Headless Chromium as the browser test runs it; only local addresses resolve, so a page
#: that links a web font from a CDN (Voila's template does) never reaches beyond the machine.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)


@contextmanager
def chromium(window: tuple[int, int] = (1200, 900)) -> Iterator[Any]:
    """Debian's headless Chromium driven by its chromedriver, with a throwaway profile;
    chromedriver and every browser process are gone afterwards. (selenium is imported
    here: it is a test tool, and the rendering above needs no browser.)"""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        raise RuntimeError(
            "needs Debian's chromium and chromium-driver (apt-get install -y chromium "
            "chromium-driver)"
        )
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for arg in (
            *CHROMIUM_ARGS,
            f"--user-data-dir={profile}",
            "--window-size={},{}".format(*window),
        ):
            options.add_argument(arg)
        service = Service(driver_path)
        driver = webdriver.Chrome(service=service, options=options)
        chromedriver = psutil.Process(service.process.pid)
        try:
            yield driver
        finally:
            family = [chromedriver, *chromedriver.children(recursive=True)]  # as they are now
            with suppress(Exception):
                driver.quit()
            _, left = psutil.wait_procs([p for p in family if p.is_running()], timeout=30)
            for p in left:
                with suppress(psutil.NoSuchProcess):
                    p.kill()


_EXPORT_JS = """
const [figure, width, height, done] = arguments;
Plotly.toImage(JSON.parse(figure), {format: 'png', width: width, height: height})
  .then(done, err => done('error: ' + err));
"""


#: Set by the export page once its plotly.js has loaded (another page, e.g. Voila's, may
#: have a plotly of its own: the export must use the package's).
_ON_EXPORT_PAGE_JS = "return window.__marketstreamExport === true"


def _plotly_page(driver: Any) -> None:
    """Open a blank page with the plotly.js that ships inside the plotly package (the
    same build the notebooks use), unless the browser is on it already."""
    if driver.execute_script(_ON_EXPORT_PAGE_JS):
        return
    script = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    page = Path(tempfile.gettempdir()) / f"marketstream-plotly-{uuid.uuid4().hex[:8]}.html"
    page.write_text(
        f'<!doctype html><meta charset="utf-8"><script src="{script.as_uri()}"></script>'
        "<script>window.__marketstreamExport = typeof Plotly !== 'undefined'</script>",
        encoding="utf-8",
    )
    try:
        driver.get(page.as_uri())
        wait_for(lambda: driver.execute_script(_ON_EXPORT_PAGE_JS), "plotly.js to load")
    finally:
        page.unlink()


def figure_png(
    driver: Any, figure: go.Figure | Mapping[str, Any], path: Path, size: tuple[int, int]
) -> Path:
    """Write ``figure`` (a figure or its plotly JSON) as a PNG of ``size`` pixels, drawn by
    plotly.js in the browser: exactly what a notebook shows, at a size the README wants."""
    _plotly_page(driver)
    text = figure.to_json() if isinstance(figure, go.Figure) else json.dumps(figure)
    url = driver.execute_async_script(_EXPORT_JS, text, *size)
    if not url.startswith("data:image/png;base64,"):
        raise RuntimeError(f"plotly.js could not draw {path.name}: {url[:200]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(url.split(",", 1)[1]))
    return path


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header, so a caller can check what was written."""
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


# --------------------------------------------------------------------------- the explore notebook

PLOTLY_MIME = "application/vnd.plotly.v1+json"
_CHART_CALL = re.compile(r"charts\.(\w+)\(")


def notebook_figures(executed: Path) -> dict[str, dict[str, Any]]:
    """{chart function: plotly JSON} of every figure an executed notebook displayed, named
    after the ``charts.<function>(...)`` its cell calls: the figure as the reader saw it."""
    notebook = json.loads(executed.read_text(encoding="utf-8"))
    figures: dict[str, dict[str, Any]] = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        shown = [
            o["data"][PLOTLY_MIME]
            for o in cell.get("outputs", [])
            if PLOTLY_MIME in o.get("data", {})
        ]
        calls = _CHART_CALL.findall(source)
        for i, figure in enumerate(shown):
            name = calls[i] if i < len(calls) else f"figure{len(figures) + 1}"
            figures[name] = figure
    return figures


def explore_pictures(driver: Any, executed: Path, out_dir: Path, width: int = 900) -> list[Path]:
    """``explore-<chart>.png`` for each figure of the executed explore notebook, at the
    figure's own height (plotly's default, 500 px, where it sets none)."""
    paths = []
    for name, figure in notebook_figures(executed).items():
        height = int(figure.get("layout", {}).get("height") or 500)
        paths.append(
            figure_png(
                driver, figure, out_dir / f"explore-{name.replace('_', '-')}.png", (width, height)
            )
        )
    return paths


# --------------------------------------------------------------------------- the Voila page

#: The page's statistics table (its trace tagged ``stats``): header and cells.
_STATS_JS = """
const gd = document.querySelector('.js-plotly-plot');
if (!gd || !gd.data) return null;
const t = gd.data.find(t => t.meta === 'stats');
const prices = gd.data.filter(t => t.meta === 'price');
if (!t || !t.cells || !prices.length || prices.some(p => !p.x || !p.x.length)) return null;
return {header: t.header.values, cells: t.cells.values};
"""


#: The height of the page's content: Voila's template scrolls its cells in an inner
#: element (``#rendered_cells``), so the document's own height is the viewport's.
_CONTENT_HEIGHT_JS = """
const cells = document.getElementById('rendered_cells');
return (cells || document.documentElement).scrollHeight;
"""


def _viewport(driver: Any, width: int, height: int) -> None:
    """Set the page's viewport to exactly ``width`` x ``height`` CSS pixels at scale 1 (a
    headless window's size includes browser chrome that is not drawn, so it is not the
    screenshot's)."""
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


#: The Voila page's width in the screenshot, in CSS pixels.
PAGE_WIDTH = 1000


def open_page(driver: Any, url: str, width: int = PAGE_WIDTH) -> None:
    """Open ``url`` at ``width``, so it can watch the stream arrive before the screenshot.
    The width is set before the page loads and kept: only the height changes at the end,
    and nothing on the page is laid out again for the screenshot."""
    _viewport(driver, width, 900)
    driver.get(url)


def voila_screenshot(
    driver: Any, url: str, ticks: int, path: Path, width: int = PAGE_WIDTH
) -> Path:
    """Screenshot the live page at ``url`` (opened now unless it is open already) once its
    charts have data and its statistics table counts ``ticks`` ticks (the whole replay),
    as tall as the page's content."""
    if driver.current_url != url:
        open_page(driver, url, width)

    def all_ticks_shown() -> bool:
        table = driver.execute_script(_STATS_JS)
        if not table or "tickcount" not in table["header"]:
            return False
        counts = table["cells"][table["header"].index("tickcount")]
        return sum(int(str(c).replace(",", "")) for c in counts) == ticks

    wait_for(all_ticks_shown, f"the Voila page to show all {ticks} ticks")
    _viewport(driver, width, int(driver.execute_script(_CONTENT_HEIGHT_JS)) + 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not driver.save_screenshot(str(path)):
            raise RuntimeError(f"Chromium could not save {path}")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


# --------------------------------------------------------------------------- Grafana dashboards

#: Grafana's grid: 24 columns; a row unit is 30 px high plus an 8 px gap between panels.
GRID_COLUMNS = 24
ROW_PX, GAP_PX = 30, 8
#: The picture's own header (dashboard title, how it was made, the range) and side margins.
HEADER_PX, SIDE_PX = 64, 10

#: Grafana's dark theme, and the colours the dashboards name ("blue", "green", ...).
THEME = {
    "bg": "#111217",
    "panel": "#181b1f",
    "border": "#2c3034",
    "header": "#22252b",
    "text": "#ccccdc",
    "muted": "#8e8e9e",
    "grid": "rgba(204, 204, 220, 0.10)",
}
NAMED_COLORS = {
    "green": "#73BF69",
    "red": "#F2495C",
    "blue": "#5794F2",
    "orange": "#FF9830",
    "yellow": "#FADE2A",
    "purple": "#B877D9",
    "text": THEME["text"],
    "transparent": "rgba(0, 0, 0, 0)",
}
#: "palette-classic": the colours Grafana gives series that have none of their own.
PALETTE = ("#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9")
#: "continuous-BlPu" (the gradient gauges of the statistics table): blue to purple.
BLUE_PURPLE = ((0x57, 0x94, 0xF2), (0xB8, 0x77, 0xD9))

#: The relative times the dashboards use (``now``, ``now-15m``) and the units they take.
_RELATIVE = re.compile(r"^now(?:-(\d+)([smhdw]))?$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: ``$name`` and ``${name}`` / ``${name:format}`` in URLs and titles.
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)")
#: The time range's macros: Infinity's own (filled by its backend) and Grafana's.
RANGE_FROM, RANGE_TO = ("__timeFrom", "__from"), ("__timeTo", "__to")

#: A panel's query as Infinity sends it: a URL relative to the datasource -> decoded JSON.
Fetch = Callable[[str], Any]


def app_fetch(app: Any) -> Fetch:
    """Ask a Flask app (the real marketstream API, without a server) what Infinity would."""
    client = app.test_client()

    def fetch(url: str) -> Any:
        response = client.get(url)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: HTTP {response.status_code} {response.data[:300]!r}")
        return response.get_json()

    return fetch


@dataclass(frozen=True)
class TimeRange:
    """A dashboard's time range as Grafana hands it to a query: two UTC instants."""

    start: datetime
    end: datetime

    @classmethod
    def of_board(cls, board: Mapping[str, Any], now: datetime) -> TimeRange:
        """The dashboard's own range (``time.from``/``time.to``, e.g. ``now-15m``) at ``now``."""
        return cls(_instant(board["time"]["from"], now), _instant(board["time"]["to"], now))

    def macros(self) -> dict[str, str]:
        """The range's variables in epoch milliseconds, what the API's since/until take."""
        start, end = (str(int(t.timestamp() * 1000)) for t in (self.start, self.end))
        return {**dict.fromkeys(RANGE_FROM, start), **dict.fromkeys(RANGE_TO, end)}

    def describe(self) -> str:
        """The range for a picture's header: what the panels show is this range, which is
        not the dashboard's default one, so the reader must be told."""
        start, end = (t.astimezone(UTC) for t in (self.start, self.end))
        shown_end = end.strftime("%H:%M:%S" if start.date() == end.date() else "%Y-%m-%d %H:%M:%S")
        return f"{start:%Y-%m-%d %H:%M:%S} → {shown_end} UTC"


def _instant(expression: str, now: datetime) -> datetime:
    match = _RELATIVE.match(expression)
    if match is None:
        raise ValueError(f"time {expression!r}: only now and now-<N><s|m|h|d|w> are understood")
    if match.group(1) is None:
        return now
    return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def fill_variables(text: str, values: Mapping[str, str]) -> str:
    """``text`` with every known ``$name``/``${name}`` replaced (unknown ones are kept)."""
    return _VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def board_variables(board: Mapping[str, Any]) -> dict[str, str]:
    """Each template variable's saved current value (what the dashboard opens with)."""
    values = {}
    for variable in board.get("templating", {}).get("list", []):
        current = variable.get("current", {}).get("value")
        if current is not None:
            values[variable["name"]] = str(current)
    return values


def all_panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those folded inside collapsed rows."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def select_root(payload: Any, selector: str) -> Any:
    """What Infinity's root selector picks for a plain dotted path (all the dashboards use)."""
    for part in filter(None, selector.split(".")):
        payload = payload[int(part)] if isinstance(payload, list) else payload[part]
    return payload


@dataclass
class Field:
    """One column of a panel's data, as Infinity declares it, with its field config."""

    name: str
    kind: str  # Infinity's column type: string, number, timestamp...
    values: list[Any]
    config: dict[str, Any]

    def numbers(self) -> list[float]:
        return [v for v in self.values if isinstance(v, int | float) and not isinstance(v, bool)]

    @property
    def custom(self) -> dict[str, Any]:
        return self.config.get("custom", {})

    @property
    def hidden(self) -> bool:
        return bool(self.custom.get("hideFrom", {}).get("viz"))


def field_config(panel: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The panel's field defaults with its by-name overrides for ``name`` applied, the way
    Grafana resolves them (``custom.axisPlacement`` sets ``custom`` -> ``axisPlacement``)."""
    config = copy.deepcopy(panel.get("fieldConfig", {}).get("defaults", {}))
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override.get("matcher", {})
        if matcher.get("id") == "byName" and matcher.get("options") == name:
            for prop in override.get("properties", []):
                *parents, leaf = prop["id"].split(".")
                node = config
                for key in parents:
                    node = node.setdefault(key, {})
                node[leaf] = prop.get("value")
    return config


def _parse(value: Any, kind: str) -> Any:
    if kind.startswith("timestamp") and isinstance(value, str):
        return datetime.fromisoformat(value).astimezone(UTC).replace(tzinfo=None)
    return value


def panel_fields(panel: Mapping[str, Any], fetch: Fetch, values: Mapping[str, str]) -> list[Field]:
    """Replay each of the panel's Infinity queries and return its declared columns."""
    fields: list[Field] = []
    for target in panel.get("targets", []):
        payload = select_root(
            fetch(fill_variables(target["url"], values)), target.get("root_selector", "")
        )
        rows = payload if isinstance(payload, list) else [payload]
        for column in target.get("columns", []):
            kind = column.get("type", "string")
            fields.append(
                Field(
                    column["text"],
                    kind,
                    [_parse(row.get(column["selector"]), kind) for row in rows],
                    field_config(panel, column["text"]),
                )
            )
    return fields


# ..................................................................... values and colours


def color_of(name: str | None, fallback: str = THEME["text"]) -> str:
    """A Grafana colour name or CSS colour as CSS."""
    if not name:
        return fallback
    return NAMED_COLORS.get(name, name)


def threshold_color(value: Any, config: Mapping[str, Any]) -> str:
    """The colour of the highest threshold step ``value`` reaches (the base step below all)."""
    steps = config.get("thresholds", {}).get("steps", [])
    color = steps[0]["color"] if steps else "text"
    if isinstance(value, int | float):
        for step in steps[1:]:
            if step.get("value") is not None and value >= step["value"]:
                color = step["color"]
    return color_of(color)


def mapped_color(value: Any, config: Mapping[str, Any]) -> str | None:
    """The colour a value mapping gives ``value`` (the runs table's ok/failed/stopped)."""
    for mapping in config.get("mappings", []):
        if mapping.get("type") == "value" and str(value) in mapping.get("options", {}):
            return color_of(mapping["options"][str(value)].get("color"))
    return None


def _number(value: float, decimals: int | None) -> str:
    if decimals is None:
        decimals = 0 if float(value).is_integer() else 2
    return f"{value:.{decimals}f}"


def _short(value: float, decimals: int | None) -> str:
    """Grafana's ``short`` unit: 97433 -> 97.4 K."""
    for scale, suffix in ((1e12, " Tri"), (1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
        if abs(value) >= scale:
            return _number(value / scale, 1 if decimals is None else decimals) + suffix
    return _number(value, decimals)


def _duration(value: float, decimals: int | None) -> str:
    """Grafana's ``s`` unit: seconds, shown in the largest unit that keeps them >= 1."""
    for scale, suffix in ((86400, " day"), (3600, " hour"), (60, " min")):
        if abs(value) >= scale:
            return _number(value / scale, 1 if decimals is None else decimals) + suffix
    return _number(value, decimals) + " s"


def format_value(value: Any, config: Mapping[str, Any]) -> str:
    """A value as the panel's unit and decimals show it (the units the dashboards use)."""
    if value is None:
        return str(config.get("noValue", ""))
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    if isinstance(value, str | bool):
        return str(value)
    unit, decimals = str(config.get("unit", "")), config.get("decimals")
    if unit == "short":
        return _short(value, decimals)
    if unit == "s":
        return _duration(value, decimals)
    if unit.startswith("suffix:"):
        return f"{_number(value, decimals)} {unit.split(':', 1)[1].strip()}"
    return _number(value, decimals)


def _gradient(fraction: float) -> str:
    (r0, g0, b0), (r1, g1, b1) = BLUE_PURPLE
    f = min(max(fraction, 0.0), 1.0)
    return (
        f"rgba({r0 + (r1 - r0) * f:.0f}, {g0 + (g1 - g0) * f:.0f}, {b0 + (b1 - b0) * f:.0f}, 0.55)"
    )


_CALCS = {
    "lastNotNull": ("last", lambda xs: xs[-1]),
    "last": ("last", lambda xs: xs[-1]),
    "min": ("min", min),
    "max": ("max", max),
    "sum": ("sum", sum),
    "mean": ("mean", lambda xs: sum(xs) / len(xs)),
}


def legend_label(item: Field, calcs: Sequence[str]) -> str:
    """A series' legend entry with the calculations the panel's legend asks for."""
    numbers = item.numbers()
    parts = [item.name]
    for calc in calcs:
        if calc in _CALCS and numbers:
            label, fn = _CALCS[calc]
            parts.append(f"{label} {format_value(fn(numbers), item.config)}")
    return "   ".join(parts)


# ..................................................................... geometry


@dataclass(frozen=True)
class Box:
    """A rectangle of the picture in pixels, y downwards from the top."""

    left: float
    top: float
    right: float
    bottom: float

    def inset(self, left: float = 0, top: float = 0, right: float = 0, bottom: float = 0) -> Box:
        return Box(self.left + left, self.top + top, self.right - right, self.bottom - bottom)


@dataclass
class Canvas:
    """The picture being drawn: its size, pixel -> paper coordinates, the axes handed out."""

    figure: go.Figure
    width: int
    height: int
    time_range: TimeRange
    axes: int = 0
    legends: int = 0

    def grid_box(self, grid: Mapping[str, int]) -> Box:
        """Where a panel's ``gridPos`` puts it, in Grafana's proportions."""
        column = (self.width - 2 * SIDE_PX + GAP_PX) / GRID_COLUMNS
        unit = ROW_PX + GAP_PX
        return Box(
            SIDE_PX + grid["x"] * column,
            HEADER_PX + grid["y"] * unit,
            SIDE_PX + (grid["x"] + grid["w"]) * column - GAP_PX,
            HEADER_PX + (grid["y"] + grid["h"]) * unit - GAP_PX,
        )

    def px(self, x: float) -> float:
        return x / self.width

    def py(self, y: float) -> float:
        return 1 - y / self.height

    def x_domain(self, box: Box) -> list[float]:
        return [self.px(box.left), self.px(box.right)]

    def y_domain(self, box: Box) -> list[float]:
        return [self.py(box.bottom), self.py(box.top)]

    def new_axes(self) -> tuple[str, str]:
        """A fresh x/y axis pair's trace references (``x3``, ``y3``)."""
        self.axes += 1
        suffix = "" if self.axes == 1 else str(self.axes)
        return f"x{suffix}", f"y{suffix}"

    def new_y(self) -> str:
        """One more y axis (for a panel's second, third... axis), as a trace reference."""
        self.axes += 1
        return f"y{self.axes}"

    def new_legend(self, box: Box, vertical: bool) -> str:
        """A legend of its own at the bottom-left of ``box`` (one per panel, as in Grafana)."""
        self.legends += 1
        name = "legend" if self.legends == 1 else f"legend{self.legends}"
        self.figure.update_layout(
            {
                name: {
                    "x": self.px(box.left),
                    "y": self.py(box.top),
                    "xanchor": "left",
                    "yanchor": "top",
                    "orientation": "v" if vertical else "h",
                    "bgcolor": "rgba(0, 0, 0, 0)",
                    "font": {"size": 11, "color": THEME["text"]},
                    "itemsizing": "constant",
                    "traceorder": "normal",
                    "tracegroupgap": 0,
                }
            }
        )
        return name


def _layout_key(ref: str) -> str:
    """``x3`` -> ``xaxis3``, ``y`` -> ``yaxis``: a trace's axis reference as a layout key."""
    return f"{ref[0]}axis{ref[1:]}"


def _axis_style(**extra: Any) -> dict[str, Any]:
    return {
        "gridcolor": THEME["grid"],
        "zeroline": False,
        "exponentformat": "none",  # 38530, as Grafana writes it, not plotly's 38.53k
        "showline": False,
        "tickfont": {"size": 10, "color": THEME["muted"]},
        **extra,
    }


def _time_axis(canvas: Canvas, box: Box, anchor: str) -> dict[str, Any]:
    """The panel's x axis: the dashboard's time range, in UTC, as Grafana draws it."""
    span = canvas.time_range.end - canvas.time_range.start
    return _axis_style(
        domain=canvas.x_domain(box),
        anchor=anchor,
        type="date",
        range=[
            t.astimezone(UTC).replace(tzinfo=None).isoformat()
            for t in (canvas.time_range.start, canvas.time_range.end)
        ],
        tickformat="%H:%M:%S" if span <= timedelta(hours=1) else "%H:%M",
        showgrid=True,
    )


def _legend_px(panel: Mapping[str, Any], series: int) -> float:
    """The room a panel's legend takes under its plot (Grafana puts it at the bottom): a
    row per series as a table, one line as a list, none when hidden."""
    legend = panel.get("options", {}).get("legend", {})
    if not legend.get("showLegend", True) or legend.get("displayMode") == "hidden":
        return 0
    return 20 * series + 8 if legend.get("displayMode") == "table" else 24


# ..................................................................... panel types


def draw_timeseries(canvas: Canvas, box: Box, panel: dict[str, Any], fields: list[Field]) -> None:
    """Lines or bars per field, stacked if the panel stacks; a y axis per axis label,
    placed left or right as the overrides say; one legend with the panel's calculations."""
    times = next((f.values for f in fields if f.kind.startswith("timestamp")), [])
    series = [f for f in fields if f.kind == "number" and not f.hidden]
    groups: dict[tuple[str, str], list[Field]] = {}
    for item in series:
        placement = item.custom.get("axisPlacement", "auto")
        side = "right" if placement == "right" else "left"
        groups.setdefault((item.custom.get("axisLabel", ""), side), []).append(item)
    sides = [side for _, side in groups]
    plot = box.inset(
        left=12 + 58 * max(1, sides.count("left")),
        top=30,
        right=12 + 58 * sides.count("right"),
        bottom=24 + _legend_px(panel, len(series)),
    )
    x_ref, y_ref = canvas.new_axes()
    canvas.figure.update_layout({_layout_key(x_ref): _time_axis(canvas, plot, y_ref)})
    legend_options = panel.get("options", {}).get("legend", {})
    legend = canvas.new_legend(
        box.inset(left=10, top=box.bottom - box.top - _legend_px(panel, len(series)) + 2),
        vertical=legend_options.get("displayMode") == "table",
    )
    placed = {"left": 0, "right": 0}
    for index, ((label, side), members) in enumerate(groups.items()):
        ref = y_ref if index == 0 else canvas.new_y()
        color = (
            color_of(members[0].config.get("color", {}).get("fixedColor"))
            if len(members) == 1
            else None
        )
        axis = _axis_style(
            title={"text": label, "font": {"size": 11, "color": color or THEME["muted"]}},
            side=side,
            showgrid=index == 0,
            rangemode="tozero" if members[0].config.get("min") == 0 else "normal",
        )
        if color:
            axis["tickfont"] = {"size": 10, "color": color}
        if index == 0:
            axis.update(domain=canvas.y_domain(plot), anchor=x_ref)
        else:
            nth = placed[side]
            edge = plot.left - 58 * nth if side == "left" else plot.right + 58 * nth
            axis.update(overlaying=y_ref, anchor="free" if nth else x_ref, position=canvas.px(edge))
        placed[side] += 1
        canvas.figure.update_layout({_layout_key(ref): axis})
        for item in members:
            _add_series(canvas, panel, item, times, x_ref, ref, legend, legend_options, len(series))


def _add_series(
    canvas: Canvas,
    panel: dict[str, Any],
    item: Field,
    times: list[Any],
    x_ref: str,
    y_ref: str,
    legend: str,
    legend_options: Mapping[str, Any],
    count: int,
) -> None:
    palette_index = sum(1 for t in canvas.figure.data if t.meta == panel["id"])
    color = item.config.get("color", {})
    css = (
        color_of(color.get("fixedColor"))
        if color.get("mode") == "fixed"
        else PALETTE[palette_index % len(PALETTE)]
    )
    custom = item.custom
    common = {
        "x": times,
        "y": item.values,
        "name": legend_label(item, legend_options.get("calcs", [])),
        "xaxis": x_ref,
        "yaxis": y_ref,
        "legend": legend,
        "meta": panel["id"],
        "showlegend": _legend_px(panel, count) > 0,
    }
    if custom.get("drawStyle") == "bars":
        opacity = custom.get("fillOpacity", 80) / 100
        canvas.figure.add_trace(
            go.Bar(
                marker={"color": css, "opacity": max(opacity, 0.3), "line": {"width": 0}}, **common
            )
        )
        if custom.get("stacking", {}).get("mode") == "normal":
            canvas.figure.update_layout(barmode="stack")
        return
    line = {"color": css, "width": custom.get("lineWidth", 1)}
    if custom.get("lineInterpolation") == "smooth":
        line["shape"] = "spline"
    canvas.figure.add_trace(
        go.Scatter(mode="lines", line=line, connectgaps=bool(custom.get("spanNulls")), **common)
    )


def draw_candlestick(canvas: Canvas, box: Box, panel: dict[str, Any], fields: list[Field]) -> None:
    """OHLC candles coloured by open/close, volume bars along the bottom (``candles+volume``),
    and every other number field (VWAP) as a line, unless hidden from the visualisation."""
    options = panel.get("options", {})
    by_name = {f.name: f for f in fields}
    mapped = {
        role: by_name[name] for role, name in options.get("fields", {}).items() if name in by_name
    }
    times = next((f.values for f in fields if f.kind.startswith("timestamp")), [])
    extra = [
        f
        for f in fields
        if f.kind == "number"
        and f not in mapped.values()
        and not f.hidden
        and options.get("includeAllFields")
    ]
    count = 2 + len(extra)
    plot = box.inset(left=70, top=30, right=20, bottom=24 + _legend_px(panel, count))
    x_ref, y_ref = canvas.new_axes()
    canvas.figure.update_layout(
        {
            _layout_key(x_ref): _time_axis(canvas, plot, y_ref)
            | {"rangeslider": {"visible": False}},
            _layout_key(y_ref): _axis_style(domain=canvas.y_domain(plot), anchor=x_ref),
        }
    )
    legend = canvas.new_legend(
        box.inset(left=10, top=box.bottom - box.top - _legend_px(panel, count) + 2), vertical=False
    )
    colors = options.get("colors", {})
    up, down = color_of(colors.get("up", "green")), color_of(colors.get("down", "red"))
    common = {"xaxis": x_ref, "legend": legend, "meta": panel["id"]}
    canvas.figure.add_trace(
        go.Candlestick(
            x=times,
            open=mapped["open"].values,
            high=mapped["high"].values,
            low=mapped["low"].values,
            close=mapped["close"].values,
            name="open / high / low / close",
            increasing={"line": {"color": up}, "fillcolor": up},
            decreasing={"line": {"color": down}, "fillcolor": down},
            yaxis=y_ref,
            **common,
        )
    )
    if "volume" in mapped and "volume" in options.get("mode", ""):
        volume_ref = canvas.new_y()
        top = max(mapped["volume"].numbers(), default=1) or 1
        canvas.figure.update_layout(
            {
                _layout_key(volume_ref): _axis_style(
                    overlaying=y_ref, range=[0, top * 4], visible=False
                )
            }
        )
        rising = [
            up if (o is not None and c is not None and c >= o) else down
            for o, c in zip(mapped["open"].values, mapped["close"].values, strict=True)
        ]
        canvas.figure.add_trace(
            go.Bar(
                x=times,
                y=mapped["volume"].values,
                name="volume",
                marker={"color": rising, "opacity": 0.35},
                yaxis=volume_ref,
                **common,
            )
        )
    for index, item in enumerate(extra):
        color = item.config.get("color", {})
        css = (
            color_of(color.get("fixedColor"))
            if color.get("mode") == "fixed"
            else PALETTE[index % len(PALETTE)]
        )
        canvas.figure.add_trace(
            go.Scatter(
                x=times,
                y=item.values,
                mode="lines",
                name=item.name,
                line={"color": css, "width": 1.5},
                yaxis=y_ref,
                **common,
            )
        )


def draw_stat(canvas: Canvas, box: Box, panel: dict[str, Any], fields: list[Field]) -> None:
    """The field's last value, in the panel's unit, on its threshold colour (``background``)
    or in it (``value``); ``noValue`` when the API has none."""
    item = next((f for f in fields if f.kind == "number"), fields[0] if fields else None)
    value = next((v for v in reversed(item.values) if v is not None), None) if item else None
    config = item.config if item else panel.get("fieldConfig", {}).get("defaults", {})
    text = format_value(value, config) or "–"
    color = threshold_color(value, config)
    background = panel.get("options", {}).get("colorMode") == "background"
    inner = box.inset(left=1, top=28, right=1, bottom=1)
    if background:
        canvas.figure.add_shape(
            name=f"stat-background-{panel['id']}",
            type="rect",
            xref="paper",
            yref="paper",
            x0=canvas.px(inner.left),
            x1=canvas.px(inner.right),
            y0=canvas.py(inner.bottom),
            y1=canvas.py(inner.top),
            fillcolor=color,
            opacity=0.85,
            line={"width": 0},
            layer="below",
        )
    tall, wide = inner.bottom - inner.top, inner.right - inner.left
    size = min(44, tall * 0.45, wide / max(len(text), 3) * 1.6)
    canvas.figure.add_annotation(
        name=f"stat-{panel['id']}",
        text=f"<b>{text}</b>",
        x=canvas.px((inner.left + inner.right) / 2),
        y=canvas.py((inner.top + inner.bottom) / 2),
        xref="paper",
        yref="paper",
        xanchor="center",
        yanchor="middle",
        showarrow=False,
        font={"size": max(size, 12), "color": "#ffffff" if background else color},
    )


def _column_px(texts: Sequence[str]) -> float:
    """A column wide enough for its longest word at 11 px (plotly wraps cells at spaces),
    so a narrow table wraps "Avg price" rather than cutting "NIKKEI225" short."""
    longest = max((len(word) for text in texts for word in text.split()), default=1)
    return 6.4 * longest + 16


def draw_table(canvas: Canvas, box: Box, panel: dict[str, Any], fields: list[Field]) -> None:
    """The declared columns in order, sorted as the panel sorts, each value in its unit;
    ``color-text`` cells in their threshold or mapping colour, gradient gauges as a fill
    from blue to purple over the column's range (an approximation of Grafana's bar)."""
    rows = list(zip(*(f.values for f in fields), strict=True))
    for sort in reversed(panel.get("options", {}).get("sortBy", [])):
        if sort.get("displayName") in [f.name for f in fields]:
            at = [f.name for f in fields].index(sort["displayName"])
            rows.sort(
                key=lambda row, at=at: (row[at] is None, row[at]), reverse=bool(sort.get("desc"))
            )
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in fields]
    cells, fills, fonts = [], [], []
    for item, values in zip(fields, columns, strict=True):
        cell_type = item.custom.get("cellOptions", {}).get("type", "auto")
        numbers = [v for v in values if isinstance(v, int | float)]
        low, high = (min(numbers), max(numbers)) if numbers else (0, 0)
        cells.append([format_value(v, item.config) for v in values])
        if cell_type == "gauge" and numbers:
            fills.append(
                [_gradient((v - low) / (high - low) if high > low else 1.0) for v in values]
            )
        else:
            fills.append([THEME["panel"]] * len(values))
        if cell_type == "color-text":
            fonts.append(
                [mapped_color(v, item.config) or threshold_color(v, item.config) for v in values]
            )
        else:
            fonts.append([THEME["text"]] * len(values))
    inner = box.inset(left=8, top=30, right=8, bottom=4)
    widths = [
        item.custom.get("width") or _column_px([item.name, *col])
        for item, col in zip(fields, cells, strict=True)
    ]
    height = 22 if panel.get("options", {}).get("cellHeight", "sm") == "sm" else 28
    canvas.figure.add_trace(
        go.Table(
            domain={"x": canvas.x_domain(inner), "y": canvas.y_domain(inner)},
            columnwidth=widths,
            header={
                "values": [f"<b>{f.name}</b>" for f in fields],
                "fill": {"color": THEME["header"]},
                "line": {"color": THEME["border"]},
                "font": {"size": 11, "color": THEME["text"]},
                "align": "left",
                "height": height + 2,
            },
            cells={
                "values": cells,
                "fill": {"color": fills},
                "line": {"color": THEME["border"]},
                "font": {"size": 11, "color": fonts},
                "align": "left",
                "height": height,
            },
            meta=panel["id"],
        )
    )


#: The panel types drawn, by Grafana's type name.
DRAW: dict[str, Callable[[Canvas, Box, dict[str, Any], list[Field]], None]] = {
    "timeseries": draw_timeseries,
    "candlestick": draw_candlestick,
    "stat": draw_stat,
    "table": draw_table,
}


# ..................................................................... a whole dashboard


@dataclass
class PanelPicture:
    """What became of one panel: its rows from the API, and whether its type is drawn."""

    id: int
    type: str
    title: str
    rows: int
    box: Box
    drawn: bool


@dataclass
class DashboardPicture:
    """A dashboard drawn as one plotly figure, with an account of its panels."""

    title: str
    figure: go.Figure
    size: tuple[int, int]
    panels: list[PanelPicture] = field(default_factory=list)


def render_dashboard(
    board: Mapping[str, Any],
    fetch: Fetch,
    *,
    time_range: TimeRange | None = None,
    variables: Mapping[str, str] | None = None,
    source: str = "",
    width: int = 1400,
) -> DashboardPicture:
    """Draw ``board`` (a dashboard's JSON) with the answers ``fetch`` gives its queries.

    ``time_range`` defaults to the dashboard's own (e.g. the last 15 minutes) as of now;
    ``variables`` replace template variables' saved values. Every panel is framed at its
    ``gridPos`` with its title; the types in :data:`DRAW` are drawn, any other says so.
    """
    time_range = time_range or TimeRange.of_board(board, datetime.now(UTC))
    values = {**board_variables(board), **(variables or {}), **time_range.macros()}
    panels = list(all_panels(board))
    rows = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels), default=0)
    height = int(HEADER_PX + rows * (ROW_PX + GAP_PX) + SIDE_PX)
    figure = go.Figure()
    canvas = Canvas(figure, width, height, time_range)
    # no "$" in the text: plotly.js takes $...$ for LaTeX and drops the whole annotation
    shown_variables = ", ".join(f"{name} = {values[name]}" for name in board_variables(board))
    note = (
        f"A render of {source or 'the dashboard JSON'} by tools/pictures.py, not a Grafana "
        "screenshot: each panel's Infinity query replayed against the marketstream API, "
        f"drawn with plotly · {time_range.describe()}"
        + (f" · variables: {shown_variables}" if shown_variables else "")
    )
    figure.add_annotation(
        text=f"<b>{board.get('title', '')}</b>",
        x=canvas.px(SIDE_PX),
        y=canvas.py(8),
        xref="paper",
        yref="paper",
        xanchor="left",
        yanchor="top",
        showarrow=False,
        font={"size": 19, "color": THEME["text"]},
    )
    figure.add_annotation(
        text=note,
        x=canvas.px(SIDE_PX),
        y=canvas.py(38),
        xref="paper",
        yref="paper",
        xanchor="left",
        yanchor="top",
        showarrow=False,
        font={"size": 11, "color": THEME["muted"]},
    )
    picture = DashboardPicture(str(board.get("title", "")), figure, (width, height))
    for panel in panels:
        if panel.get("type") == "row":
            continue
        box = canvas.grid_box(panel["gridPos"])
        figure.add_shape(
            type="rect",
            xref="paper",
            yref="paper",
            x0=canvas.px(box.left),
            x1=canvas.px(box.right),
            y0=canvas.py(box.bottom),
            y1=canvas.py(box.top),
            fillcolor=THEME["panel"],
            line={"color": THEME["border"], "width": 1},
            layer="below",
        )
        title = fill_variables(panel.get("title", ""), values)
        figure.add_annotation(
            name=f"title-{panel['id']}",
            text=f"<b>{title}</b>",
            x=canvas.px(box.left + 10),
            y=canvas.py(box.top + 7),
            xref="paper",
            yref="paper",
            xanchor="left",
            yanchor="top",
            showarrow=False,
            font={"size": 13, "color": THEME["text"]},
        )
        fields = panel_fields(panel, fetch, values)
        draw = DRAW.get(panel["type"])
        if draw is None:
            figure.add_annotation(
                text=f"(a {panel['type']} panel: not drawn by tools/pictures.py)",
                x=canvas.px((box.left + box.right) / 2),
                y=canvas.py((box.top + box.bottom) / 2),
                xref="paper",
                yref="paper",
                showarrow=False,
                font={"color": THEME["muted"]},
            )
        else:
            draw(canvas, box, panel, fields)
        count = max((len(f.values) for f in fields), default=0)
        picture.panels.append(
            PanelPicture(panel["id"], panel["type"], title, count, box, draw is not None)
        )
    figure.update_layout(
        width=width,
        height=height,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        paper_bgcolor=THEME["bg"],
        plot_bgcolor=THEME["panel"],
        font={"family": "Inter, Helvetica, Arial, sans-serif", "color": THEME["text"]},
        bargap=0.15,
    )
    return picture


# --------------------------------------------------------------------------- the run

#: The candles' bar width in the pictures: the demo CSV spans 49 s, which the dashboard's
#: saved 15s would draw as 3-4 bars; 5s (one of the variable's own choices) gives 10.
CANDLE = "5s"
#: How much of the range before the replay's first tick the dashboards show.
LEAD_S = 5.0


def part_settings(kafka: Any, folder: Path, part: str) -> Any:
    """Settings for one part of the run (``demo``, ``live``): the temporary broker, and a
    topic, group, store, CSV, log and output folder of its own under ``folder``."""
    topic = f"pictures-{part}-{uuid.uuid4().hex[:6]}"
    return kafka.with_(
        topic=topic,
        consumer_group=f"g-{topic}",
        db_path=folder / "market.duckdb",
        csv_path=folder / "indices_sample.csv",
        log_path=folder / "logs" / "pipeline.log",
        output_dir=folder / "output",
    )


@contextmanager
def live_replay(settings: Any, csv: Path, speed: float) -> Iterator[Any]:
    """``marketstream live --no-api --csv CSV --pace --speed X`` as a user runs it, with the
    Voila page on ``settings.voila_port``; stopped with SIGTERM (as Ctrl-C) at the end, so
    it writes its run's row and stops Voila and its kernels."""
    from marketstream.processes import child_env, start_child

    command = [sys.executable, "-m", "marketstream.cli", "live", "--no-api"]
    command += ["--csv", str(csv), "--pace", "--speed", f"{speed:g}"]
    url = f"http://127.0.0.1:{settings.voila_port}/"
    log = settings.log_path.parent / "live.out"
    child = start_child("live", command, child_env(settings), log, url, cwd=settings.db_path.parent)
    try:
        yield child
    finally:
        child.stop()
    if child.proc.returncode != 0:
        raise RuntimeError(
            f"marketstream live exited with {child.proc.returncode}: {child.log_tail()}"
        )


def make_pictures(out_dir: Path, speed: float, say: Callable[[str], None] = print) -> list[Path]:
    """The whole run (see the module docstring); returns the pictures written."""
    from marketstream import store
    from marketstream.broker import temporary_broker
    from marketstream.pipeline import run_pipeline
    from marketstream.processes import free_port, port_open
    from marketstream.settings import Settings
    from marketstream_api.app import create_app

    mine = Settings.from_env()  # only for where the Kafka jars are: nothing else of the user's
    defaults = Settings().with_(kafka_home=mine.kafka_home, kafka_version=mine.kafka_version)
    written: list[Path] = []
    with (
        tempfile.TemporaryDirectory(prefix="marketstream-pictures-") as tmp,
        temporary_broker(defaults, Path(tmp)) as kafka,
        chromium() as driver,
    ):
        demo = part_settings(kafka, Path(tmp) / "demo", "demo")
        say(f"demo: the papermill pipeline, notebooks 01-04 (broker {kafka.bootstrap_servers})")
        summary = run_pipeline(demo, progress=False)
        written += explore_pictures(driver, demo.output_dir / "04_explore.ipynb", out_dir)

        live = part_settings(kafka, Path(tmp) / "live", "live").with_(voila_port=free_port())
        say(
            f"live: replaying the demo CSV ({summary.rows} ticks) at {speed:g}x with the Voila page"
        )
        with live_replay(live, demo.csv_path, speed) as child:

            def died() -> str | None:
                return None if child.alive() else f"marketstream live exited: {child.log_tail()}"

            wait_for(lambda: port_open("127.0.0.1", live.voila_port), "the Voila page", died=died)
            open_page(driver, child.url)  # it watches the replay arrive (its freshness chart)
            wait_for(
                lambda: store.tick_count(live.db_path) >= summary.rows,
                f"all {summary.rows} ticks of the replay in DuckDB",
                died=died,
            )
            written.append(
                voila_screenshot(driver, child.url, summary.rows, out_dir / "voila-live.png")
            )
        # live mode has stopped: its run's row is written and the store is free to read
        first = store.ticks(live.db_path)["event_time"].min().to_pydatetime().replace(tzinfo=UTC)
        time_range = TimeRange(first - timedelta(seconds=LEAD_S), datetime.now(UTC))
        fetch = app_fetch(create_app(live))
        for path in sorted(DASHBOARDS.glob("*.json")):
            board = json.loads(path.read_text(encoding="utf-8"))
            picture = render_dashboard(
                board,
                fetch,
                time_range=time_range,
                variables={"candle": CANDLE},
                source=path.relative_to(ROOT).as_posix(),
            )
            name = path.stem.removeprefix("marketstream-")
            written.append(
                figure_png(driver, picture.figure, out_dir / f"grafana-{name}.png", picture.size)
            )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=IMAGES, help=f"folder (default: {IMAGES.relative_to(ROOT)})"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="the live replay's speed (default 1: the demo's 49 s at their own pace)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    written = make_pictures(args.out, args.speed)
    large = []
    for path in written:
        width, height = png_size(path)
        size = path.stat().st_size
        print(f"  {path}: {width}x{height}, {size / 1000:.0f} KB")
        if size > MAX_PICTURE_BYTES:
            large.append(path.name)
    print(f"{len(written)} pictures in {time.monotonic() - started:.0f}s")
    if large:
        print(f"larger than {MAX_PICTURE_BYTES / 1000:.0f} KB: {', '.join(large)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
