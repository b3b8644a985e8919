"""One settings object, read from environment variables.

Every module takes a :class:`Settings` instead of reading the environment or
hard-coding a host, a path or a symbol list, so pointing the kit at a real
cluster is a matter of exporting variables (see the README's configuration
table).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

#: The project root: two levels above this file (lib/marketstream/settings.py).
PROJECT_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _env_int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None


def _env_float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


def _path(raw: str) -> Path:
    path = Path(raw).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the defaults a laptop demo needs."""

    bootstrap_servers: str = "localhost:9092"
    topic: str = "market_ticks"
    partitions: int = 3
    consumer_group: str = "marketstream-duckdb"
    db_path: Path = field(default_factory=lambda: PROJECT_ROOT / "data" / "market_data.duckdb")
    csv_path: Path = field(default_factory=lambda: PROJECT_ROOT / "data" / "indices_sample.csv")
    log_path: Path = field(default_factory=lambda: PROJECT_ROOT / "logs" / "pipeline.log")
    output_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "output")
    kafka_home: Path = field(default_factory=lambda: PROJECT_ROOT / ".cache" / "kafka")
    kafka_version: str = "4.4.0"
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    ticks_per_symbol: int = 50
    seed: int = 42
    batch_size: int = 5000
    idle_timeout_s: float = 5.0
    live_rate: float = 4.0
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    voila_port: int = 8866
    api_cache_s: float = 0.25
    api_stale_s: float = 0.5
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Build settings from ``KAFKA_*``/``MARKET_*`` variables, then apply overrides."""
        base = cls()
        symbols_raw = _env("MARKET_SYMBOLS", ",".join(DEFAULT_SYMBOLS))
        symbols = tuple(s.strip() for s in symbols_raw.split(",") if s.strip())
        if not symbols:
            raise SettingsError("MARKET_SYMBOLS is empty; give a comma-separated list")
        values = {
            "bootstrap_servers": _env("KAFKA_BOOTSTRAP_SERVERS", base.bootstrap_servers),
            "topic": _env("KAFKA_TOPIC", base.topic),
            "partitions": _env_int("KAFKA_PARTITIONS", base.partitions),
            "consumer_group": _env("KAFKA_CONSUMER_GROUP", base.consumer_group),
            "db_path": _path(_env("MARKET_DB_PATH", str(base.db_path))),
            "csv_path": _path(_env("MARKET_CSV_PATH", str(base.csv_path))),
            "log_path": _path(_env("MARKET_LOG_PATH", str(base.log_path))),
            "output_dir": _path(_env("MARKET_OUTPUT_DIR", str(base.output_dir))),
            "kafka_home": _path(_env("MARKETSTREAM_KAFKA_HOME", str(base.kafka_home))),
            "kafka_version": _env("MARKETSTREAM_KAFKA_VERSION", base.kafka_version),
            "symbols": symbols,
            "ticks_per_symbol": _env_int("MARKET_TICKS_PER_SYMBOL", base.ticks_per_symbol),
            "seed": _env_int("MARKET_SEED", base.seed),
            "batch_size": _env_int("MARKET_BATCH_SIZE", base.batch_size),
            "idle_timeout_s": _env_float("MARKET_IDLE_TIMEOUT_S", base.idle_timeout_s),
            "live_rate": _env_float("MARKET_LIVE_RATE", base.live_rate),
            "api_host": _env("MARKET_API_HOST", base.api_host),
            "api_port": _env_int("MARKET_API_PORT", base.api_port),
            "voila_port": _env_int("MARKET_VOILA_PORT", base.voila_port),
            "api_cache_s": _env_float("MARKET_API_CACHE_S", base.api_cache_s),
            "api_stale_s": _env_float("MARKET_API_STALE_S", base.api_stale_s),
            "security_protocol": _env("KAFKA_SECURITY_PROTOCOL", base.security_protocol),
            "sasl_mechanism": _env("KAFKA_SASL_MECHANISM", base.sasl_mechanism),
            "sasl_username": _env("KAFKA_SASL_USERNAME", base.sasl_username),
            "sasl_password": _env("KAFKA_SASL_PASSWORD", base.sasl_password),
            "ssl_cafile": _env("KAFKA_SSL_CAFILE", base.ssl_cafile),
        }
        settings = cls(**values)  # type: ignore[arg-type]
        return settings.with_(**overrides) if overrides else settings.validated()

    def with_(self, **overrides: object) -> Settings:
        """A copy with some fields replaced (paths given as strings are resolved)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        clean: dict[str, object] = {}
        for key, value in overrides.items():
            if value is None:
                continue
            if key.endswith(("_path", "_dir", "_home")) and not isinstance(value, Path):
                value = _path(str(value))
            if key == "symbols":
                items = value.split(",") if isinstance(value, str) else value
                value = tuple(str(s).strip() for s in items if str(s).strip())  # type: ignore[union-attr]
            clean[key] = value
        return replace(self, **clean).validated()  # type: ignore[arg-type]

    def validated(self) -> Settings:
        """Reject values that would only fail later, deep inside Kafka or DuckDB."""
        if self.partitions < 1:
            raise SettingsError("KAFKA_PARTITIONS must be at least 1")
        if self.batch_size < 1:
            raise SettingsError("MARKET_BATCH_SIZE must be at least 1")
        if self.ticks_per_symbol < 0:
            raise SettingsError("MARKET_TICKS_PER_SYMBOL must not be negative")
        if self.live_rate <= 0:
            raise SettingsError("MARKET_LIVE_RATE must be positive (ticks/s per symbol)")
        if not self.symbols:
            raise SettingsError("at least one symbol is needed")
        if not 0 <= self.api_cache_s <= 60:
            raise SettingsError("MARKET_API_CACHE_S must be from 0 to 60 (seconds)")
        if not 0 <= self.api_stale_s <= 60:
            raise SettingsError("MARKET_API_STALE_S must be from 0 to 60 (seconds)")
        return self

    def kafka_client_config(self) -> dict[str, object]:
        """Connection and security options shared by producer, consumer and admin.

        SASL/SSL values pass straight through to kafka-python, so the same
        settings reach a secured cluster; the password never appears in repr or logs.
        """
        config: dict[str, object] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",")],
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            from marketstream.logs import redact_kafka_secrets

            redact_kafka_secrets()  # kafka-python logs its admin config, password included
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = self.sasl_password
        if self.ssl_cafile:
            config["ssl_cafile"] = self.ssl_cafile
        return config

    @property
    def bootstrap_host_port(self) -> tuple[str, int]:
        """The first bootstrap server as (host, port), used to start a local broker."""
        first = self.bootstrap_servers.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        try:
            return (host or "localhost"), int(port)
        except ValueError:
            raise SettingsError(
                f"KAFKA_BOOTSTRAP_SERVERS={self.bootstrap_servers!r}: expected host:port"
            ) from None


#: Settings field -> environment variable, the inverse of ``Settings.from_env``.
ENV_NAMES: dict[str, str] = {
    "bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "topic": "KAFKA_TOPIC",
    "partitions": "KAFKA_PARTITIONS",
    "consumer_group": "KAFKA_CONSUMER_GROUP",
    "db_path": "MARKET_DB_PATH",
    "csv_path": "MARKET_CSV_PATH",
    "log_path": "MARKET_LOG_PATH",
    "output_dir": "MARKET_OUTPUT_DIR",
    "kafka_home": "MARKETSTREAM_KAFKA_HOME",
    "kafka_version": "MARKETSTREAM_KAFKA_VERSION",
    "symbols": "MARKET_SYMBOLS",
    "ticks_per_symbol": "MARKET_TICKS_PER_SYMBOL",
    "seed": "MARKET_SEED",
    "batch_size": "MARKET_BATCH_SIZE",
    "idle_timeout_s": "MARKET_IDLE_TIMEOUT_S",
    "live_rate": "MARKET_LIVE_RATE",
    "api_host": "MARKET_API_HOST",
    "api_port": "MARKET_API_PORT",
    "voila_port": "MARKET_VOILA_PORT",
    "api_cache_s": "MARKET_API_CACHE_S",
    "api_stale_s": "MARKET_API_STALE_S",
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
}


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which ``Settings.from_env()`` rebuilds ``settings``.

    Subprocesses (the API, Voila and its kernels) read settings from the
    environment, so this is how they get the very same configuration,
    overrides from CLI options included.
    """
    env = dict(os.environ if base is None else base)
    for name, var in ENV_NAMES.items():
        value = getattr(settings, name)
        env[var] = ",".join(value) if isinstance(value, tuple) else str(value)
    return env
