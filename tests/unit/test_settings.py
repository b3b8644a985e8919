"""Settings come from the environment, with defaults, and bad values fail early and clearly."""

from __future__ import annotations

import pytest

from marketstream.clients import connection_config
from marketstream.settings import PROJECT_ROOT, Settings, SettingsError


def test_defaults(monkeypatch):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "MARKET_DB_PATH", "MARKET_SYMBOLS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert s.bootstrap_servers == "localhost:9092"
    assert s.symbols == ("SP500", "STOXX600", "NIKKEI225")
    assert s.db_path == PROJECT_ROOT / "data" / "market_data.duckdb"
    assert s.ticks_per_symbol == 50
    assert s.bootstrap_host_port == ("localhost", 9092)


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-a:9093,broker-b:9093")
    monkeypatch.setenv("KAFKA_TOPIC", "ticks")
    monkeypatch.setenv("MARKET_DB_PATH", str(tmp_path / "x.duckdb"))
    monkeypatch.setenv("MARKET_SYMBOLS", "AAA, BBB")
    monkeypatch.setenv("MARKET_DB_PATH", "rel/x.duckdb")
    s = Settings.from_env()
    assert connection_config(s)["bootstrap_servers"] == ["broker-a:9093", "broker-b:9093"]
    assert s.topic == "ticks"
    assert s.symbols == ("AAA", "BBB")
    assert s.db_path == PROJECT_ROOT / "rel" / "x.duckdb"
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
