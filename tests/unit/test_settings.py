"""Settings come from the environment and .env, with defaults, and bad values fail early and
clearly; relative paths are under the home ($MARKETSTREAM_HOME, else the current directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketstream.clients import connection_config
from marketstream.settings import (
    OPTIONS,
    Settings,
    SettingsError,
    default_text,
    environment,
    home,
    read_dotenv,
)

PATH_SETTINGS = ("MARKET_DB_PATH", "MARKET_CSV_PATH", "MARKET_LOG_PATH", "MARKET_OUTPUT_DIR")


@pytest.fixture
def in_home(monkeypatch, tmp_path) -> Path:
    """A home of its own (MARKETSTREAM_HOME) and no path settings from the environment."""
    monkeypatch.setenv("MARKETSTREAM_HOME", str(tmp_path))
    for name in (*PATH_SETTINGS, "MARKETSTREAM_KAFKA_HOME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_defaults(monkeypatch, in_home):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "MARKET_DB_PATH", "MARKET_SYMBOLS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert s.bootstrap_servers == "localhost:9092"
    assert s.symbols == ("SP500", "STOXX600", "NIKKEI225")
    assert s.db_path == in_home / "data" / "market_data.duckdb"
    assert s.ticks_per_symbol == 50
    assert s.bootstrap_host_port == ("localhost", 9092)


def test_the_home_is_marketstream_home_else_the_current_directory(tmp_path):
    assert home({"MARKETSTREAM_HOME": str(tmp_path)}) == tmp_path
    assert home({"MARKETSTREAM_HOME": "  "}) == Path.cwd()
    assert home({}) == Path.cwd()


def test_every_path_is_under_the_home_never_the_package(in_home):
    s = Settings.from_env()
    assert s.csv_path == in_home / "data" / "indices_sample.csv"
    assert s.log_path == in_home / "logs" / "pipeline.log"
    assert s.output_dir == in_home / "output"
    assert s.kafka_home == in_home / ".cache" / "kafka"
    assert Settings.from_env(db_path="x.duckdb").db_path == in_home / "x.duckdb"


def test_without_marketstream_home_paths_follow_the_current_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("MARKETSTREAM_HOME", raising=False)
    monkeypatch.delenv("MARKET_DB_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env().db_path == tmp_path / "data" / "market_data.duckdb"


def test_dotenv_fills_what_the_environment_lacks(monkeypatch, in_home):
    (in_home / ".env").write_text(
        "# a comment\n"
        "export KAFKA_SASL_USERNAME=svc\n"
        'KAFKA_SASL_PASSWORD="p w#1"  # quoted, with an inline comment\n'
        "KAFKA_TOPIC=from-dotenv\n"
        "MARKET_DB_PATH=rel/db.duckdb\n"
    )
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_TOPIC"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.sasl_username, s.sasl_password, s.topic) == ("svc", "p w#1", "from-dotenv")
    assert s.db_path == in_home / "rel" / "db.duckdb"  # relative to the home, like any path


def test_the_real_environment_wins_over_dotenv_even_when_empty(monkeypatch, in_home):
    (in_home / ".env").write_text("KAFKA_TOPIC=from-dotenv\nKAFKA_SASL_PASSWORD=from-dotenv\n")
    monkeypatch.setenv("KAFKA_TOPIC", "from-shell")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "")  # set, empty: no password, not .env's
    s = Settings.from_env()
    assert s.topic == "from-shell" and s.sasl_password == ""
    assert Settings.from_env(topic="from-option").topic == "from-option"  # options win over all


def test_environment_merges_without_touching_the_process(tmp_path):
    (tmp_path / ".env").write_text("A=1\nB=2\nNOVALUE\n")
    env = {"MARKETSTREAM_HOME": str(tmp_path), "B": "shell"}
    assert environment(env) == {"A": "1", "B": "shell", "MARKETSTREAM_HOME": str(tmp_path)}
    assert environment({"MARKETSTREAM_HOME": str(tmp_path / "none")})["MARKETSTREAM_HOME"]
    assert read_dotenv(tmp_path / "missing.env") == {}


def test_dotenv_values_are_checked_like_the_environment(monkeypatch, in_home):
    (in_home / ".env").write_text("KAFKA_PARTITIONS=three\n")
    monkeypatch.delenv("KAFKA_PARTITIONS", raising=False)
    with pytest.raises(SettingsError, match="KAFKA_PARTITIONS"):
        Settings.from_env()


def test_default_text_shows_paths_relative_to_the_home(in_home):
    by_env = {o.env: o for o in OPTIONS}
    assert default_text(by_env["MARKET_DB_PATH"]) == "data/market_data.duckdb"
    assert default_text(by_env["MARKET_SYMBOLS"]) == "SP500,STOXX600,NIKKEI225"
    assert default_text(by_env["KAFKA_SASL_USERNAME"]) == "empty"


def test_environment_overrides(monkeypatch, in_home):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-a:9093,broker-b:9093")
    monkeypatch.setenv("KAFKA_TOPIC", "ticks")
    monkeypatch.setenv("MARKET_DB_PATH", str(in_home / "x.duckdb"))
    monkeypatch.setenv("MARKET_SYMBOLS", "AAA, BBB")
    monkeypatch.setenv("MARKET_DB_PATH", "rel/x.duckdb")
    s = Settings.from_env()
    assert connection_config(s)["bootstrap_servers"] == ["broker-a:9093", "broker-b:9093"]
    assert s.topic == "ticks"
    assert s.symbols == ("AAA", "BBB")
    assert s.db_path == in_home / "rel" / "x.duckdb"
    assert s.bootstrap_host_port == ("broker-a", 9093)


def test_overrides_skip_none_and_accept_lists():
    s = Settings.from_env(topic=None, symbols=["X", "Y"], db_path="/tmp/a.duckdb")
    assert s.symbols == ("X", "Y")
    assert str(s.db_path) == "/tmp/a.duckdb"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("KAFKA_PARTITIONS", "three", "KAFKA_PARTITIONS"),
        ("KAFKA_PARTITIONS", "0", "KAFKA_PARTITIONS"),
        ("MARKET_BATCH_SIZE", "0", "MARKET_BATCH_SIZE"),
        ("MARKET_LIVE_RATE", "-1", "MARKET_LIVE_RATE"),
        ("MARKET_SYMBOLS", ",,", "MARKET_SYMBOLS"),
        ("MARKET_API_CACHE_S", "-0.1", "MARKET_API_CACHE_S"),
        ("MARKET_API_STALE_S", "61", "MARKET_API_STALE_S"),
        ("MARKET_API_STALE_S", "soon", "MARKET_API_STALE_S"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        Settings.from_env()


def test_unknown_override_is_an_error():
    with pytest.raises(SettingsError, match="unknown"):
        Settings().with_(nonsense=1)


def test_security_settings_pass_through_and_password_is_hidden():
    s = Settings().with_(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="s3cret",
        ssl_cafile="/etc/ca.pem",
    )
    config = connection_config(s)
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_plain_password"] == "s3cret"
    assert config["ssl_cafile"] == "/etc/ca.pem"
    assert "s3cret" not in repr(s)


def test_bad_bootstrap_server():
    with pytest.raises(SettingsError, match="host:port"):
        _ = Settings().with_(bootstrap_servers="nohostport").bootstrap_host_port
