"""The Grafana side: dashboard JSON, the Infinity datasource, and the API they read.

The static tests always run and need nothing but the files. The last test starts
the real Flask app (test client, no server) on a small DuckDB file and asks it
every question a dashboard asks, so a renamed column or route fails here instead
of as an empty panel.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest
import yaml

from marketstream import store
from marketstream.settings import DEFAULT_SYMBOLS, PROJECT_ROOT
from marketstream.ticks import generate_ticks
from support.api import app_for
from support.factories import run_metrics, tick_table, write_store

GRAFANA = PROJECT_ROOT / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
DATASOURCE_FILE = GRAFANA / "provisioning" / "datasources" / "infinity.yml"
PROVIDER_FILE = GRAFANA / "provisioning" / "dashboards" / "marketstream.yml"

INFINITY = "yesoreyeram-infinity-datasource"
DATASOURCE_UID = "marketstream-api"
#: The routes the API serves for Grafana (api/marketstream_api/app.py).
API_ROUTES = {"/metrics", "/live", "/candles", "/runs", "/health"}
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


def infinity_targets() -> Iterator[tuple[InfinityQuery, str]]:
    """Every Infinity query with each URL it can produce (one per variable combination)."""
    for board in load_dashboards().values():
        choices = variable_choices(board)
        for query in infinity_queries(board):
            url = query.query.get("url", "")
            names = sorted(url_variables(url))
            for combo in itertools.product(*(choices.get(n, [""]) for n in names)):
                yield query, fill_variables(url, dict(zip(names, combo, strict=True)))


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
            missing = url_variables(query.get("url", "")) - defined
            assert not missing, f"{title}: undefined variables {missing}"


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
    assert {urlsplit(t.url).path for t in targets} == {"/metrics", "/live", "/candles", "/runs"}
    for target in targets:
        assert "$" not in target.url, f"{target.title}: unfilled variable in {target.url}"
        assert target.columns


# --------------------------------------------------------------------------- against the API


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


def test_dashboard_targets_match_api(tmp_path):
    db_path = tmp_path / "market.duckdb"
    store.init_db(db_path)
    now = datetime.now(UTC).replace(tzinfo=None)
    # 120 ticks per default symbol ending now, as the consumer hands them to the store
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=120)
    ticks = generate_ticks(DEFAULT_SYMBOLS, 120, seed=7, start=start)
    run = run_metrics(
        ticks,
        run_id="test-run",
        started_at=now - timedelta(seconds=3),
        elapsed_s=3.0,
        throughput_per_s=120.0,
        max_event_time=now,
    )
    write_store(db_path, tick_table(ticks, topic="market_ticks"), run=run)
    assert store.tick_count(db_path) == 120 * len(DEFAULT_SYMBOLS)
    client = app_for(db_path, tmp_path, broker_up=False).test_client()

    checked = 0
    for query, url in infinity_targets():
        label = f"{query.title} ({url})"
        response = client.get(url)
        assert response.status_code == 200, f"{label}: HTTP {response.status_code} {response.data}"
        selected = select_root(response.get_json(), query.query.get("root_selector", ""))
        rows = selected if isinstance(selected, list) else [selected]
        assert rows, f"{label}: no rows to show"
        for column in query.query["columns"]:
            selector = column["selector"]
            missing = sum(selector not in row for row in rows)
            assert not missing, f"{label}: {selector!r} missing from {missing}/{len(rows)} rows"
            for row in rows:
                _check_value(label, selector, column["type"], row[selector])
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
