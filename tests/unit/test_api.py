"""The Flask API (:mod:`marketstream_api`) on a real DuckDB file through Flask's test
client: the shapes Grafana relies on, errors as JSON, the broker probe, and the
OpenAPI document. Under the real server (granian): test_api_serve.py; against the
session's real broker: tests/integration/test_api.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient

from marketstream import store
from marketstream.clients import KafkaClients
from marketstream.logs import read_log
from marketstream.settings import Settings
from marketstream.ticks import DEFAULT_START, Tick, generate_ticks
from marketstream_api.app import StoreReader, create_app
from marketstream_api.health import BrokerProbe
from support.api import app_for, get_json
from support.factories import dead_table, run_metrics, tick_table, write_store
from support.fakes import PASSWORD, SECURITY, recorder

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")
N = 50
RECEIVED = datetime(2025, 1, 6, 15, 0)


def make_db(path: Path, ticks: list[Tick], *, with_run: bool = True) -> Path:
    """A store of ``ticks`` (received at RECEIVED), with one dead letter and one run
    (the run's figures are the ones the tests below expect) unless ``with_run`` is off."""
    dead = dead_table(
        ("market_ticks", 0, 999, b"SP500", b"{not json", "not valid UTF-8 JSON", RECEIVED)
    )
    run = run_metrics(
        ticks, run_id="run-1", started_at=RECEIVED, elapsed_s=2.0, throughput_per_s=75.5, errors=1
    )
    return write_store(
        path,
        tick_table(ticks, topic="market_ticks", received_at=RECEIVED),
        dead=dead if with_run else None,
        run=run if with_run else None,
    )


@pytest.fixture(scope="module")
def market_ticks() -> list[Tick]:
    return generate_ticks(SYMBOLS, N, seed=7)


@pytest.fixture(scope="module")
def db(tmp_path_factory, market_ticks) -> Path:
    return make_db(tmp_path_factory.mktemp("api") / "market.duckdb", market_ticks)


@pytest.fixture
def client(db, tmp_path):
    return app_for(db, tmp_path).test_client()


@pytest.fixture
def missing_client(tmp_path):
    return app_for(tmp_path / "nope" / "missing.duckdb", tmp_path).test_client()


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- /metrics


def test_metrics_per_symbol(client, market_ticks):
    rows = get_json(client, "/metrics")
    assert [r["symbol"] for r in rows] == sorted(SYMBOLS)
    last = iso(DEFAULT_START + timedelta(seconds=N - 1))
    for row in rows:
        assert list(row) == [
            "symbol",
            "tickcount",
            "avgprice",
            "maxprice",
            "minprice",
            "totalvolume",
            "time",
        ]
        mine = [t for t in market_ticks if t.symbol == row["symbol"]]
        assert row["tickcount"] == N
        assert row["maxprice"] >= row["avgprice"] >= row["minprice"]
        assert row["maxprice"] == max(t.price for t in mine)
        assert row["totalvolume"] == sum(t.volume for t in mine)
        assert isinstance(row["totalvolume"], int)
        assert row["time"] == last


def test_unknown_parameters_are_ignored_and_cors_is_open(client):
    response = client.get("/metrics?foo=bar&limit=zzz")
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"


# --------------------------------------------------------------------------- /live


def test_live_wide_rows(client, market_ticks):
    rows = get_json(client, "/live")
    assert len(rows) == N
    assert set(rows[0]) == {"time", *SYMBOLS, *(f"{s}volume" for s in SYMBOLS)}
    assert rows[0]["time"] == iso(DEFAULT_START)
    newest = {t.symbol: t for t in market_ticks[-len(SYMBOLS) :]}
    for symbol, tick in newest.items():
        assert rows[-1][symbol] == tick.price
        assert rows[-1][f"{symbol}volume"] == tick.volume
        assert isinstance(rows[-1][f"{symbol}volume"], int)


def test_live_limit_keeps_newest(client):
    rows = get_json(client, "/live?limit=5")
    assert [r["time"] for r in rows] == [
        iso(DEFAULT_START + timedelta(seconds=s)) for s in range(N - 5, N)
    ]


@pytest.mark.parametrize(
    ("since", "first"),
    [
        ("2025-01-06T14:30:45Z", 46),
        ("2025-01-06T14:30:45", 46),
        ("2025-01-06T15:30:45%2B01:00", 46),
        ("2025-01-06T15:30:45+01:00", 46),  # an unencoded + arrives as a space
        ("2025-01-06%2014:30:45", 46),
        ("2025-01-06%2014:30", 1),
        (str(int((DEFAULT_START + timedelta(seconds=45)).timestamp() * 1000)), 46),
        ("", 0),  # Grafana sends empty variables: same as absent
    ],
)
def test_live_since_is_exclusive(client, since, first):
    rows = get_json(client, f"/live?since={since}")
    assert [r["time"] for r in rows] == [
        iso(DEFAULT_START + timedelta(seconds=s)) for s in range(first, N)
    ]


def test_live_until_is_inclusive_and_bounds_the_newest_kept(client):
    """A range in the past: the newest `limit` seconds up to `until`, not up to now."""
    ms = int((DEFAULT_START + timedelta(seconds=30)).timestamp() * 1000)
    rows = get_json(client, f"/live?limit=5&until={ms}")
    assert [r["time"] for r in rows] == [
        iso(DEFAULT_START + timedelta(seconds=s)) for s in range(26, 31)
    ]
    rows = get_json(client, "/live?since=2025-01-06T14:30:10Z&until=2025-01-06T14:30:20Z")
    assert [r["time"] for r in rows] == [
        iso(DEFAULT_START + timedelta(seconds=s)) for s in range(11, 21)
    ]
    assert get_json(client, "/live?since=2025-01-06T14:30:10Z&until=2025-01-06T14:30:10Z") == []


def test_candles_metrics_and_runs_take_the_range(client, market_ticks):
    since, until = "2025-01-06T14:30:09Z", "2025-01-06T14:30:29Z"  # seconds 10 to 29
    bars = get_json(client, f"/candles?symbol=SP500&interval=10s&since={since}&until={until}")
    assert [(b["time"], b["ticks"]) for b in bars] == [
        (iso(DEFAULT_START + timedelta(seconds=10)), 10),
        (iso(DEFAULT_START + timedelta(seconds=20)), 10),
    ]
    inside = [t for t in market_ticks if 10 <= (t.timestamp - DEFAULT_START).total_seconds() < 30]
    for row in get_json(client, f"/metrics?since={since}&until={until}"):
        mine = [t for t in inside if t.symbol == row["symbol"]]
        assert row["tickcount"] == 20
        assert row["totalvolume"] == sum(t.volume for t in mine)
        assert row["maxprice"] == max(t.price for t in mine)
        assert row["time"] == iso(DEFAULT_START + timedelta(seconds=29))
    everything = get_json(client, "/metrics?since=2025-01-01T00:00:00Z")
    assert everything == get_json(client, "/metrics")  # the range's answer is the view's
    assert get_json(client, "/metrics?until=2025-01-01T00:00:00Z") == []
    # run-1 ran 15:00:00 to 15:00:02
    assert [r["run_id"] for r in get_json(client, "/runs?since=2025-01-06T15:00:01Z")["runs"]] == [
        "run-1"
    ]
    assert get_json(client, "/runs?since=2025-01-06T15:00:02Z")["runs"] == []
    assert get_json(client, "/runs?until=2025-01-06T14:59:59Z")["runs"] == []
    assert get_json(client, "/runs?until=2025-01-06T14:59:59Z")["health"]["ticks"] == N * 3


@pytest.mark.parametrize("path", ["/live", "/metrics", "/candles?symbol=SP500", "/runs"])
def test_a_range_that_ends_before_it_starts_is_a_400(client, path):
    joiner = "&" if "?" in path else "?"
    body = get_json(client, f"{path}{joiner}since=2025-01-06T14:31:00Z&until=1736173800000", 400)
    assert body["parameter"] == "until"


def test_the_original_kit_s_shape_at_v0_and_at_its_own_paths(db, tmp_path, market_ticks):
    from werkzeug.test import Client

    from marketstream_api.app import OriginalPaths

    app = app_for(db, tmp_path)
    rows = get_json(app.test_client(), "/v0/live")
    assert len(rows) == N  # fewer complete seconds than the original's 50 rows: all of them
    assert rows[0]["time"] == iso(DEFAULT_START + timedelta(seconds=N - 1))  # newest first
    assert set(rows[0]) == {"time", *SYMBOLS, *(f"{s}_volume" for s in SYMBOLS)}
    assert [r["time"] for r in get_json(app.test_client(), "/v0/live?limit=2")] == [
        iso(DEFAULT_START + timedelta(seconds=s)) for s in (N - 1, N - 2)
    ]
    before = datetime.now(UTC)
    metrics = get_json(app.test_client(), "/v0/metrics")
    after = datetime.now(UTC)
    sp500 = next(m for m in metrics if m["symbol"] == "SP500")
    prices = [t.price for t in market_ticks if t.symbol == "SP500"]
    assert sp500["tick_count"] == N
    assert sp500["avg_price"] == round(sum(prices) / N, 2)
    assert sp500["max_price"] == round(max(prices), 2)
    stamped = datetime.fromisoformat(sp500["time"])
    assert before <= stamped <= after  # the answer's time (in microseconds, like the clock)

    original = Client(OriginalPaths(app))
    assert get_json(original, "/live") == get_json(app.test_client(), "/v0/live")
    assert [m["symbol"] for m in get_json(original, "/metrics")] == sorted(SYMBOLS)
    kit = app.test_client()
    assert get_json(original, "/candles?symbol=SP500") == get_json(kit, "/candles?symbol=SP500")
    assert get_json(original, "/runs")["health"]["ticks"] == N * 3  # other paths: the kit's


def test_live_columns_follow_the_symbols_present(tmp_path):
    ticks = generate_ticks(["AAA", "BBB"], 4, seed=1)
    ticks = [t for t in ticks if not (t.symbol == "BBB" and t.timestamp == ticks[-1].timestamp)]
    client = app_for(make_db(tmp_path / "ab.duckdb", ticks, with_run=False), tmp_path)
    rows = get_json(client.test_client(), "/live")
    assert list(rows[0]) == ["time", "AAA", "BBB", "AAAvolume", "BBBvolume"]
    assert len(rows) == 4
    assert rows[-1]["BBB"] is None and rows[-1]["BBBvolume"] is None
    assert rows[-1]["AAA"] == ticks[-1].price


def test_live_on_an_empty_store_is_an_empty_list(tmp_path):
    path = tmp_path / "empty.duckdb"
    store.init_db(path)
    assert get_json(app_for(path, tmp_path).test_client(), "/live") == []


# --------------------------------------------------------------------------- /candles


def test_candles_one_minute(client, market_ticks):
    mine = [t for t in market_ticks if t.symbol == "SP500"]
    (candle,) = get_json(client, "/candles?symbol=SP500&interval=1m")
    assert candle == {
        "time": iso(DEFAULT_START),
        "open": mine[0].price,
        "high": max(t.price for t in mine),
        "low": min(t.price for t in mine),
        "close": mine[-1].price,
        "volume": sum(t.volume for t in mine),
        "vwap": pytest.approx(sum(t.price * t.volume for t in mine) / sum(t.volume for t in mine)),
        "ticks": N,
    }


def test_candles_interval_and_limit(client):
    candles = get_json(client, "/candles?symbol=NIKKEI225&interval=10s")
    assert [c["ticks"] for c in candles] == [10] * 5
    for c in candles:
        assert c["low"] <= min(c["open"], c["close"], c["vwap"])
        assert c["high"] >= max(c["open"], c["close"], c["vwap"])
    newest = get_json(client, "/candles?symbol=NIKKEI225&interval=10s&limit=2")
    assert newest == candles[-2:]


def test_candles_unknown_symbol_is_empty(client):
    assert get_json(client, "/candles?symbol=NOPE") == []


# --------------------------------------------------------------------------- /runs, /health


def test_runs(client):
    body = get_json(client, "/runs?limit=10")
    health = body["health"]
    assert health["ticks"] == N * len(SYMBOLS)
    assert health["dead_letters"] == 1
    assert health["errors"] == 1
    assert health["throughput_per_s"] == 75.5
    assert health["newest_event_time"] == iso(DEFAULT_START + timedelta(seconds=N - 1))
    assert health["freshness_s"] > 0
    (run,) = body["runs"]
    assert run["run_id"] == "run-1"
    assert run["started_at"] == iso(RECEIVED.replace(tzinfo=UTC))
    assert run["rows_inserted"] == N * len(SYMBOLS)


def test_health_ok(client, db):
    body = get_json(client, "/health")
    assert body == {
        "status": "ok",
        "store": {"reachable": True, "path": str(db), "ticks": N * len(SYMBOLS), "error": None},
        "broker": {"reachable": True, "bootstrap_servers": "localhost:9092"},
    }


def test_health_of_an_empty_store_is_503_and_says_what_to_run(tmp_path):
    """``marketstream api`` creates the store it serves: after ``make clean`` that store
    is empty, and /health answered 200 ``ok``."""
    settings = Settings().with_(db_path=tmp_path / "empty.duckdb")
    store.init_store(settings.db_path)
    client = create_app(settings, broker_check=lambda *_: True).test_client()
    body = get_json(client, "/health", 503)
    assert body["status"] == "empty"
    assert body["store"]["reachable"] is True and body["store"]["ticks"] == 0
    assert "make demo" in body["store"]["error"]


def test_health_without_store_is_503(missing_client):
    body = get_json(missing_client, "/health", 503)
    assert body["status"] == "degraded"
    assert body["store"]["reachable"] is False
    assert body["store"]["ticks"] is None
    assert "no database" in body["store"]["error"]


def test_broker_probe_is_cached_and_never_raises():
    calls = []
    settings = Settings().with_(bootstrap_servers="h:1")

    def check(given: Settings, timeout_s: float) -> bool:
        calls.append(given.bootstrap_servers)
        raise OSError("the check itself failed")

    probe = BrokerProbe(settings, check, ttl_s=60)
    assert [probe.reachable() for _ in range(20)] == [False] * 20
    assert calls == ["h:1"]


def test_broker_unreachable_keeps_status_ok(db, tmp_path):
    client = app_for(db, tmp_path, broker_up=False).test_client()
    body = get_json(client, "/health")
    assert body["status"] == "ok"
    assert body["broker"]["reachable"] is False


def test_health_probes_the_broker_with_the_security_settings(db, tmp_path, listener):
    """/health's broker probe is KafkaClients.reachable with the settings' SASL/SSL options,
    each one an option kafka-python's admin client knows; the password is not echoed."""
    settings = Settings().with_(
        db_path=db,
        log_path=tmp_path / "api.log",
        bootstrap_servers=f"127.0.0.1:{listener}",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="marketstream-svc",
        sasl_password=PASSWORD,
        ssl_cafile="/etc/ssl/certs/cluster-ca.pem",
    )
    admin = recorder()
    client = create_app(settings, clients=KafkaClients(admin_class=admin)).test_client()
    response = client.get("/health")
    body = orjson.loads(response.get_data())
    assert body["broker"] == {"reachable": True, "bootstrap_servers": f"127.0.0.1:{listener}"}
    assert PASSWORD not in response.get_data(as_text=True)
    [config] = admin.calls
    for key, value in SECURITY.items():
        assert config[key] == value, key
    assert config["bootstrap_servers"] == [f"127.0.0.1:{listener}"]
    unknown = set(config) - set(KafkaAdminClient.DEFAULT_CONFIG)
    assert not unknown, f"options kafka-python does not know: {unknown}"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("url", "parameter"),
    [
        ("/live?limit=0", "limit"),
        ("/live?limit=5001", "limit"),
        ("/live?limit=abc", "limit"),
        ("/live?limit=1.5", "limit"),
        ("/live?since=yesterday", "since"),
        ("/live?since=2025-13-01T00:00:00Z", "since"),
        ("/live?since=99999999999999999", "since"),
        ("/candles", "symbol"),
        ("/candles?symbol=", "symbol"),
        ("/candles?symbol=sp500", "symbol"),
        ("/candles?symbol=SP500%27%3B%20DROP%20TABLE%20market_ticks", "symbol"),
        ("/candles?symbol=" + "A" * 33, "symbol"),
        ("/candles?symbol=SP500&interval=0s", "interval"),
        ("/candles?symbol=SP500&interval=25h", "interval"),
        ("/candles?symbol=SP500&interval=1d", "interval"),
        ("/candles?symbol=SP500&interval=m", "interval"),
        ("/candles?symbol=SP500&limit=0", "limit"),
        ("/candles?symbol=SP500&limit=5001", "limit"),
        ("/runs?limit=0", "limit"),
        ("/runs?limit=1001", "limit"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(client, url, parameter):
    body = get_json(client, url, 400)
    assert body["parameter"] == parameter
    assert parameter in body["error"]


@pytest.mark.parametrize("url", ["/metrics", "/live", "/candles?symbol=SP500", "/runs"])
def test_missing_database_is_503(missing_client, url):
    body = get_json(missing_client, url, 503)
    assert "no database" in body["error"]


def test_not_found_and_wrong_method_are_json(client):
    assert "no endpoint /nope" in get_json(client, "/nope", 404)["error"]
    response = client.post("/metrics")
    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert "GET" in response.headers["Allow"]


def test_unexpected_failure_is_a_short_json_500(db, tmp_path):
    def boom(path: Path):
        raise KeyError("secret detail")

    client = app_for(db, tmp_path, reader=StoreReader(market_metrics=boom)).test_client()
    body = get_json(client, "/metrics", 500)
    assert body == {"error": "internal error (KeyError); see the log"}
    (entry,) = [e for e in read_log(tmp_path / "api.log") if e.get("path") == "/metrics"]
    assert "secret detail" in str(entry)  # the detail goes to the log, not to the client


# --------------------------------------------------------------------------- OpenAPI, index


def test_openapi_lists_every_route(client):
    spec = get_json(client, "/openapi.json")
    assert spec["openapi"].startswith("3.")
    served = {rule.rule for rule in client.application.url_map.iter_rules()}
    assert served == set(spec["paths"])
    live_limit = next(
        p for p in spec["paths"]["/live"]["get"]["parameters"] if p["name"] == "limit"
    )
    assert live_limit["schema"] == {
        "type": "integer",
        "default": 300,
        "minimum": 1,
        "maximum": 5000,
    }
    symbol = spec["paths"]["/candles"]["get"]["parameters"][0]
    assert symbol["required"] is True
    assert symbol["schema"]["pattern"] == r"^[A-Z0-9][A-Z0-9._-]{0,31}$"
    for path, item in spec["paths"].items():
        assert "200" in item["get"]["responses"], path


def test_index_lists_endpoints(client):
    body = get_json(client, "/")
    paths = [e["path"] for e in body["endpoints"]]
    assert {"/metrics", "/live", "/candles", "/runs", "/health", "/openapi.json"} <= set(paths)


def test_lag_without_a_broker_is_a_503_naming_it_and_still_gives_the_positions(tmp_path):
    """Nothing listens at the configured port: /lag says so, with the store's positions."""
    from marketstream.processes import free_port

    db = tmp_path / "m.duckdb"
    ticks = tick_table(generate_ticks(("SP500",), 10), topic="market_ticks")
    with store.open_writer(db) as writer:
        writer.write_batch(ticks, offsets={("market_ticks", 0): 25})
    servers = f"127.0.0.1:{free_port()}"
    client = app_for(db, tmp_path, bootstrap_servers=servers).test_client()
    body = get_json(client, "/lag", 503)
    assert servers in body["error"]
    assert body["lag"] is None
    [row] = body["partitions"]
    assert (row["partition"], row["stored_position"], row["end_offset"], row["lag"]) == (
        0,
        25,
        None,
        None,
    )


def test_lag_is_end_offset_minus_the_store_position(tmp_path):
    db = tmp_path / "m.duckdb"
    ticks = tick_table(generate_ticks(("SP500",), 10), topic="market_ticks")
    with store.open_writer(db) as writer:
        writer.write_batch(ticks, offsets={("market_ticks", 0): 25})
    ends = {("market_ticks", 0): 40, ("market_ticks", 1): 7}  # partition 1: nothing stored
    body = get_json(app_for(db, tmp_path, ends=ends).test_client(), "/lag")
    assert body["lag"] == 15 + 7 and body["error"] is None
    assert [
        (r["partition"], r["end_offset"], r["stored_position"], r["lag"])
        for r in body["partitions"]
    ] == [
        (0, 40, 25, 15),
        (1, 7, None, 7),
    ]
