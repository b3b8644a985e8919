"""One settings object, read from environment variables, driven by one table.

Every module takes a :class:`Settings` instead of reading the environment or
hard-coding a host, a path or a symbol list, so pointing the kit at a real
cluster is a matter of exporting variables (see the README's configuration
table).

Why a table (:data:`OPTIONS`): each setting has a field, an environment
variable and a kind, and four things need all three: :meth:`Settings.from_env`,
:meth:`Settings.with_` (CLI options, notebook parameters), :meth:`Settings.to_env`
(how a child process gets the same settings) and :meth:`Settings.to_overrides`
(how papermill hands them to a notebook). When the map was written twice and
the notebooks got a hand-picked 8 of 26, a caller's ``consumer_group`` or
``batch_size`` was silently replaced by the environment's inside the notebooks.

Where relative paths point (:func:`home`): ``$MARKETSTREAM_HOME`` if set, else
the current directory, for every process alike. They used to resolve against
the source checkout (two folders above this file); installed from a wheel that
is ``site-packages``, so the DuckDB file, the logs and the Kafka jars landed
inside the virtualenv. In a checkout, ``make`` runs from the project folder
(and exports ``MARKETSTREAM_HOME`` there), so ``./data``, ``./logs``,
``./output`` and ``.cache/kafka`` are the same as before.

Where credentials may come from (:func:`environment`): a ``.env`` file in the
home, read here, in :meth:`Settings.from_env`, because that is the one door
every reader of settings goes through: the CLI, the papermill kernels, the API
and the Voila page (all of which call it), so a password kept in ``.env`` works
for ``make lab`` and the API as well as for the CLI, and no process has to copy
it into its environment. The real environment wins over ``.env``, key by key
(a variable set, even empty, is never replaced), and options and notebook
parameters win over both: ``.env`` holds the usual values, an ``export`` or an
option the exception of the moment. The file is read, never executed (python-
dotenv's parser: 0.57 ms for ``.env.example`` here, 0.01 ms to find none, where
``from_env`` itself takes 0.12 ms); a missing one is no error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from marketstream.addresses import server_list, split_host_port
from marketstream.errors import SettingsError
from marketstream.redact import MASK, mask, passwords_in

__all__ = [
    "DEFAULT_SYMBOLS",
    "DOTENV",
    "HOME_ENV",
    "OPTIONS",
    "PROJECT_ROOT",
    "VARIABLES",
    "Option",
    "Settings",
    "SettingsError",
    "Variable",
    "default_text",
    "environment",
    "home",
    "read_dotenv",
    "variable",
]

#: The source checkout this file sits in (lib/marketstream/settings.py): only meaningful
#: in a checkout, where the tests use it to find the repository's files. Nothing at run
#: time resolves against it (installed, it is site-packages); see :func:`home`.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: The variable naming the folder relative paths and ``.env`` are taken from.
HOME_ENV = "MARKETSTREAM_HOME"

#: The credentials file, in the home (see the module docstring).
DOTENV = ".env"


def home(environ: Mapping[str, str] | None = None) -> Path:
    """Where relative paths resolve and ``.env`` is read: ``$MARKETSTREAM_HOME``, else the
    current directory. It comes from the real environment only (``.env`` is in it)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(HOME_ENV, "").strip()
    return Path(raw).expanduser().absolute() if raw else Path.cwd()


def read_dotenv(path: Path) -> dict[str, str]:
    """The ``KEY=value`` pairs of a ``.env`` file (none if it does not exist).

    python-dotenv parses it (quotes, ``export``, comments); it is imported here
    so a process without a ``.env`` never pays for it.
    """
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables settings are read from: ``environ`` (default: the process's) over the
    ``.env`` in its :func:`home`. A variable present in ``environ``, even empty, wins."""
    environ = os.environ if environ is None else environ
    return {**read_dotenv(home(environ) / DOTENV), **environ}


DEFAULT_SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")

#: Producer codecs kafka-python can write (and, with its optional libraries, read).
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
STORES = ("duckdb", "ducklake")
S3_URL_STYLES = ("vhost", "path")
PARTITIONERS = ("spread", "murmur2")
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class Option:
    """One setting: its :class:`Settings` field, its environment variable, what it is for."""

    name: str
    env: str
    help: str
    secret: bool = False


#: Every setting, in the README's order. Kinds (int, float, path, list) come from
#: the field's default, so adding a setting is one line here and one field below.
OPTIONS: tuple[Option, ...] = (
    Option("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", "Kafka host:port[,host:port...]"),
    Option("topic", "KAFKA_TOPIC", "the ticks topic"),
    Option("partitions", "KAFKA_PARTITIONS", "partitions when the kit creates the topic"),
    Option("consumer_group", "KAFKA_CONSUMER_GROUP", "the consumer group"),
    Option("security_protocol", "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT, SSL, SASL_*"),
    Option("sasl_mechanism", "KAFKA_SASL_MECHANISM", "PLAIN, SCRAM-SHA-256/512"),
    Option("sasl_username", "KAFKA_SASL_USERNAME", "SASL user"),
    Option("sasl_password", "KAFKA_SASL_PASSWORD", "SASL password", secret=True),
    Option("ssl_cafile", "KAFKA_SSL_CAFILE", "CA certificate (PEM) to trust"),
    Option("ssl_certfile", "KAFKA_SSL_CERTFILE", "client certificate (PEM), for mTLS"),
    Option("ssl_keyfile", "KAFKA_SSL_KEYFILE", "client private key (PEM), for mTLS"),
    Option("ssl_password", "KAFKA_SSL_PASSWORD", "password of the client key", secret=True),
    Option("ssl_check_hostname", "KAFKA_SSL_CHECK_HOSTNAME", "verify the broker's host name"),
    Option("compression", "KAFKA_COMPRESSION", "producer codec: none, gzip, snappy, lz4, zstd"),
    Option("isolation_level", "KAFKA_ISOLATION_LEVEL", "read_committed or read_uncommitted"),
    Option("replication_factor", "KAFKA_REPLICATION_FACTOR", "replicas of topics the kit creates"),
    Option("min_insync_replicas", "KAFKA_MIN_INSYNC_REPLICAS", "min.insync.replicas of them"),
    Option("store", "MARKET_STORE", "duckdb (one file) or ducklake (Parquet + a catalog)"),
    Option("db_path", "MARKET_DB_PATH", "the DuckDB file"),
    Option(
        "ducklake_catalog",
        "MARKET_DUCKLAKE_CATALOG",
        "PostgreSQL DSN or SQLite path (a secret: it may hold a password)",
        secret=True,
    ),
    Option("ducklake_data", "MARKET_DUCKLAKE_DATA", "DuckLake's Parquet folder (or s3://...)"),
    Option(
        "s3_endpoint",
        "MARKET_S3_ENDPOINT",
        "S3 API host[:port] of an s3:// lake (empty: the kit's own object store)",
    ),
    Option("s3_region", "MARKET_S3_REGION", "the object store's region"),
    Option("s3_key_id", "MARKET_S3_KEY_ID", "the object store's access key id", secret=True),
    Option("s3_secret", "MARKET_S3_SECRET", "the object store's secret key", secret=True),
    Option("s3_url_style", "MARKET_S3_URL_STYLE", "vhost (bucket.host) or path (host/bucket)"),
    Option("s3_use_ssl", "MARKET_S3_USE_SSL", "HTTPS to the object store"),
    Option("objectstore_home", "MARKET_OBJECTSTORE_HOME", "the kit's own object store's data"),
    Option("postgres_home", "MARKET_POSTGRES_HOME", "the kit's own PostgreSQL data"),
    Option("postgres_port", "MARKET_POSTGRES_PORT", "its port (0: a free one)"),
    Option("consumers", "MARKET_CONSUMERS", "consumer worker processes"),
    Option(
        "session_timeout_s",
        "KAFKA_SESSION_TIMEOUT_S",
        "a silent consumer's partitions move to the others after this (s)",
    ),
    Option("partitioner", "MARKET_PARTITIONER", "spread (symbols over partitions) or murmur2"),
    Option("csv_path", "MARKET_CSV_PATH", "the tick CSV"),
    Option("log_path", "MARKET_LOG_PATH", "the JSON-lines log"),
    Option("output_dir", "MARKET_OUTPUT_DIR", "executed notebooks"),
    Option("symbols", "MARKET_SYMBOLS", "comma-separated symbols"),
    Option("ticks_per_symbol", "MARKET_TICKS_PER_SYMBOL", "generated ticks per symbol"),
    Option("seed", "MARKET_SEED", "random seed of the generator"),
    Option("batch_size", "MARKET_BATCH_SIZE", "records per consumer micro-batch"),
    Option(
        "idle_timeout_s",
        "MARKET_IDLE_TIMEOUT_S",
        "batch consumer: also stop after this many idle s (0: only once caught up)",
    ),
    Option("live_rate", "MARKET_LIVE_RATE", "live mode: ticks/s per symbol"),
    Option("api_host", "MARKET_API_HOST", "API bind address"),
    Option("api_port", "MARKET_API_PORT", "API port"),
    Option("voila_port", "MARKET_VOILA_PORT", "Voila port"),
    Option("api_cache_s", "MARKET_API_CACHE_S", "API: keep answers this long (s)"),
    Option("api_stale_s", "MARKET_API_STALE_S", "API: serve stale answers this young (s)"),
    Option("kafka_home", "MARKETSTREAM_KAFKA_HOME", "jar cache and local broker data"),
    Option("kafka_version", "MARKETSTREAM_KAFKA_VERSION", "Kafka version of the local broker"),
)

_BY_NAME = {o.name: o for o in OPTIONS}

#: Secret settings that are connection strings: only their password is masked, where they
#: point is shown. Every other secret (a password, an object store's key) is masked whole.
CONNECTION_STRINGS = frozenset({"ducklake_catalog"})


@dataclass(frozen=True)
class Variable:
    """A variable the kit reads outside :class:`Settings`, and why it is not a setting."""

    env: str
    help: str
    #: set by the kit for its own child processes, never by a user
    internal: bool = True
    secret: bool = False


#: Every other variable the kit reads, so the one table names them all (a unit test
#: finds every ``MARKET_*`` name in the code in :data:`OPTIONS` or here). They are not
#: settings: each is read by the one module it concerns, at the moment it matters, and
#: four are the kit talking to its own children.
VARIABLES: tuple[Variable, ...] = (
    Variable(
        "MARKET_PG_RUN_AS",
        "run as root: the user the kit's PostgreSQL runs as (default nobody)",
        internal=False,
    ),
    Variable(
        "MARKET_BENCH_SCALING",
        "bench: the scale-out phase: 0, 1, or stores (duckdb,ducklake); default on from "
        "100,000 ticks",
        internal=False,
    ),
    Variable("MARKET_WORKER_GATE", "tests: a file a worker waits for before it consumes"),
    Variable("MARKET_STORE_RELAY", "workers on one DuckDB file: the relay's address"),
    Variable("MARKET_STORE_RELAY_KEY", "workers on one DuckDB file: the relay's key", secret=True),
    Variable("MARKET_BENCH_WORKER", "bench: a worker process's configuration (JSON)"),
    Variable("MARKET_PAGE_READY", "live mode: a file the Voila page's kernel makes once drawn"),
)

_VARIABLES = {v.env: v for v in VARIABLES}


def variable(env: str) -> str:
    """The name of a variable of :data:`VARIABLES`: a typo fails at import, not at run time."""
    return _VARIABLES[env].env


def _resolve(raw: str | Path) -> Path:
    path = Path(raw).expanduser()
    return path if path.is_absolute() else home() / path


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything configurable, with the defaults a laptop demo needs.

    Its repr (and so every notebook that displays it) shows each secret masked
    (:func:`marketstream.redact.mask`).
    """

    bootstrap_servers: str = "localhost:9092"
    topic: str = "market_ticks"
    partitions: int = 3
    consumer_group: str = "marketstream-duckdb"
    # paths: under the home (:func:`home`) when a Settings is made
    db_path: Path = field(default_factory=lambda: home() / "data" / "market_data.duckdb")
    csv_path: Path = field(default_factory=lambda: home() / "data" / "indices_sample.csv")
    log_path: Path = field(default_factory=lambda: home() / "logs" / "pipeline.log")
    output_dir: Path = field(default_factory=lambda: home() / "output")
    kafka_home: Path = field(default_factory=lambda: home() / ".cache" / "kafka")
    kafka_version: str = "4.4.0"
    store: str = "duckdb"
    #: empty: the kit's own PostgreSQL server (:mod:`marketstream.postgres`)
    ducklake_catalog: str = ""
    #: text, not a Path: it may be an object-store URL (``s3://bucket/prefix/``)
    ducklake_data: str = "data/lake"
    #: empty with an s3:// data path: the kit's own object store (:mod:`marketstream.objectstore`)
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_key_id: str = ""
    s3_secret: str = ""
    #: DuckDB's and AWS's default; the kit's own store is path-style (no DNS name per bucket)
    s3_url_style: str = "vhost"
    s3_use_ssl: bool = True
    objectstore_home: Path = field(default_factory=lambda: home() / ".cache" / "objectstore")
    postgres_home: Path = field(default_factory=lambda: home() / ".cache" / "postgres")
    postgres_port: int = 0
    consumers: int = 1
    #: Kafka's own default (KIP-735). A worker SIGKILLed keeps its partitions this long;
    #: 6 s (a default broker's group.min.session.timeout.ms) moves them ~7x sooner.
    session_timeout_s: float = 45.0
    partitioner: str = "spread"
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    ticks_per_symbol: int = 50
    seed: int = 42
    #: Records a consumer polls and stores at a time. Each batch has a fixed cost
    #: beside its rows: a store transaction (a lake's: ~25-30 ms of CPU, its catalog's
    #: files and fences at a new snapshot, and the commit) and a synchronous Kafka
    #: commit. 20,000, not 5,000: on a 300,000-tick topic one consumer went from
    #: 81-87k to 103-119k ticks/s on a DuckDB file, 15 to 11-13 us of CPU a tick,
    #: peak RSS 254 -> 268-271 MB (40,000: no faster, 319 MB); a lake write from 7.9
    #: to 2.7 us a tick. Interleaved runs, this 2-core machine, 2026-12-02.
    batch_size: int = 20000
    idle_timeout_s: float = 0.0
    live_rate: float = 4.0
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    voila_port: int = 8866
    api_cache_s: float = 0.25
    api_stale_s: float = 0.5
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_password: str = ""
    ssl_check_hostname: bool = True
    compression: str = "zstd"
    isolation_level: str = "read_committed"
    replication_factor: int = 3
    min_insync_replicas: int = 2

    def __repr__(self) -> str:
        shown = (
            f"{option.name}={_shown(option, getattr(self, option.name))!r}"
            for option in sorted(OPTIONS, key=lambda o: _ORDER[o.name])
        )
        return f"Settings({', '.join(shown)})"

    @property
    def secret_values(self) -> list[str]:
        """Every credential these settings hold, for :func:`marketstream.redact.redact`:
        the passwords, and the password inside the catalog's connection string."""
        found: list[str] = []
        for option in OPTIONS:
            value = getattr(self, option.name) if option.secret else ""
            # a connection string's password is the secret, not where it points
            if option.name in CONNECTION_STRINGS and mask(value) != MASK:
                found += passwords_in(value)
            elif value:
                found.append(value)
        return found

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Build settings from ``KAFKA_*``/``MARKET_*`` variables, then apply overrides.

        The variables are the process's over the home's ``.env`` (:func:`environment`).
        """
        env = environment()
        values: dict[str, object] = {}
        for option in OPTIONS:
            raw = env.get(option.env)
            if raw is not None and raw.strip():
                values[option.name] = _parse(option, raw.strip(), source=option.env)
        merged = cls().with_(**values) if values else cls()
        return merged.with_(**overrides)

    def with_(self, **overrides: object) -> Settings:
        """A copy with some fields replaced; text is parsed as from the environment.

        ``None`` means "keep": a notebook parameter or CLI option left unset.
        """
        unknown = set(overrides) - set(_BY_NAME)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        clean = {
            name: _parse(_BY_NAME[name], value, source=name)
            for name, value in overrides.items()
            if value is not None
        }
        return replace(self, **clean).validated() if clean else self.validated()

    def to_env(self) -> dict[str, str]:
        """Every setting as environment variables: ``from_env()`` there rebuilds ``self``."""
        return {option.env: _text(getattr(self, option.name)) for option in OPTIONS}

    def to_overrides(self) -> dict[str, str]:
        """Every setting as ``{field: text}``: ``Settings().with_(**those)`` rebuilds ``self``.

        This is the papermill parameter every notebook takes (JSON-safe values).
        """
        return {option.name: _text(getattr(self, option.name)) for option in OPTIONS}

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
            raise SettingsError("MARKET_SYMBOLS is empty; give a comma-separated list")
        if not 0 <= self.api_cache_s <= 60:
            raise SettingsError("MARKET_API_CACHE_S must be from 0 to 60 (seconds)")
        if not 0 <= self.api_stale_s <= 60:
            raise SettingsError("MARKET_API_STALE_S must be from 0 to 60 (seconds)")
        if not server_list(self.bootstrap_servers):
            raise SettingsError("KAFKA_BOOTSTRAP_SERVERS is empty; give host:port")
        _ = self.bootstrap_endpoints  # every server must be host:port, as Kafka requires
        if self.compression not in COMPRESSIONS:
            raise SettingsError(
                f"KAFKA_COMPRESSION={self.compression!r}: use one of {', '.join(COMPRESSIONS)}"
            )
        if self.isolation_level not in ISOLATION_LEVELS:
            raise SettingsError(
                f"KAFKA_ISOLATION_LEVEL={self.isolation_level!r}: use read_committed "
                "(aborted transactions never land) or read_uncommitted"
            )
        if self.store not in STORES:
            raise SettingsError(
                f"MARKET_STORE={self.store!r}: use duckdb (one file, the default) or ducklake"
            )
        if self.s3_url_style not in S3_URL_STYLES:
            raise SettingsError(
                f"MARKET_S3_URL_STYLE={self.s3_url_style!r}: use vhost (bucket.host, AWS's "
                "default) or path (host/bucket)"
            )
        if bool(self.s3_key_id) != bool(self.s3_secret):
            raise SettingsError(
                "MARKET_S3_KEY_ID and MARKET_S3_SECRET go together (an access key and its "
                "secret); set both or neither"
            )
        if self.partitioner not in PARTITIONERS:
            raise SettingsError(
                f"MARKET_PARTITIONER={self.partitioner!r}: use spread (the configured symbols "
                "over the partitions) or murmur2 (Kafka's default for keyed messages)"
            )
        if self.consumers < 1:
            raise SettingsError("MARKET_CONSUMERS must be at least 1")
        if not 1 <= self.session_timeout_s <= 3600:
            raise SettingsError(
                "KAFKA_SESSION_TIMEOUT_S must be from 1 to 3600 seconds (a default broker "
                "accepts 6 to 1800)"
            )
        if not 0 <= self.postgres_port <= 65535:
            raise SettingsError("MARKET_POSTGRES_PORT must be a port number (0: a free one)")
        if self.replication_factor < 1:
            raise SettingsError("KAFKA_REPLICATION_FACTOR must be at least 1")
        if self.min_insync_replicas < 1:
            raise SettingsError("KAFKA_MIN_INSYNC_REPLICAS must be at least 1")
        if self.security_protocol.upper() not in SECURITY_PROTOCOLS:
            raise SettingsError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol!r}: use one of "
                f"{', '.join(SECURITY_PROTOCOLS)}"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise SettingsError(
                "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (a client certificate "
                "and its key, for mTLS); set both or neither"
            )
        return self

    @property
    def bootstrap_endpoints(self) -> list[tuple[str, int]]:
        """Every bootstrap server as (host, port)."""
        try:
            return [split_host_port(s, None) for s in server_list(self.bootstrap_servers)]
        except SettingsError as exc:
            raise SettingsError(
                f"KAFKA_BOOTSTRAP_SERVERS={self.bootstrap_servers!r}: expected host:port ({exc})"
            ) from None

    @property
    def bootstrap_host_port(self) -> tuple[str, int]:
        """The first bootstrap server as (host, port), where a local broker would listen."""
        return self.bootstrap_endpoints[0]

    @property
    def lake_data(self) -> str:
        """DuckLake's data path: a URL as given, a relative folder under the home."""
        raw = self.ducklake_data
        return raw if "://" in raw else str(_resolve(raw))

    @property
    def lake_on_s3(self) -> bool:
        """True when DuckLake's data path is an ``s3://`` URL (an object store)."""
        return self.ducklake_data.strip().lower().startswith("s3://")

    @property
    def secured(self) -> bool:
        """True if any security is configured (the kit then never starts a broker itself)."""
        return (
            self.security_protocol.upper() != "PLAINTEXT"
            or bool(self.sasl_mechanism)
            or bool(self.ssl_cafile or self.ssl_certfile)
        )


_ORDER = {f.name: i for i, f in enumerate(fields(Settings))}
_DEFAULTS = Settings()
_KINDS: dict[str, type] = {f.name: type(getattr(_DEFAULTS, f.name)) for f in fields(Settings)}


def default_text(option: Option) -> str:
    """A setting's default as a person reads it (paths relative to the home), for help texts."""
    value = getattr(Settings(), option.name)
    if isinstance(value, Path):
        base = home()
        return str(value.relative_to(base)) if value.is_relative_to(base) else str(value)
    return _text(value) or "empty"


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _shown(option: Option, value: object) -> object:
    """A field's value as repr shows it: secrets masked (a key with an ``=`` in it whole,
    only a connection string's password)."""
    if not option.secret:
        return value
    if option.name in CONNECTION_STRINGS:
        return mask(str(value))
    return MASK if value else ""


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _parse(option: Option, value: Any, *, source: str) -> object:
    """A setting's value of the right kind, from text or an already-typed value."""
    kind = _KINDS[option.name]
    if issubclass(kind, Path):
        return _resolve(value)
    if kind is tuple:
        items = value.split(",") if isinstance(value, str) else value
        symbols = tuple(str(s).strip() for s in items if str(s).strip())
        if not symbols:
            raise SettingsError(f"{source}={value!r} is empty; give a comma-separated list")
        return symbols
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SettingsError(f"{source}={value!r} is not true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise SettingsError(f"{source}={value!r} is not an integer") from None
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value).strip())
        except ValueError:
            raise SettingsError(f"{source}={value!r} is not a number") from None
    return str(value)
