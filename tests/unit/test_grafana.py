"""The Grafana side: dashboard JSON, the Infinity datasource, and the API they read.

The static tests always run and need nothing but the files. The tests after them
start the real Flask app (test client, no server) on a DuckDB file holding 40
minutes of ticks and ask it every question a dashboard asks, with the dashboard's
own time range filled in as Grafana would, so a renamed column or route fails here
instead of as an empty panel. Then every panel that follows the time range is asked
again over an older range and both answers are checked against a model of the
endpoint computed here from the ticks: rows inside the range only, all of them,
different rows for different ranges. A dashboard in the original kit's style
(tests/data/original_kit_dashboard.json) goes through the same replay against the
original's shape (``/v0/...``, or its own paths under ``OriginalPaths``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
import yaml
from werkzeug.test import Client

from marketstream import store
from marketstream.settings import DEFAULT_SYMBOLS, PROJECT_ROOT
from marketstream.store import RunMetrics
from marketstream.ticks import Tick, generate_ticks
from marketstream_api.app import ORIGINAL_PATHS, OriginalPaths
from support.api import app_for
from support.factories import run_metrics, tick_table

GRAFANA = PROJECT_ROOT / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
DATASOURCE_FILE = GRAFANA / "provisioning" / "datasources" / "infinity.yml"
PROVIDER_FILE = GRAFANA / "provisioning" / "dashboards" / "marketstream.yml"

INFINITY = "yesoreyeram-infinity-datasource"
DATASOURCE_UID = "marketstream-api"
#: The routes the API serves for Grafana (api/marketstream_api/app.py).
API_ROUTES = {"/metrics", "/live", "/candles", "/runs", "/health", "/lag"}
#: The panels of the seed project's dashboards, kept by title.
SEED_TITLES = {
    "Live Price Trends – Global Markets",
    "Trading Volume",
    "Market Metrics",
    "Market Statistics Summary",
}
#: Infinity's column types (InfinityColumnFormat) and result formats.
COLUMN_TYPES = {"string", "number", "timestamp", "timestamp_epoch", "timestamp_epoch_s", "boolean"}
QUERY_FORMATS = {"table", "timeseries", "dataframe", "as-is"}
#: Dashboard schema versions of Grafana 11.0 (39) up to the last classic one (42, Grafana 12).
SCHEMA_VERSIONS = range(39, 43)
VARIABLE_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)")
SIMPLE_SELECTOR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
#: The time range's start and end, in epoch milliseconds: Infinity's own macros (filled in
#: by its backend, so they also work for alerts and public dashboards) and Grafana's.
RANGE_FROM = {"__timeFrom", "__from"}
RANGE_TO = {"__timeTo", "__to"}
TIME_VARIABLES = RANGE_FROM | RANGE_TO
#: What a panel that follows the range asks: since = the range's start, until = its end.
RANGE_QUERY = "since=${__timeFrom}&until=${__timeTo}"
#: Panel types drawn against a time axis: they must follow the dashboard's time range.
TIME_AXIS_TYPES = {"timeseries", "candlestick", "barchart", "trend", "state-timeline", "heatmap"}
#: What the description of a panel that does not follow the range must say.
IGNORES_RANGE = "ignores the dashboard's time range"
#: A dashboard as the original kit's users saved theirs (its names, its absolute URLs).
ORIGINAL_DASHBOARD = PROJECT_ROOT / "tests" / "data" / "original_kit_dashboard.json"
GRAFANA_NOW = re.compile(r"^now(?:-(\d+)([smhdw]))?$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class DashboardTarget(NamedTuple):
    """One request a dashboard makes: who asks, the URL (variables filled), what it reads."""

    title: str
    url: str
    root_selector: str
    columns: list[str]


class InfinityQuery(NamedTuple):
    """An Infinity query as saved in a dashboard, with where it came from."""

    dashboard: str
    title: str
    query: dict[str, Any]


# --------------------------------------------------------------------------- reading


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in dashboard_files()}


def all_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those folded inside collapsed rows."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _is_infinity(datasource: object) -> bool:
    return isinstance(datasource, dict) and datasource.get("type") == INFINITY


def infinity_queries(board: dict[str, Any]) -> Iterator[InfinityQuery]:
    """Panel targets and template-variable queries that go to the Infinity datasource."""
    name = board.get("title", "?")
    for panel in all_panels(board):
        for target in panel.get("targets", []):
            if _is_infinity(target.get("datasource") or panel.get("datasource")):
                yield InfinityQuery(name, panel.get("title", ""), target)
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query" and _is_infinity(variable.get("datasource")):
            query = variable["query"].get("infinityQuery", {})
            yield InfinityQuery(name, f"variable ${variable['name']}", query)


def variable_choices(board: dict[str, Any]) -> dict[str, list[str]]:
    """Values each template variable can take: every option of a custom variable, the
    saved current value of a query variable (its options come from the API at run time)."""
    choices: dict[str, list[str]] = {}
    for variable in board.get("templating", {}).get("list", []):
        current = variable.get("current", {}).get("value")
        if variable.get("type") == "custom":
            values = [o["value"] for o in variable.get("options", [])]
            values = values or [v.strip() for v in variable.get("query", "").split(",")]
            choices[variable["name"]] = values
        elif current is not None:
            choices[variable["name"]] = [current]
    return choices


def url_variables(url: str) -> set[str]:
    return {a or b for a, b in VARIABLE_RE.findall(url)}


def fill_variables(url: str, values: dict[str, str]) -> str:
    return VARIABLE_RE.sub(lambda m: values[m.group(1) or m.group(2)], url)


@dataclass(frozen=True)
class TimeRange:
    """A dashboard time range as Grafana hands it to a query: two instants, whole ms."""

    start: datetime  # aware UTC
    end: datetime

    def values(self) -> dict[str, str]:
        """The range's variables, as epoch milliseconds (what Grafana and Infinity send)."""
        start, end = _epoch_ms(self.start), _epoch_ms(self.end)
        return {**dict.fromkeys(RANGE_FROM, str(start)), **dict.fromkeys(RANGE_TO, str(end))}

    @property
    def since(self) -> datetime:
        """The start as the API reads it back: naive UTC, whole milliseconds."""
        return _from_ms(_epoch_ms(self.start))

    @property
    def until(self) -> datetime:
        return _from_ms(_epoch_ms(self.end))


def _epoch_ms(when: datetime) -> int:
    return math.floor(when.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def grafana_instant(expression: str, now: datetime) -> datetime:
    """``now`` or ``now-<N><unit>`` (the relative times the dashboards use) as an instant."""
    match = GRAFANA_NOW.match(expression)
    assert match, f"unsupported time expression {expression!r}"
    if match.group(1) is None:
        return now
    return now - timedelta(**{_UNIT[match.group(2)]: int(match.group(1))})


def default_range(board: dict[str, Any], now: datetime) -> TimeRange:
    """The dashboard's own time range (``time.from``/``time.to``) as of ``now``."""
    return TimeRange(
        grafana_instant(board["time"]["from"], now), grafana_instant(board["time"]["to"], now)
    )


def board_urls(
    board: dict[str, Any], time_range: TimeRange | None = None
) -> Iterator[tuple[InfinityQuery, str]]:
    """Every Infinity query of ``board`` with each URL it can produce (one per variable
    combination), the time variables filled from ``time_range`` (default: the board's
    own range as of now)."""
    time_values = (time_range or default_range(board, datetime.now(UTC))).values()
    choices = variable_choices(board)
    for query in infinity_queries(board):
        url = query.query.get("url", "")
        names = sorted(url_variables(url) - TIME_VARIABLES)
        for combo in itertools.product(*(choices.get(n, [""]) for n in names)):
            values = {**time_values, **dict(zip(names, combo, strict=True))}
            yield query, fill_variables(url, values)


def infinity_targets() -> Iterator[tuple[InfinityQuery, str]]:
    """Every Infinity query of every dashboard with each URL it can produce."""
    for board in load_dashboards().values():
        yield from board_urls(board)


def follows_range(url: str) -> bool:
    """Does this URL ask for the dashboard's time range?"""
    return bool(url_variables(url) & TIME_VARIABLES)


def dashboard_targets() -> list[DashboardTarget]:
    """(panel title, URL with query and variables filled, root_selector, column selectors)
    for every request the dashboards make; a live check replays them against the API."""
    seen: set[DashboardTarget] = set()
    out = []
    for query, url in infinity_targets():
        columns = [c["selector"] for c in query.query.get("columns", [])]
        target = DashboardTarget(query.title, url, query.query.get("root_selector", ""), columns)
        key = target._replace(columns=tuple(columns))  # type: ignore[arg-type]
        if key not in seen:
            seen.add(key)
            out.append(target)
    return out


def select_root(payload: Any, root_selector: str) -> Any:
    """What Infinity's root selector picks for a plain dotted path (the only kind used here)."""
    for part in filter(None, root_selector.split(".")):
        payload = payload[int(part)] if isinstance(payload, list) else payload[part]
    return payload


def overrides_by_name(panel: dict[str, Any]) -> list[str]:
    overrides = panel.get("fieldConfig", {}).get("overrides", [])
    return [o["matcher"]["options"] for o in overrides if o["matcher"]["id"] == "byName"]


def column_texts(panel: dict[str, Any]) -> set[str]:
    return {c["text"] for t in panel.get("targets", []) for c in t.get("columns", [])}


def panel_by_title(title: str) -> dict[str, Any]:
    for board in load_dashboards().values():
        for panel in all_panels(board):
            if panel.get("title") == title:
                return panel
    raise AssertionError(f"no panel titled {title!r}")


# --------------------------------------------------------------------------- static checks


def test_there_are_dashboards():
    assert len(dashboard_files()) >= 1


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_is_importable_json(path):
    text = path.read_text(encoding="utf-8")
    board = json.loads(text)
    assert text == json.dumps(board, indent=2, ensure_ascii=False) + "\n", "not pretty-printed"
    assert isinstance(board.get("uid"), str) and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert board.get("title")
    assert board.get("id") is None, "a saved id makes import clash with existing dashboards"
    assert board.get("schemaVersion") in SCHEMA_VERSIONS
    assert board.get("refresh") == "5s"
    assert board.get("panels")
    assert isinstance(board.get("templating", {}).get("list", []), list)
    assert {"from", "to"} <= set(board.get("time", {}))


def test_dashboard_uids_are_unique():
    uids = [board["uid"] for board in load_dashboards().values()]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_panels_have_titles_ids_and_positions(path):
    board = json.loads(path.read_text(encoding="utf-8"))
    ids = []
    for panel in all_panels(board):
        assert panel.get("title", "").strip(), f"untitled panel {panel.get('id')}"
        assert panel.get("type")
        ids.append(panel.get("id"))
        grid = panel.get("gridPos", {})
        assert {"h", "w", "x", "y"} <= set(grid), f"{panel['title']}: no gridPos"
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the grid"
    assert len(ids) == len(set(ids)), "panel ids must be unique within a dashboard"


def test_the_seed_panels_are_all_there():
    titles = {p["title"] for b in load_dashboards().values() for p in all_panels(b)}
    assert titles >= SEED_TITLES, f"missing: {sorted(SEED_TITLES - titles)}"


def test_price_and_volume_panels_read_live():
    prices = panel_by_title("Live Price Trends – Global Markets")
    assert prices["type"] == "timeseries"
    assert [urlsplit(t["url"]).path for t in prices["targets"]] == ["/live"]
    volume = panel_by_title("Trading Volume")
    assert volume["type"] in {"timeseries", "barchart"}
    assert [urlsplit(t["url"]).path for t in volume["targets"]] == ["/live"]
    selectors = {c["selector"] for c in volume["targets"][0]["columns"]}
    assert {f"{s}volume" for s in DEFAULT_SYMBOLS} <= selectors
    custom = volume["fieldConfig"]["defaults"]["custom"]
    assert custom["stacking"]["mode"] == "normal"
    assert custom["drawStyle"] == "bars" or volume["type"] == "barchart"


def test_metric_tables_and_gradient_summary():
    assert panel_by_title("Market Metrics")["type"] == "table"
    summary = panel_by_title("Market Statistics Summary")
    assert summary["type"] == "table"
    assert {urlsplit(t["url"]).path for t in summary["targets"]} == {"/metrics"}
    texts = {c["text"]: c["selector"] for c in summary["targets"][0]["columns"]}
    gradient = set()
    for override in summary["fieldConfig"]["overrides"]:
        for prop in override["properties"]:
            if prop["id"] == "custom.cellOptions" and prop["value"].get("mode") == "gradient":
                gradient.add(texts[override["matcher"]["options"]])
    assert {"avgprice", "maxprice", "minprice"} <= gradient


def test_candles_and_pipeline_health_panels():
    boards = load_dashboards().values()
    panels = [p for b in boards for p in all_panels(b)]
    candles = [p for p in panels if p["type"] == "candlestick"]
    assert candles and all(urlsplit(t["url"]).path == "/candles" for t in candles[0]["targets"])
    fields = candles[0]["options"]["fields"]
    assert set(fields.values()) <= column_texts(candles[0])
    health = {
        c["selector"]
        for p in panels
        if p["type"] == "stat"
        for t in p["targets"]
        if urlsplit(t["url"]).path == "/runs" and t["root_selector"] == "health"
        for c in t["columns"]
    }
    assert {"ingest_rate_per_s", "freshness_s", "errors", "dead_letters"} <= health
    runs_tables = [
        p
        for p in panels
        if p["type"] == "table" and any(t.get("root_selector") == "runs" for t in p["targets"])
    ]
    assert runs_tables


def test_every_infinity_target_is_well_formed():
    queries = [q for b in load_dashboards().values() for q in infinity_queries(b)]
    assert queries
    for where, title, query in queries:
        label = f"{where} / {title}"
        assert query.get("type") == "json", label
        assert query.get("source") == "url", label
        assert query.get("parser") in {"backend", "simple"}, label
        assert query.get("format", "table") in QUERY_FORMATS, label
        url = query.get("url", "")
        assert url.startswith("/"), f"{label}: {url!r} must be relative to the datasource URL"
        assert urlsplit(url).path in API_ROUTES, f"{label}: {url!r} is not an API route"
        assert isinstance(query.get("root_selector"), str), f"{label}: no root_selector"
        root = query["root_selector"]
        assert root == "" or SIMPLE_SELECTOR.match(root), f"{label}: root {root!r}"
        columns = query.get("columns")
        assert columns, f"{label}: declare the columns it uses"
        for column in columns:
            assert column.get("selector") and column.get("text"), f"{label}: {column}"
            assert column.get("type") in COLUMN_TYPES, f"{label}: {column}"
        texts = [c["text"] for c in columns]
        assert len(texts) == len(set(texts)), f"{label}: duplicate column names"
        if "datasource" in query:
            assert query["datasource"] == {"type": INFINITY, "uid": DATASOURCE_UID}, label


def test_panels_use_the_provisioned_datasource_by_uid():
    for board in load_dashboards().values():
        for panel in all_panels(board):
            datasource = panel.get("datasource")
            if _is_infinity(datasource):
                assert datasource["uid"] == DATASOURCE_UID, panel["title"]


def test_overrides_name_declared_columns():
    for board in load_dashboards().values():
        for panel in all_panels(board):
            if not panel.get("targets"):
                continue
            unknown = set(overrides_by_name(panel)) - column_texts(panel)
            assert not unknown, f"{panel['title']}: overrides for unknown fields {unknown}"


def test_url_variables_are_defined():
    for board in load_dashboards().values():
        defined = {v["name"] for v in board.get("templating", {}).get("list", [])}
        for _, title, query in infinity_queries(board):
            missing = url_variables(query.get("url", "")) - defined - TIME_VARIABLES
            assert not missing, f"{title}: undefined variables {missing}"


def test_every_panel_follows_the_time_range_or_says_it_does_not():
    """A panel with a time axis asks for exactly the dashboard's range (since = its start,
    until = its end); any other panel either does too or says in its description that it
    ignores the range (a figure of now, or of the whole store)."""
    followers = 0
    for board in load_dashboards().values():
        assert board.get("refresh"), f"{board['title']}: no refresh interval"
        for panel in all_panels(board):
            targets = [t for t in panel.get("targets", []) if _is_infinity(t.get("datasource"))]
            if not targets:
                continue
            label = f"{board['title']} / {panel['title']}"
            description = panel.get("description", "")
            for target in targets:
                url = target["url"]
                if follows_range(url):
                    followers += 1
                    assert RANGE_QUERY in url, f"{label}: {url!r} should end in {RANGE_QUERY}"
                    assert "dashboard's time range" in description, label
                else:
                    assert panel["type"] not in TIME_AXIS_TYPES, f"{label} ignores the range"
                    assert IGNORES_RANGE in description, f"{label}: say that it {IGNORES_RANGE}"
    assert followers >= 6


def test_datasource_provisioning():
    config = yaml.safe_load(DATASOURCE_FILE.read_text())
    assert config["apiVersion"] == 1
    (datasource,) = [d for d in config["datasources"] if d["type"] == INFINITY]
    assert datasource["uid"] == DATASOURCE_UID
    url = datasource["url"]
    assert VARIABLE_RE.fullmatch(url), "the API URL should come from an environment variable"
    assert url in datasource["jsonData"]["allowedHosts"]


def test_dashboards_provider_loads_the_dashboard_folder():
    config = yaml.safe_load(PROVIDER_FILE.read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert VARIABLE_RE.fullmatch(path) or path.rstrip("/").endswith("dashboards"), path


def test_dashboard_targets_cover_the_api():
    targets = dashboard_targets()
    assert {urlsplit(t.url).path for t in targets} == {
        "/metrics",
        "/live",
        "/candles",
        "/runs",
        "/lag",
    }
    for target in targets:
        assert "$" not in target.url, f"{target.title}: unfilled variable in {target.url}"
        assert target.columns


# --------------------------------------------------------------------------- against the API

#: The replayed store: 40 minutes of ticks, two a second per default symbol, ending now.
STORE_MINUTES = 40
TICK_EVERY = timedelta(milliseconds=500)


@dataclass(frozen=True)
class MarketStore:
    """A DuckDB file and what was written into it, for the models below."""

    path: Path
    end: datetime  # aware UTC, a whole second; the newest tick is half a second before
    ticks: list[Tick]
    runs: list[RunMetrics]

    def older_range(self) -> TimeRange:
        """Ten minutes ending 25 minutes ago, both bounds on a tick's instant (so `since`
        must leave that tick out and `until` must keep it in)."""
        return TimeRange(self.end - timedelta(minutes=35), self.end - timedelta(minutes=25))


def _naive(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None)


def _run(run_id: str, ticks: Sequence[Tick], started: datetime, minutes: float) -> RunMetrics:
    return run_metrics(
        ticks,
        run_id=run_id,
        started_at=_naive(started),
        elapsed_s=minutes * 60,
        throughput_per_s=len(ticks) / (minutes * 60),
    )


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> MarketStore:
    path = tmp_path_factory.mktemp("grafana") / "market.duckdb"
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(minutes=STORE_MINUTES)
    count = int(timedelta(minutes=STORE_MINUTES) / TICK_EVERY)
    ticks = generate_ticks(DEFAULT_SYMBOLS, count, seed=7, start=start, interval=TICK_EVERY)
    runs = [
        _run("ancient-run", ticks[:30], end - timedelta(hours=2), 1),  # in no range below
        _run("old-run", ticks[30:60], end - timedelta(minutes=30), 2),  # the older range
        _run("recent-run", ticks[60:90], end - timedelta(minutes=5), 1),  # the default one
    ]
    with store.open_writer(path) as writer:
        writer.write_batch(tick_table(ticks, topic="market_ticks"))
        for run in runs:
            writer.record_run(run)
    assert store.tick_count(path) == count * len(DEFAULT_SYMBOLS)
    return MarketStore(path, end, ticks, runs)


#: The market's topic is this far ahead of the store in every partition (the lag panel's model).
MARKET_LAG = 5


def market_ends(market: MarketStore) -> dict[tuple[str, int], int]:
    """The topic's end offsets for the market store: each partition ``MARKET_LAG`` ahead."""
    return {key: row[0] + MARKET_LAG for key, row in store.partition_positions(market.path).items()}


def test_the_lag_panel_shows_each_partition_against_the_store(market, tmp_path):
    """The lag panel's rows are the store's positions against the end offsets Kafka gives."""
    client = app_for(market.path, tmp_path, broker_up=False, ends=market_ends(market)).test_client()
    [(query, url)] = [(q, u) for q, u in infinity_targets() if urlsplit(u).path == "/lag"]
    before = datetime.now(UTC).replace(tzinfo=None)  # the answer's clock reads no earlier
    rows = _rows(client, query.title, url, query.query["root_selector"])
    positions = store.partition_positions(market.path)
    assert rows and len(rows) == len(positions)
    newest = max(_naive(t.timestamp) for t in market.ticks)
    # a partition's newest tick is no newer than the market's, and the age is taken after
    # ``before`` and rounded to ms (rounding keeps the order): a condition, not a clock
    min_age_s = round((before - newest).total_seconds(), 3)
    for row in rows:
        position, _ = positions[(row["topic"], row["partition"])]
        assert row["stored_position"] == position
        assert (row["end_offset"], row["lag"]) == (position + MARKET_LAG, MARKET_LAG)
        assert row["newest_tick_age_s"] >= min_age_s


def _check_value(label: str, selector: str, kind: str, value: Any) -> None:
    if value is None:
        return
    if kind == "number":
        assert isinstance(value, int | float) and not isinstance(value, bool), (
            f"{label}: {selector}={value!r} is not a number"
        )
    elif kind == "string":
        assert isinstance(value, str), f"{label}: {selector}={value!r} is not a string"
    elif kind == "timestamp":
        # Infinity's backend parser reads RFC 3339 strings; it needs the offset ("Z").
        assert isinstance(value, str), f"{label}: {selector}={value!r} is not a time string"
        parsed = datetime.fromisoformat(value)
        assert parsed.tzinfo is not None, f"{label}: {selector}={value!r} has no UTC offset"


def _rows(client: Any, label: str, url: str, root_selector: str) -> list[dict[str, Any]]:
    """What the panel's query reads: the answer at its root selector, as a list of rows."""
    response = client.get(url)
    assert response.status_code == 200, f"{label}: HTTP {response.status_code} {response.data}"
    selected = select_root(orjson.loads(response.get_data()), root_selector)
    return selected if isinstance(selected, list) else [selected]


def _check_columns(label: str, rows: list[dict[str, Any]], columns: list[dict[str, Any]]) -> None:
    """Each declared column is in every row, with the declared type."""
    for column in columns:
        selector = column["selector"]
        missing = sum(selector not in row for row in rows)
        assert not missing, f"{label}: {selector!r} missing from {missing}/{len(rows)} rows"
        for row in rows:
            _check_value(label, selector, column["type"], row[selector])


def test_dashboard_targets_match_api(market, tmp_path):
    """Every request of every dashboard, over its own time range as of now: a 200 with
    rows, each declared column in every row with the declared type."""
    client = app_for(market.path, tmp_path, broker_up=False, ends=market_ends(market)).test_client()
    checked = 0
    for query, url in infinity_targets():
        label = f"{query.title} ({url})"
        rows = _rows(client, label, url, query.query.get("root_selector", ""))
        assert rows, f"{label}: no rows to show"
        _check_columns(label, rows, query.query["columns"])
        checked += 1
    assert checked >= len(dashboard_targets())

    # The candles symbol picked by default is one the symbol variable offers.
    for board in load_dashboards().values():
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") == "query" and _is_infinity(variable.get("datasource")):
                inner = variable["query"]["infinityQuery"]
                rows = select_root(client.get(inner["url"]).get_json(), inner["root_selector"])
                offered = {row[inner["columns"][0]["selector"]] for row in rows}
                assert variable["current"]["value"] in offered, variable["name"]


# --------------------------------------------------------------------------- the time range, proven

#: A model of each endpoint: (ticks, runs, range, query parameters) -> the rows it must give.
#: Computed here from what was written, without the store's SQL.


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _in_range(ticks: Sequence[Tick], time_range: TimeRange) -> list[tuple[datetime, Tick]]:
    since, until = time_range.since, time_range.until
    return [(ts, t) for t in ticks if since < (ts := _naive(t.timestamp)) <= until]


def _seconds(spec: str) -> int:
    return int(spec[:-1]) * {"s": 1, "m": 60, "h": 3600}[spec[-1]]


def model_live(market: MarketStore, time_range: TimeRange, query: dict[str, str]) -> list[dict]:
    """Per second: each symbol's last price and summed volume; the newest `limit` seconds."""
    last: dict[tuple[datetime, str], tuple[datetime, float]] = {}
    volume: dict[tuple[datetime, str], int] = defaultdict(int)
    for ts, tick in _in_range(market.ticks, time_range):
        key = (ts.replace(microsecond=0), tick.symbol)
        if key not in last or ts > last[key][0]:
            last[key] = (ts, tick.price)
        volume[key] += tick.volume
    seconds = sorted({second for second, _ in last})[-int(query.get("limit", 300)) :]
    symbols = sorted({symbol for second, symbol in last if second in set(seconds)})
    return [
        {
            "time": _iso(second),
            **{s: last[(second, s)][1] if (second, s) in last else None for s in symbols},
            **{f"{s}volume": volume.get((second, s)) for s in symbols},
        }
        for second in seconds
    ]


def model_candles(market: MarketStore, time_range: TimeRange, query: dict[str, str]) -> list[dict]:
    """OHLCV bars of one symbol, aligned on multiples of the width; the newest `limit`."""
    width = _seconds(query["interval"])
    bars: dict[datetime, list[tuple[datetime, Tick]]] = defaultdict(list)
    for ts, tick in _in_range(market.ticks, time_range):
        if tick.symbol == query["symbol"]:
            epoch = int(ts.replace(tzinfo=UTC).timestamp())
            bars[_from_ms((epoch - epoch % width) * 1000)].append((ts, tick))
    out = []
    for start in sorted(bars)[-int(query.get("limit", 500)) :]:
        ticks = [t for _, t in sorted(bars[start], key=lambda pair: pair[0])]
        volume = sum(t.volume for t in ticks)
        out.append(
            {
                "time": _iso(start),
                "open": ticks[0].price,
                "high": max(t.price for t in ticks),
                "low": min(t.price for t in ticks),
                "close": ticks[-1].price,
                "volume": volume,
                "vwap": sum(t.price * t.volume for t in ticks) / volume if volume else None,
                "ticks": len(ticks),
            }
        )
    return out


def model_metrics(market: MarketStore, time_range: TimeRange, query: dict[str, str]) -> list[dict]:
    """Per symbol over the range: count, average/max/min price, volume, newest tick."""
    by_symbol: dict[str, list[tuple[datetime, Tick]]] = defaultdict(list)
    for ts, tick in _in_range(market.ticks, time_range):
        by_symbol[tick.symbol].append((ts, tick))
    return [
        {
            "symbol": symbol,
            "tickcount": len(pairs),
            "avgprice": sum(t.price for _, t in pairs) / len(pairs),
            "maxprice": max(t.price for _, t in pairs),
            "minprice": min(t.price for _, t in pairs),
            "totalvolume": sum(t.volume for _, t in pairs),
            "time": _iso(max(ts for ts, _ in pairs)),
        }
        for symbol, pairs in sorted(by_symbol.items())
    ]


def model_runs(market: MarketStore, time_range: TimeRange, query: dict[str, str]) -> list[dict]:
    """The runs that ran during the range (started by its end, not ended by its start)."""
    runs = [
        r
        for r in market.runs
        if r.started_at <= time_range.until and (r.ended_at or r.started_at) > time_range.since
    ]
    runs.sort(key=lambda r: r.started_at, reverse=True)
    return [{"run_id": r.run_id} for r in runs[: int(query.get("limit", 50))]]


MODELS = {
    "/live": model_live,
    "/candles": model_candles,
    "/metrics": model_metrics,
    "/runs": model_runs,
}
#: Figures DuckDB rounds or sums in another order than the model: compared to this much.
TOLERANCE = {"avgprice": 1e-4, "vwap": 1e-6}


def _assert_rows(label: str, got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected), f"{label}: {len(got)} rows, the model has {len(expected)}"
    for row, want in zip(got, expected, strict=True):
        assert set(want) <= set(row), f"{label}: {sorted(set(want) - set(row))} missing"
        for key, value in want.items():
            if key in TOLERANCE and value is not None:
                assert row[key] == pytest.approx(value, abs=TOLERANCE[key]), (label, key, row)
            else:
                assert row[key] == value, f"{label}: {key}={row[key]!r}, model {value!r}"


def _times_inside(path: str, rows: list[dict], time_range: TimeRange, query: dict) -> None:
    """No row lies outside the range: a second, bar or run that starts after its end, or
    ends by its start, would be data the panel must not show."""
    if path == "/runs":
        return  # the model compares run ids, and only runs of the range are there
    since, until = time_range.since, time_range.until
    span = {  # what a row's `time` starts: a second, a bar, or (metrics) the newest tick
        "/live": timedelta(seconds=1),
        "/candles": timedelta(seconds=_seconds(query.get("interval", "1m"))),
    }.get(path, timedelta(microseconds=1))
    for row in rows:
        start = datetime.fromisoformat(row["time"]).replace(tzinfo=None)
        assert start <= until and start + span > since, (path, row["time"], since, until)


def range_targets(board: dict[str, Any], ranges: Sequence[TimeRange]) -> Iterator[tuple]:
    """(query, URL per range) for each request of ``board`` that follows the time range."""
    per_range = [list(board_urls(board, r)) for r in ranges]
    for pairs in zip(*per_range, strict=True):
        query = pairs[0][0]
        if follows_range(query.query["url"]):
            yield query, [url for _, url in pairs]


def test_panels_show_exactly_the_dashboard_time_range(market, tmp_path):
    """Every panel that follows the time range, over the dashboard's default range and over
    an older ten minutes: each answer is the model's (the ticks inside the range, all of
    them, none outside; since exclusive, until inclusive, both on a tick here), and the
    two answers differ. A dashboard refresh moves a relative range, so this is also
    what each refresh shows."""
    client = app_for(market.path, tmp_path, broker_up=False, ends=market_ends(market)).test_client()
    now = datetime.now(UTC)
    checked = set()
    for board in load_dashboards().values():
        ranges = [default_range(board, now), market.older_range()]
        for query, urls in range_targets(board, ranges):
            answers = []
            for time_range, url in zip(ranges, urls, strict=True):
                label = f"{board['title']} / {query.title} ({url})"
                path, params = urlsplit(url).path, parse_qs(urlsplit(url).query)
                params = {k: v[-1] for k, v in params.items()}
                assert params["since"] == str(_epoch_ms(time_range.start)), label
                assert params["until"] == str(_epoch_ms(time_range.end)), label
                rows = _rows(client, label, url, query.query.get("root_selector", ""))
                assert rows, f"{label}: nothing in the range"
                _assert_rows(label, rows, MODELS[path](market, time_range, params))
                _times_inside(path, rows, time_range, params)
                _check_columns(label, rows, query.query["columns"])
                answers.append(rows)
            assert answers[0] != answers[1], f"{query.title}: the same rows for both ranges"
            checked.add((board["title"], query.title))
    titles = {title for _, title in checked}
    assert titles >= {
        "Live Price Trends – Global Markets",
        "Trading Volume",
        "Market Metrics",
        "Market Statistics Summary",
        "Candles – $symbol ($candle)",
        "Consumer Runs",
    }, titles


def test_a_range_past_the_data_is_empty_not_the_newest_rows(market, tmp_path):
    """Before the fix the price panel asked for the newest 300 seconds whatever the range;
    a range with no ticks in it must now show nothing at all."""
    client = app_for(market.path, tmp_path, broker_up=False, ends=market_ends(market)).test_client()
    before = TimeRange(market.end - timedelta(hours=3), market.end - timedelta(hours=2))
    for query, (url,) in range_targets(load_dashboards()["marketstream-markets.json"], [before]):
        assert _rows(client, query.title, url, "") == [], url


# ------------------------------------------------------------- the original kit's dashboards


def original_dashboard() -> dict[str, Any]:
    return json.loads(ORIGINAL_DASHBOARD.read_text(encoding="utf-8"))


def _original_targets(edit_paths: bool) -> Iterator[tuple[dict, dict, str]]:
    """(panel, target, request path and query) of the original-style dashboard: its own
    absolute URL's path, or that path moved to ``/v0/`` (the documented one edit)."""
    for panel in all_panels(original_dashboard()):
        for target in panel.get("targets", []):
            parts = urlsplit(target["url"])
            path = ORIGINAL_PATHS[parts.path] if edit_paths else parts.path
            yield panel, target, path + (f"?{parts.query}" if parts.query else "")


def test_the_original_style_dashboard_is_what_the_original_kit_saved():
    """Its queries are the original's: absolute URLs to the original API's host, the
    original's paths, and its field names (no column of this kit's shape)."""
    urls = {urlsplit(t["url"]) for _, t, _ in _original_targets(edit_paths=False)}
    assert {u.netloc for u in urls} == {"duckdb-api:8080"}
    assert {u.path for u in urls} == set(ORIGINAL_PATHS)
    read = {
        name
        for panel, target, _ in _original_targets(edit_paths=False)
        for name in [c["selector"] for c in target["columns"]] + overrides_by_name(panel)
    }
    assert {"tick_count", "avg_price", "max_price", "min_price"} <= read
    assert {f"{s}_volume" for s in DEFAULT_SYMBOLS} <= read
    assert not read & {"tickcount", "avgprice", *(f"{s}volume" for s in DEFAULT_SYMBOLS)}


@pytest.mark.parametrize(
    "edit_paths", [False, True], ids=["own-paths-under-OriginalPaths", "paths-moved-to-v0"]
)
def test_an_original_kit_dashboard_sees_data(market, tmp_path, edit_paths):
    """The original's panels, replayed: unchanged against ``serve --original-paths``
    (:class:`OriginalPaths`), or with their paths moved to ``/v0/`` against the kit's
    API. Every field a panel reads (declared columns, and the fields its overrides name
    when it lets Infinity find the columns) is in every row."""
    app = app_for(market.path, tmp_path, broker_up=False, ends=market_ends(market))
    client = app.test_client() if edit_paths else Client(OriginalPaths(app))
    checked = 0
    for panel, target, url in _original_targets(edit_paths):
        label = f"{panel['title']} ({url})"
        rows = _rows(client, label, url, target.get("root_selector", ""))
        assert rows, f"{label}: no rows"
        _check_columns(label, rows, target["columns"])
        for name in overrides_by_name(panel):
            assert all(name in row for row in rows), f"{label}: no {name!r} to style"
        checked += 1
    assert checked >= 5


def test_the_original_shape_is_the_original_kit_s(market, tmp_path):
    """``/v0/live``: 50 seconds in which every symbol ticked, newest first, prices and
    ``<SYMBOL>_volume``; ``/v0/metrics``: the original's names, prices to 2 decimals and
    the answer's time. The kit's own ``/live`` and ``/metrics`` keep their shape."""
    client = app_for(market.path, tmp_path, broker_up=False, ends=market_ends(market)).test_client()
    rows = _rows(client, "v0 live", "/v0/live", "")
    newest = TimeRange(market.end - timedelta(seconds=51), market.end)  # its 50 whole seconds
    expected = list(reversed(model_live(market, newest, {"limit": "50"})))
    renamed = [{k.replace("volume", "_volume"): v for k, v in r.items()} for r in expected]
    _assert_rows("v0 live", rows, renamed)
    assert all(set(row) == set(renamed[0]) for row in rows)

    before = datetime.now(UTC) - timedelta(seconds=1)
    metrics = _rows(client, "v0 metrics", "/v0/metrics", "")
    model = model_metrics(market, TimeRange(market.end - timedelta(days=1), market.end), {})
    assert [m["symbol"] for m in metrics] == [m["symbol"] for m in model]
    for got, want in zip(metrics, model, strict=True):
        assert list(got) == ["symbol", "tick_count", "avg_price", "max_price", "min_price", "time"]
        assert got["tick_count"] == want["tickcount"]
        assert got["avg_price"] == pytest.approx(round(want["avgprice"], 2), abs=0.01)
        assert got["max_price"] == round(want["maxprice"], 2)
        assert datetime.fromisoformat(got["time"]) >= before  # the answer's time, as then

    kit = _rows(client, "kit live", "/live?limit=5", "")
    assert set(kit[0]) == {"time", *DEFAULT_SYMBOLS, *(f"{s}volume" for s in DEFAULT_SYMBOLS)}
    kit_metrics = _rows(client, "kit metrics", "/metrics", "")
    assert "tick_count" not in kit_metrics[0] and "tickcount" in kit_metrics[0]
