"""Hostile input to the API, generated from its own OpenAPI description.

Two fuzzers read ``/openapi.json`` and hammer every endpoint:

* a Hypothesis fuzzer written here (no extra dependency): for every declared
  query parameter it draws valid values from the parameter's schema, values just
  outside its bounds, arbitrary Unicode, SQL-injection strings, huge and malformed
  numbers, raw percent-encoded bytes, and undeclared parameters;
* Schemathesis (when installed), which generates its own positive and negative
  cases and checks status codes, content types and response schemas.

Against a small real DuckDB file no response is a 5xx; against a missing file
the only 5xx is the documented 503. Every response is JSON, its status is one
the document declares for that path, and its body matches the declared schema.
The store is opened read-only every time, user text only ever reaches DuckDB
as a bound parameter (never inside SQL text), and the file is byte-for-byte
unchanged afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import string
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from marketstream import store
from marketstream.ticks import generate_ticks
from support.api import app_for
from support.factories import batch_for, run_metrics, write_store

try:
    import schemathesis
except ImportError:  # an optional extra; the Hypothesis fuzzer below always runs
    schemathesis = None

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")
EXAMPLES = 80  # random requests per endpoint and store, after the fixed hostile corpus

SQL_INJECTIONS = [
    "SP500' OR '1'='1",
    "SP500'; DROP TABLE market_ticks; --",
    "1; DROP TABLE market_ticks",
    "1) UNION SELECT * FROM pipeline_metrics --",
    "'); COPY market_ticks TO '/tmp/x.csv'; --",
    "2025-01-06T14:30:00Z'; DELETE FROM market_ticks; --",
    "ATTACH '/tmp/evil.duckdb' AS evil",
    "INSTALL httpfs; LOAD httpfs",
    "$1",
    "?",
    "%s",
    "\\x00",
    "\x00",
    "${__from}",
    "1m; DROP TABLE market_ticks",
    "-1 OR 1=1",
]
HOSTILE = [
    *SQL_INJECTIONS,
    "",
    " ",
    "\t\n",
    "-1",
    "0",
    "1e9",
    "1.5",
    "0x10",
    "9" * 40,
    "-" + "9" * 40,
    "NaN",
    "inf",
    "１２",  # full-width digits: int() accepts them
    "٣",  # an Arabic-Indic digit: int() accepts it too
    "²",  # a superscript: str.isdigit() says yes, int() says no
    "¹²³",
    "①",
    "12²",
    "99999999999999",
    "999999999999999",
    "1970-01-01T00:00:00Z",
    "0001-01-01",
    "9999-12-31T23:59:59.999999+14:00",
    "2025-01-06T14:30:00 00:00",
    "2025-13-45T99:99:99Z",
    "0s",
    "86401s",
    "1441m",
    "25h",
    "999999h",
    "x" * 10_000,
    "SP500" * 20,
    "sp500",
    "ÅÄÖ",
    "😀",
]


# --------------------------------------------------------------------------- store


def build_db(path: Path) -> Path:
    """A small real store: 3 symbols x 120 ticks, through the real decoder, and one run."""
    ticks = generate_ticks(SYMBOLS, 120, seed=3)
    batch = batch_for(ticks, topic="market_ticks")
    run = run_metrics(
        ticks,
        run_id="fuzz-run",
        started_at=datetime(2025, 1, 6, 15, 0),
        elapsed_s=1.0,
        throughput_per_s=360.0,
    )
    return write_store(path, batch.ticks, dead=batch.dead, run=run)


def fingerprint(path: Path) -> tuple[str, list[str]]:
    """The file's SHA-256 and the names in its folder (a WAL file would show up)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"
    return digest, sorted(p.name for p in path.parent.iterdir()) if path.parent.exists() else []


@pytest.fixture(scope="module")
def real_db(tmp_path_factory) -> Path:
    return build_db(tmp_path_factory.mktemp("fuzz") / "market.duckdb")


@pytest.fixture(scope="module")
def missing_db(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-missing") / "never" / "market.duckdb"


def make_app(db: Path, log_dir: Path):
    return app_for(db, log_dir, broker_up=False, ends={})  # /lag: a topic with no partitions


@pytest.fixture(scope="module")
def spec(real_db, tmp_path_factory) -> dict[str, Any]:
    client = make_app(real_db, tmp_path_factory.mktemp("spec")).test_client()
    return orjson.loads(client.get("/openapi.json").get_data())


class RecordingConnection:
    """Wraps a DuckDB connection and keeps every SQL text it is asked to run."""

    def __init__(self, con: duckdb.DuckDBPyConnection, sql_log: list[str]):
        self._con = con
        self._sql_log = sql_log

    def execute(self, sql: str, *args: Any) -> Any:
        self._sql_log.append(sql)
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


@contextlib.contextmanager
def watch_duckdb() -> Iterator[tuple[list[bool], list[str]]]:
    """Record the ``read_only`` flag of every connection the store opens, and its SQL."""
    modes: list[bool] = []
    sql_log: list[str] = []

    def observe(con: Any, _path: Any, read_only: bool) -> RecordingConnection:
        modes.append(read_only)
        return RecordingConnection(con, sql_log)

    with store.observe_connections(observe):
        yield modes, sql_log


# --------------------------------------------------------------------------- strategies


def valid_values(param: dict[str, Any]) -> st.SearchStrategy[str]:
    """Values the parameter's schema allows (so that later parameters get checked too)."""
    schema = param.get("schema", {})
    options: list[st.SearchStrategy[str]] = []
    if schema.get("type") == "integer":
        options.append(st.integers(schema["minimum"], schema["maximum"]).map(str))
    if "pattern" in schema:
        options.append(st.from_regex(schema["pattern"], fullmatch=True))
    if param["name"] in {"since", "until"}:
        instants = st.datetimes(
            min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
        )
        options += [
            instants.map(lambda d: d.isoformat()),
            instants.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
            st.integers(min_value=0, max_value=10**14).map(str),
        ]
    return st.one_of(options) if options else st.text(max_size=10)


def hostile_values(param: dict[str, Any]) -> st.SearchStrategy[str]:
    """Near misses and garbage: off-by-one bounds, odd numbers, any Unicode, digits that
    are not ASCII digits, SQL."""
    schema = param.get("schema", {})
    options: list[st.SearchStrategy[str]] = [
        st.sampled_from(HOSTILE),
        st.text(max_size=40),
        st.text(alphabet=string.printable, max_size=40),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.text(alphabet=st.characters(categories=("Nd", "No")), min_size=1, max_size=16),
        st.text(alphabet="0123456789²³¹⁰⁴⁹①⑨٣۵१", min_size=1, max_size=14),
    ]
    if schema.get("type") == "integer":
        low, high = schema["minimum"], schema["maximum"]
        options.append(st.sampled_from([low - 1, high + 1, -high, high * 1000]).map(str))
        options.append(st.integers(low, high).map(lambda n: f" {n} "))
    return st.one_of(options)


def query_for(path_item: dict[str, Any]) -> st.SearchStrategy[dict[str, str]]:
    """A query: each declared parameter absent (if optional), valid or hostile, plus maybe
    undeclared ones; required ones are mostly valid, so the checks after them run."""
    params = path_item["get"].get("parameters", [])
    fields = {
        p["name"]: st.one_of(valid_values(p), valid_values(p), valid_values(p), hostile_values(p))
        if p.get("required")
        else st.one_of(st.none(), valid_values(p), hostile_values(p))
        for p in params
    }
    extra = st.dictionaries(
        st.text(alphabet=string.ascii_letters + "[]_.", min_size=1, max_size=10),
        st.text(max_size=20),
        max_size=2,
    )

    def merge(declared: dict[str, str | None], undeclared: dict[str, str]) -> dict[str, str]:
        query = dict(undeclared)
        query.update({k: v for k, v in declared.items() if v is not None})
        return query

    return st.builds(merge, st.fixed_dictionaries(fields), extra)


#: Raw query strings: arbitrary bytes percent-encoded (invalid UTF-8 included),
#: repeated keys, stray ``%`` and ``&`` and ``=``.
raw_queries = st.one_of(
    st.binary(max_size=60).map(lambda b: "limit=" + urllib.parse.quote_from_bytes(b)),
    st.binary(max_size=60).map(lambda b: "symbol=" + urllib.parse.quote_from_bytes(b)),
    st.text(alphabet="%&=;+ab19 ", max_size=40),
    st.just("limit=1&limit=2&symbol=SP500&symbol=x"),
    st.just("since=%ZZ&limit=%"),
)


# --------------------------------------------------------------------------- known bugs


def unicode_digits(value: object) -> bool:
    """A value str.isdigit() accepts that is not plain ASCII digits (e.g. ``²``)."""
    return isinstance(value, str) and value.strip().isdigit() and not value.strip().isascii()


def since_digit_bug(client: Any) -> bool:
    """Is the known bug still there: ``/live?since=²`` answers 500 (since_param trusts
    str.isdigit(), then int() refuses a superscript)? While it is, the fuzzers skip
    that one input family (test_unicode_digits_in_since_are_a_400 keeps it visible);
    once fixed, this turns False and the fuzzers cover it again by themselves."""
    return client.get("/live", query_string={"since": "²"}).status_code == 500


# --------------------------------------------------------------------------- checks


def response_schema(spec: dict[str, Any], path: str, status: int) -> dict[str, Any] | None:
    """The JSON schema declared for this path and status (refs resolvable), or None."""
    response = spec["paths"][path]["get"]["responses"].get(str(status))
    assert response is not None, f"{path} answered {status}, which the document does not declare"
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return None
    return {**schema, "components": spec["components"]}


def check(spec: dict[str, Any], path: str, response: Any, allowed_5xx: set[int]) -> None:
    status = response.status_code
    assert status < 500 or status in allowed_5xx, (path, status, response.get_data()[:500])
    assert response.mimetype == "application/json", (path, status, response.mimetype)
    body = orjson.loads(response.get_data())
    schema = response_schema(spec, path, status)
    if schema is not None:
        jsonschema.Draft202012Validator(schema).validate(body)


def fuzz(spec: dict[str, Any], client: Any, allowed_5xx: set[int]) -> None:
    """Every HOSTILE value in every declared parameter (the others valid), then the
    Hypothesis fuzzer over every GET path of the document, EXAMPLES each."""
    skip_since_digits = since_digit_bug(client)
    for path in sorted(spec["paths"]):
        params = spec["paths"][path]["get"].get("parameters", [])
        base = {"symbol": "SP500"} if any(p["name"] == "symbol" for p in params) else {}
        for param in params:
            for value in HOSTILE:
                if skip_since_digits and param["name"] == "since" and unicode_digits(value):
                    continue
                response = client.get(path, query_string={**base, param["name"]: value})
                check(spec, path, response, allowed_5xx)
        fuzz_path(spec, client, path, allowed_5xx, skip_since_digits)


def fuzz_path(
    spec: dict[str, Any], client: Any, path: str, allowed_5xx: set[int], skip_since_digits: bool
) -> None:
    declared = query_for(spec["paths"][path])

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        database=None,
    )
    @given(query=st.one_of(declared, declared, declared, raw_queries))
    def one_request(query: Any) -> None:
        if isinstance(query, dict):
            assume(not (skip_since_digits and unicode_digits(query.get("since"))))
        response = client.get(path, query_string=query)
        check(spec, path, response, allowed_5xx)

    one_request()


# --------------------------------------------------------------------------- tests


def test_fuzz_every_endpoint_against_a_real_store(spec, real_db, tmp_path):
    before = fingerprint(real_db)
    client = make_app(real_db, tmp_path).test_client()
    with watch_duckdb() as (modes, _sql):
        fuzz(spec, client, allowed_5xx=set())
    assert modes and all(modes), "the API opened the store for writing"
    assert fingerprint(real_db) == before


def test_fuzz_every_endpoint_without_a_store(spec, missing_db, tmp_path):
    client = make_app(missing_db, tmp_path).test_client()
    with watch_duckdb() as (modes, _sql):
        fuzz(spec, client, allowed_5xx={503})
    assert all(modes)
    assert not missing_db.parent.exists(), "the API created the store or its folder"


@pytest.mark.parametrize("value", ["²", "¹²³", "①", "12²"])
def test_unicode_digits_in_since_are_a_400(value, real_db, tmp_path):
    client = make_app(real_db, tmp_path).test_client()
    response = client.get("/live", query_string={"since": value})
    assert response.status_code == 400
    assert orjson.loads(response.get_data())["parameter"] == "since"


def test_undeclared_paths_and_methods_are_json_errors(real_db, tmp_path):
    client = make_app(real_db, tmp_path).test_client()
    for path in ("/nope", "/candles/../../etc/passwd", "/%00", "/live;drop", "/" + "a" * 5000):
        response = client.get(path)
        assert response.status_code == 404 and response.mimetype == "application/json"
    for method in ("post", "put", "delete", "patch"):
        response = getattr(client, method)("/live", data=b"DROP TABLE market_ticks")
        assert response.status_code == 405 and response.mimetype == "application/json"


@pytest.mark.parametrize(
    "path, parameter",
    [
        ("/live", "limit"),
        ("/live", "since"),
        ("/live", "until"),
        ("/candles", "symbol"),
        ("/candles", "interval"),
        ("/candles", "limit"),
        ("/candles", "since"),
        ("/metrics", "until"),
        ("/runs", "limit"),
        ("/runs", "since"),
        ("/v0/live", "limit"),
    ],
)
def test_sql_injection_is_rejected_or_harmless(path, parameter, real_db, tmp_path) -> None:
    """Each injection string: a 400 naming the parameter, or (for the few that are a
    valid symbol shape) a 200 with no rows; the store is untouched either way."""
    before = fingerprint(real_db)
    client = make_app(real_db, tmp_path).test_client()
    base = {"symbol": "SP500"} if path == "/candles" else {}
    for text in SQL_INJECTIONS:
        response = client.get(path, query_string={**base, parameter: text})
        body = orjson.loads(response.get_data())
        assert response.status_code == 400, (parameter, text, body)
        assert body["parameter"] == parameter
    assert fingerprint(real_db) == before
    assert store.tick_count(real_db) == 360


def test_user_text_reaches_duckdb_only_as_bound_parameters(real_db, tmp_path):
    """A symbol that passes validation and looks like SQL travels as a parameter: the
    SQL text DuckDB runs never contains it, and it matches nothing."""
    marker = "XQ9ZV-DROP_TABLE.MARKET_TICKS"
    client = make_app(real_db, tmp_path).test_client()
    with watch_duckdb() as (modes, sql_log):
        response = client.get("/candles", query_string={"symbol": marker, "interval": "5s"})
        assert response.status_code == 200 and orjson.loads(response.get_data()) == []
        since = "2025-01-06T14:31:00Z"
        response = client.get("/live", query_string={"since": since, "limit": "7"})
        assert response.status_code == 200
        assert len(orjson.loads(response.get_data())) == 7
    assert sql_log and all(modes)
    joined = "\n".join(sql_log)
    for text in (marker, "XQ9ZV", "14:31:00"):
        assert text not in joined
    assert store.tick_count(real_db) == 360


# --------------------------------------------------------------------------- schemathesis


def schemathesis_fuzz(app: Any, allowed_5xx: set[int], max_examples: int) -> int:
    """Every operation of the app's own document, positive and negative cases.

    Driven through Hypothesis directly rather than Schemathesis's pytest plugin
    (its lazy-fixture loader does not work with pytest 9.2). The checks kept are
    the ones about robustness and the contract: status code declared, content
    type declared, body matches the response schema; 5xx is asserted here.
    Left out: ``positive_data_acceptance`` and ``negative_data_rejection``, which
    flag places where the API is stricter (``since`` must be a time, an interval
    at most 24h) or more lenient (an empty ``x=`` means "absent", as Grafana
    sends it) than the document's schemas say; those are 4xx/2xx, never 5xx.
    """
    from schemathesis import GenerationMode, checks

    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    excluded = [
        checks.positive_data_acceptance,
        checks.negative_data_rejection,
        checks.not_a_server_error,  # asserted below, with the documented 503 allowed
    ]
    skip_since_digits = since_digit_bug(app.test_client())
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE]
        if operation.query:
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def one_case(case: Any) -> None:
                nonlocal calls
                assume(not (skip_since_digits and unicode_digits((case.query or {}).get("since"))))
                calls += 1
                response = case.call()
                status = response.status_code
                assert status < 500 or status in allowed_5xx, (case.query, status, response.text)
                orjson.loads(response.content)
                case.validate_response(response, excluded_checks=excluded)

            one_case()
    return calls


needs_schemathesis = pytest.mark.skipif(
    schemathesis is None, reason="schemathesis is not installed (pip install schemathesis==4.32.5)"
)


@needs_schemathesis
def test_schemathesis_against_a_real_store(real_db, tmp_path):
    before = fingerprint(real_db)
    with watch_duckdb() as (modes, _sql):
        calls = schemathesis_fuzz(make_app(real_db, tmp_path), set(), max_examples=50)
    assert calls > 100
    assert modes and all(modes)
    assert fingerprint(real_db) == before


@needs_schemathesis
def test_schemathesis_without_a_store(missing_db, tmp_path):
    calls = schemathesis_fuzz(make_app(missing_db, tmp_path), {503}, max_examples=25)
    assert calls > 50
    assert not missing_db.parent.exists()
