"""The ``marketstream`` command: broker, generate, produce, consume, pipeline, live, api, bench,
soak.

Expected failures (no broker, no Java, a bad setting, a missing file) print
one line saying what went wrong and what to do, and exit 2; only a real bug
shows a traceback.

Why the options come from the settings table (:data:`VERB_SETTINGS`,
:data:`marketstream.settings.OPTIONS`): one parent parser of seven options
gave every verb all of them, so ``broker --help`` offered ``--csv`` and
``--seed``, which it ignored, and each help line retyped (or forgot) its
variable. Now a verb names the settings it reads; each option's flag, help,
default and environment variable are derived from the table, and its value
goes through :meth:`Settings.from_env` like any other override.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from marketstream import __version__
from marketstream.errors import (
    BrokerError,
    ConfirmationRefused,
    ConsumeError,
    KafkaUnavailable,
    MarketstreamError,
    MissingExtra,
    ReplayError,
    SettingsError,
)
from marketstream.redact import redact
from marketstream.settings import OPTIONS, Option, Settings, default_text

if TYPE_CHECKING:
    from marketstream.pacing import Pace

#: Where the ticks are kept: what every verb that reads or writes the store takes (the
#: catalog too, from the environment or .env: its connection string may hold a password).
STORE_SETTINGS = ("store", "db_path", "ducklake_data")

#: The settings each verb takes as options; every other one comes from the environment
#: (or .env) only. Secrets are never options: a command line is visible in ``ps``.
VERB_SETTINGS: dict[str, tuple[str, ...]] = {
    "broker": ("bootstrap_servers", "kafka_home", "kafka_version", "topic"),
    "generate": ("csv_path", "symbols", "ticks_per_symbol", "seed"),
    "produce": ("bootstrap_servers", "topic", "csv_path", "partitions", "compression"),
    "consume": (
        "bootstrap_servers",
        "topic",
        "consumer_group",
        "consumers",
        *STORE_SETTINGS,
        "batch_size",
        "idle_timeout_s",
        "isolation_level",
    ),
    "pipeline": (
        "bootstrap_servers",
        "topic",
        "consumer_group",
        "consumers",
        *STORE_SETTINGS,
        "csv_path",
        "output_dir",
        "symbols",
        "ticks_per_symbol",
        "seed",
    ),
    "live": (
        "bootstrap_servers",
        "topic",
        "consumer_group",
        "consumers",
        *STORE_SETTINGS,
        "csv_path",
        "symbols",
        "live_rate",
        "api_port",
        "voila_port",
    ),
    "api": (
        "api_host",
        "api_port",
        *STORE_SETTINGS,
        "api_cache_s",
        "api_stale_s",
    ),
    "stats": ("bootstrap_servers", "topic", *STORE_SETTINGS, "postgres_home", "isolation_level"),
    "positions": ("bootstrap_servers", "topic", *STORE_SETTINGS, "postgres_home"),
    "upkeep": ("ducklake_data", "postgres_home"),
    "postgres": ("postgres_home", "postgres_port"),
    "objectstore": ("objectstore_home",),
    # what it writes into .env beside MARKET_STORE (each only when given)
    "use": ("db_path", "ducklake_data"),
    "bench": ("bootstrap_servers", "symbols", "seed"),
    "soak": ("bootstrap_servers", "batch_size"),
}

#: ``broker status``'s exit code when no broker answers: a script can test it
#: (``systemctl status`` and ``pg_ctl status`` say "not running" with 3 too).
NOT_RUNNING = 3

#: Flags that are not the field's name with dashes (kept from before, or shorter).
FLAGS = {
    "db_path": "--db",
    "csv_path": "--csv",
    "live_rate": "--rate",
    "idle_timeout_s": "--idle-timeout",
    "api_cache_s": "--api-cache",
    "api_stale_s": "--api-stale",
}
#: ... and per verb: ``api --port`` is the API's, ``live --api-port`` (live has two servers).
VERB_FLAGS = {
    "api": {"api_host": "--host", "api_port": "--port"},
    "consume": {"consumers": "--workers"},
    "postgres": {"postgres_port": "--port"},
}

_BY_NAME = {option.name: option for option in OPTIONS}
_DEFAULTS = Settings()


def flag(name: str, verb: str = "") -> str:
    """The command-line flag of a setting (in ``verb``)."""
    special = VERB_FLAGS.get(verb, {}).get(name) or FLAGS.get(name)
    return special or "--" + name.replace("_", "-")


def option_help(option: Option) -> str:
    """A setting's help line: what it is, its default, its variable (escaped for argparse)."""
    text = f"{option.help} (default: {default_text(option)}; env {option.env})"
    return text.replace("%", "%%")


def add_settings(parser: argparse.ArgumentParser, verb: str, names: Sequence[str]) -> None:
    """One option per setting, under "settings"; ``_settings`` reads them back by name."""
    group = parser.add_argument_group(
        "settings",
        "each is also an environment variable or a line of .env (in $MARKETSTREAM_HOME, else "
        "the current directory); an option wins",
    )
    for name in names:
        option = _BY_NAME[name]
        kind = type(getattr(_DEFAULTS, name))
        group.add_argument(
            flag(name, verb),
            dest=f"setting_{name}",
            metavar=name.upper().removesuffix("_PATH"),
            type=kind if kind in (int, float) else str,
            help=option_help(option),
        )
    parser.set_defaults(setting_names=tuple(names))


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, f"setting_{name}") for name in args.setting_names}
    return Settings.from_env(**overrides)


def require_extra(module: str, extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` if ``module`` (of the ``extra``) is not installed."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(
            f"{what} needs the {extra!r} extra ({module} is not installed): "
            f"pip install 'marketstream[{extra}]'"
        )


def _is_local(host: str) -> bool:
    from marketstream.processes import is_local_address

    return is_local_address(host)


def confirm_fresh(
    settings: Settings,
    *,
    yes: bool,
    interactive: bool,
    ask: Callable[[str], str] = input,
    is_local: Callable[[str], bool] = _is_local,
) -> None:
    """Let ``--fresh`` delete the topic only where that is safe or confirmed.

    A topic on this machine's broker is the kit's own; on any other cluster
    others may read it, so deleting it takes ``--yes`` or, at a terminal, a "y".
    Raises :class:`ConfirmationRefused` (one line, exit 2) otherwise.
    """
    hosts = [host for host, _ in settings.bootstrap_endpoints]
    if yes or all(is_local(host) for host in hosts):
        return
    what = (
        f"--fresh deletes topic {settings.topic} on {settings.bootstrap_servers}, a cluster "
        "that is not this machine's (others may use it)"
    )
    if not interactive:
        raise ConfirmationRefused(f"{what}; pass --yes to delete it")
    stored = settings.db_path if settings.store == "duckdb" else "the lake's tables"
    answer = ask(f"{what}, and {stored}. Delete them? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise ConfirmationRefused(f"{what}: not confirmed, nothing deleted")


def _stop_event() -> threading.Event:
    """An event set by SIGINT/SIGTERM, so loops finish their batch and exit cleanly."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():  # second Ctrl-C: give up waiting
            raise KeyboardInterrupt
        print(f"\n{signal.Signals(signum).name}: finishing the current batch...", file=sys.stderr)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _say(line: str) -> None:
    """Progress for people, on stderr (stdout is the command's answer)."""
    print(line, file=sys.stderr)


def _notes(args: argparse.Namespace) -> Callable[[str], None]:
    """Where a verb's progress notes go: stderr, or nowhere with ``-q`` (every verb
    takes it: ``generate -q`` was refused beside ``produce -q``)."""
    return (lambda _line: None) if args.quiet else _say


def cmd_broker(args: argparse.Namespace) -> int:
    from marketstream import broker
    from marketstream.broker import cluster

    settings = _settings(args)
    nodes = 1 if args.nodes is None else args.nodes
    if nodes < 1:
        raise BrokerError(f"--nodes {nodes}: give 1 (one broker) or more")
    if args.action == "up":
        if nodes > 1:
            found = cluster.start_cluster(settings, nodes=nodes, say=_notes(args))
            print(found.describe())
            print(f"export KAFKA_BOOTSTRAP_SERVERS={found.bootstrap_servers}")
            return 0 if found.all_up else 1
        status = broker.start_broker(settings, say=_notes(args))
        print(status.describe())
        return 0 if status.reachable else 1
    if args.action == "down":  # every node of a cluster and a single broker, by run dir
        stopped_nodes = cluster.stop_cluster(settings)
        stopped = broker.stop_broker(settings)
        if stopped_nodes:
            print(f"cluster stopped (nodes {', '.join(map(str, stopped_nodes))})")
        if stopped or not stopped_nodes:
            print("broker stopped" if stopped else "no broker started by marketstream was running")
        return 0
    found = cluster.cluster_status(settings)
    if nodes > 1 or found.managed:
        print(json.dumps(found.to_dict(), indent=2) if args.json else found.describe())
        return 0 if found.all_up else NOT_RUNNING
    status = broker.broker_status(settings)
    counts = _partition_counts(settings) if status.reachable else None
    if args.json:
        print(json.dumps({**cluster.broker_status_dict(status), "partitions": counts}, indent=2))
    else:
        print(status.describe())
        if counts is not None:
            spread = ", ".join(f"{p}: {n:,}" for p, n in counts.items())
            print(f"  topic {settings.topic}, messages per partition: {spread}")
        elif not status.managed:
            print("  `marketstream broker up` starts one here", file=sys.stderr)
    return 0 if status.reachable else NOT_RUNNING


def _partition_counts(settings: Settings) -> dict[int, int] | None:
    """The topic's messages per partition (``None`` without a topic, or if Kafka says no)."""
    from marketstream.produce import partition_counts

    try:
        return partition_counts(settings)
    except Exception:  # a status report never fails on this extra line
        return None


def cmd_generate(args: argparse.Namespace) -> int:
    from marketstream.ticks import generate_ticks, write_csv

    settings = _settings(args)
    ticks = generate_ticks(settings.symbols, settings.ticks_per_symbol, seed=settings.seed)
    rows = write_csv(ticks, settings.csv_path)
    print(f"wrote {rows} ticks ({len(settings.symbols)} symbols) to {settings.csv_path}")
    return 0


#: The line a step verb (produce, consume) prints when the local broker is not running.
START_BROKER_HINT = (
    "start the local broker with `marketstream broker up` (pipeline and live stop the one "
    "they start), or set KAFKA_BOOTSTRAP_SERVERS"
)


def _require_kafka(settings: Settings) -> None:
    """One line naming what is wrong with the connection, before a client would wait out
    its bootstrap timeout (a wrong password is otherwise "Unable to bootstrap" after 30 s).

    The step verbs never start a broker (docs/real-clusters.md, "Which commands start a
    broker"): where ``pipeline`` or ``live`` would have started one (this machine's
    address, nothing listening, no security), the line says which command to run.
    """
    from marketstream.broker.owned import local_start_refusal
    from marketstream.clients import DEFAULT_CLIENTS

    try:
        DEFAULT_CLIENTS.check(settings)
    except KafkaUnavailable:
        if local_start_refusal(settings) is not None:
            raise  # somebody's cluster, or security configured: the diagnosis says why
        raise KafkaUnavailable(
            f"no Kafka broker answers at {settings.bootstrap_servers}: nothing listens there; "
            + START_BROKER_HINT
        ) from None


def _pace(args: argparse.Namespace) -> Pace | None:
    """The replay's pace from ``--pace``/``--speed``/``--retime``; None without ``--pace``."""
    from marketstream.pacing import Pace

    if not args.pace:
        if args.speed is not None or getattr(args, "retime", False):
            raise ReplayError("--speed and --retime pace a replay: add --pace")
        return None
    return Pace(
        speed=1.0 if args.speed is None else args.speed, retime=getattr(args, "retime", False)
    )


def cmd_produce(args: argparse.Namespace) -> int:
    from marketstream.produce import produce_csv, require_csv

    settings = _settings(args)
    pace = _pace(args)
    require_csv(settings.csv_path)  # local problems first: they need no broker
    _require_kafka(settings)
    summary = produce_csv(
        settings.csv_path,
        settings,
        progress=not args.quiet,
        pace=pace,
        wait=_stop_event().wait if pace else None,
    )
    print(summary.describe())
    for problem in summary.problems:
        print(f"  {problem}", file=sys.stderr)
    return 0 if summary.failed == 0 else 1


def cmd_consume(args: argparse.Namespace) -> int:
    from marketstream import store
    from marketstream.consume import consume
    from marketstream.workers import consume_group, describe_shares

    settings = _settings(args)
    _require_kafka(settings)
    if args.max_messages is not None and settings.consumers > 1:
        raise ConsumeError("--max-messages counts one consumer's messages: use it with --workers 1")
    shares: list[str] = []
    with store.owned_store(settings) as settings:
        if settings.consumers > 1:
            group = consume_group(settings)
            run, shares = group.run, describe_shares(group.shares)
        else:
            run = consume(
                settings,
                max_messages=args.max_messages,
                stop=_stop_event(),
                progress=not args.quiet,
            )
        where = store.describe(store.locate(settings))
    print(
        f"consumed {run.messages_processed} messages: {run.rows_inserted} new rows, "
        f"{run.duplicates} already stored, {run.errors} dead letters, "
        f"{run.throughput_per_s:,.0f} msg/s -> {where}"
    )
    for line in shares:  # each worker's partitions, messages and rate
        print(line)
    if run.behind:
        print(
            f"marketstream: not caught up: {run.behind:,} messages of {settings.topic} are "
            "not stored yet (marketstream stats shows the lag per partition); run "
            "marketstream consume again to store them",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from marketstream import lag, store

    with store.owned_store(_settings(args)) as settings:
        at = store.locate(settings)
        report = lag.annotate(store.stats(at), lag.measure(settings, at))
    print(json.dumps(report, indent=2) if args.json else store.render_stats(report))
    return 0


def _position_pairs(texts: Sequence[str]) -> dict[int, int]:
    pairs: dict[int, int] = {}
    for text in texts:
        partition, sep, offset = text.partition("=")
        if not sep or not partition.strip().isdigit() or not offset.strip().isdigit():
            raise ConsumeError(f"--set {text!r}: expected PARTITION=OFFSET, e.g. --set 0=1500")
        pairs[int(partition)] = int(offset)
    return pairs


def cmd_positions(args: argparse.Namespace) -> int:
    from marketstream import lag, store

    settings = _settings(args)
    moves = _position_pairs(args.set or [])
    with store.owned_store(settings) as settings:
        at = store.locate(settings)
        if args.to_end:
            ends = lag.end_offsets(settings)
            if not ends:
                raise ConsumeError(f"the topic {settings.topic} does not exist on the cluster")
            moves = {p: end for (_, p), end in ends.items()} | moves
        if moves:
            store.set_positions(at, {(settings.topic, p): o for p, o in moves.items()})
            for p, o in sorted(moves.items()):
                print(f"{settings.topic}[{p}]: the store resumes at offset {o:,}")
        measured = lag.measure(settings, at)
    for p in measured.partitions:
        end = "-" if p.end_offset is None else f"{p.end_offset:,}"
        position = "-" if p.stored_position is None else f"{p.stored_position:,}"
        behind = "-" if p.lag is None else f"{p.lag:,}"
        print(f"{p.topic}[{p.partition}]  position {position}  end {end}  lag {behind}")
    if measured.broker_error:
        print(f"kafka: {measured.broker_error}", file=sys.stderr)
    return 0


def cmd_upkeep(args: argparse.Namespace) -> int:
    from marketstream import store

    settings = _settings(args).with_(store="ducklake")
    with store.owned_store(settings) as settings:
        done = store.upkeep(store.locate(settings), keep_snapshots_s=args.keep_snapshots)
    print(
        f"lake upkeep: {done.files_before} -> {done.files_after} data files, "
        f"{done.snapshots_expired} snapshots expired, {done.files_deleted} old files deleted"
    )
    return 0


def cmd_postgres(args: argparse.Namespace) -> int:
    from marketstream.postgres import postgres_status, start_postgres, stop_postgres

    settings = _settings(args)
    if args.action == "up":
        server = start_postgres(  # kept: it outlives this command, until `postgres down`
            settings.postgres_home, settings.postgres_port or None, say=_notes(args), keep=True
        )
        print(f"PostgreSQL on {server.host}:{server.port} (data {server.data_dir})")
        print(f"export MARKET_DUCKLAKE_CATALOG='{server.dsn()}'")
        return 0
    if args.action == "down":
        stopped = stop_postgres(settings.postgres_home)
        print(
            "PostgreSQL stopped" if stopped else "no PostgreSQL started by marketstream was running"
        )
        return 0
    server = postgres_status(settings.postgres_home)
    if server is None:
        print(f"no PostgreSQL running from {settings.postgres_home}")
        return 1
    print(f"PostgreSQL on {server.host}:{server.port}, pid {server.pid} (data {server.data_dir})")
    return 0


def cmd_objectstore(args: argparse.Namespace) -> int:
    from marketstream.objectstore import objectstore_status, start_objectstore, stop_objectstore

    home = _settings(args).objectstore_home
    if args.action == "up":
        found = start_objectstore(home, keep=True, say=_notes(args))  # until `objectstore down`
        print(f"object store (s3proxy) at {found.endpoint} (data {found.data_dir})")
        print("the kit hands its keys to its own processes; a lake on s3:// uses it")
        return 0
    if args.action == "down":
        stopped = stop_objectstore(home)
        print("object store stopped" if stopped else "no object store started by marketstream")
        return 0
    found = objectstore_status(home)
    if found is None:
        print(f"no object store running from {home}")
        return NOT_RUNNING
    print(f"object store (s3proxy) at {found.endpoint}, pid {found.pid} (data {found.data_dir})")
    return 0


#: The settings ``use`` writes into .env when given as options (their raw text, as typed).
USE_SETTINGS = {"db_path": "MARKET_DB_PATH", "ducklake_data": "MARKET_DUCKLAKE_DATA"}


def set_dotenv(path: Path, values: dict[str, str]) -> None:
    """Set ``KEY=value`` lines in a ``.env`` file, leaving every other line as it was.

    A key's existing line (``export KEY=...`` included) is replaced where it stands, a
    second one of the same key dropped (python-dotenv would take the last); a new key is
    appended. A new file is made readable by its owner only: ``.env`` holds passwords.
    Written to a temporary file and renamed, so a reader never sees half of it.
    """
    import os
    import re

    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    done: set[str] = set()
    out: list[str] = []
    for line in lines:
        found = re.match(r"\s*(export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        key = found.group(2) if found else None
        if key in values:
            if key not in done:
                out.append(f"{found.group(1) or ''}{key}={values[key]}")
                done.add(key)
            continue
        out.append(line)
    out += [f"{key}={value}" for key, value in values.items() if key not in done]
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("\n".join(out) + "\n", encoding="utf-8")
    temporary.chmod(mode)
    os.replace(temporary, path)


def cmd_use(args: argparse.Namespace) -> int:
    """Show the store in use, or choose it for every later command (kept in ``.env``)."""
    import os

    from marketstream.settings import DOTENV, STORES, home, read_dotenv

    path = home() / DOTENV
    env = _BY_NAME["store"].env
    if args.store is None:
        settings = Settings.from_env()
        source = (
            "exported in this shell"
            if os.environ.get(env, "").strip()
            else f"from {path}"
            if read_dotenv(path).get(env, "").strip()
            else "the default"
        )
        where = settings.db_path if settings.store == "duckdb" else settings.lake_data
        print(f"store: {settings.store} ({where}; {env} {source})")
        return 0
    if args.store not in STORES:
        raise SettingsError(f"use {args.store!r}: choose one of {', '.join(STORES)}")
    values = {env: args.store}
    for name, variable in USE_SETTINGS.items():
        given = getattr(args, f"setting_{name}")
        if given is not None:
            values[variable] = str(given)
    set_dotenv(path, values)
    shown = ", ".join(f"{k}={v}" for k, v in values.items())
    print(f"{shown} written to {path}: every later command uses the {args.store} store")
    exported = os.environ.get(env, "").strip()
    if exported and exported != args.store:
        print(
            f"  but {env}={exported} is exported in this shell and wins over .env: `unset {env}`",
            file=sys.stderr,
        )
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from marketstream.pipeline import run_pipeline

    settings = _settings(args)
    if args.fresh:
        confirm_fresh(settings, yes=args.yes, interactive=sys.stdin.isatty())
    summary = run_pipeline(
        settings, fresh=args.fresh, keep_broker=args.keep_broker, progress=not args.quiet
    )
    print(summary.describe())
    if summary.broker_started and args.keep_broker:
        print("  the broker is still running: `marketstream broker down` stops it")
    elif summary.broker_started:
        print(
            "  the broker this run started is stopped: `marketstream broker up` starts one "
            "for produce and consume"
        )
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    from marketstream.live import run_live

    settings = _settings(args)
    replay = _pace(args)
    if not args.no_api:
        require_extra("granian", "api", "live mode's API (or pass --no-api)")
        require_extra("flask", "api", "live mode's API (or pass --no-api)")
    if not args.no_voila:
        require_extra("voila", "voila", "live mode's Voila page (or pass --no-voila)")
    if replay is not None:
        from marketstream.produce import require_csv

        require_csv(settings.csv_path)
    return run_live(
        settings,
        api=not args.no_api,
        voila=not args.no_voila,
        duration_s=args.duration,
        stop=_stop_event(),
        replay=replay,
        progress=not args.quiet,
    )


def cmd_api(args: argparse.Namespace) -> int:
    require_extra("granian", "api", "marketstream api")
    require_extra("flask", "api", "marketstream api")
    from marketstream_api.serve import WSGI_APP, WSGI_ORIGINAL_PATHS_APP, run

    target = WSGI_ORIGINAL_PATHS_APP if args.original_paths else WSGI_APP
    return run(_settings(args), workers=args.workers, threads=args.threads, target=target)


def cmd_bench(args: argparse.Namespace) -> int:
    from marketstream.bench import run_bench

    require_extra("granian", "api", "the benchmark's API phase")
    settings = _settings(args)
    return run_bench(settings, n_ticks=args.n, output=args.output, progress=not args.quiet)


def cmd_soak(args: argparse.Namespace) -> int:
    from marketstream.bench.soak import run_soak

    settings = _settings(args)
    report = run_soak(settings, args.n, keep=args.keep, progress=not args.quiet)
    print(report.describe())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(report.to_json())
    return 0 if report.rows == args.n else 1


def _pacing(parser: argparse.ArgumentParser, *, retime: bool) -> None:
    group = parser.add_argument_group("paced replay", "the CSV at the speed of its event times")
    group.add_argument(
        "--pace",
        action="store_true",
        help="send each tick when it is due by its event time, instead of all at once",
    )
    group.add_argument(
        "--speed", type=float, metavar="X", help="with --pace: X times faster (default: 1)"
    )
    if retime:
        group.add_argument(
            "--retime",
            action="store_true",
            help="with --pace: stamp each tick with the time it is sent (the live page and "
            "the API show the last minutes before now)",
        )


def build_parser() -> argparse.ArgumentParser:
    """All verbs and their own options (each setting's option also has an environment variable)."""
    parser = argparse.ArgumentParser(
        prog="marketstream",
        description="Synthetic market ticks -> Kafka -> DuckDB. Settings come from the "
        "environment and ./.env (see docs/configuration.md); options here override them.",
    )
    parser.add_argument("--version", action="version", version=f"marketstream {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(
        name: str, summary: str, func: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=summary)
        add_settings(p, name, VERB_SETTINGS[name])
        p.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            help="no progress bars or progress notes; the result and errors still print",
        )
        p.set_defaults(func=func)
        return p

    p = verb("broker", "start/stop/report the local Kafka", cmd_broker)
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--nodes",
        type=int,
        help="up: a local cluster of N KRaft nodes on consecutive ports from the configured "
        "one (down and status find a running one without it)",
    )
    p.add_argument("--json", action="store_true", help="status: every node as JSON")

    verb("generate", "write synthetic ticks to the CSV", cmd_generate)

    p = verb(
        "produce", "send the CSV (any timestamp,symbol,price,volume file) to the topic", cmd_produce
    )
    _pacing(p, retime=True)

    p = verb("consume", "topic -> the store until caught up", cmd_consume)
    p.add_argument("--max-messages", type=int, help="stop after this many (default: no limit)")

    p = verb("pipeline", "run notebooks 01-04 with papermill", cmd_pipeline)
    p.add_argument(
        "--fresh", action="store_true", help="delete the topic and the stored ticks first"
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="with --fresh on a cluster that is not this machine's: delete without asking",
    )
    p.add_argument(
        "--keep-broker", action="store_true", help="leave a broker this run started running"
    )

    p = verb("live", "stream continuously; serve the API and the Voila page", cmd_live)
    p.add_argument("--no-api", action="store_true", help="do not start the API")
    p.add_argument("--no-voila", action="store_true", help="do not start the Voila page")
    p.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: at Ctrl-C)"
    )
    _pacing(p, retime=False)

    p = verb("api", "serve the API (JSON for Grafana) until Ctrl-C", cmd_api)
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--threads", type=int, default=4, help="threads per worker (default: 4)")
    p.add_argument(
        "--original-paths",
        action="store_true",
        help="answer /live and /metrics in the original kit's shape (as /v0/live, /v0/metrics) "
        "for dashboards made for it (default: off)",
    )

    p = verb(
        "stats", "what the store holds: ticks, distinct ticks, dead letters, offsets", cmd_stats
    )
    p.add_argument("--json", action="store_true", help="as JSON")

    p = verb(
        "positions",
        "show, or move, where the store resumes each partition (to replay or skip a range)",
        cmd_positions,
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="PARTITION=OFFSET",
        help="resume PARTITION at OFFSET: lower to replay, higher to skip (repeatable)",
    )
    p.add_argument(
        "--to-end",
        action="store_true",
        help="resume every partition at its end offset now (skip what the topic holds)",
    )

    p = verb("upkeep", "DuckLake: merge small files, expire old snapshots", cmd_upkeep)
    p.add_argument(
        "--keep-snapshots",
        type=float,
        default=60.0,
        metavar="S",
        help="keep snapshots younger than S seconds (default: 60)",
    )

    p = verb(
        "postgres", "start/stop/report the kit's own PostgreSQL (the lake's catalog)", cmd_postgres
    )
    p.add_argument("action", choices=["up", "down", "status"])

    p = verb(
        "objectstore",
        "start/stop/report the kit's own S3-compatible store (a lake on s3://)",
        cmd_objectstore,
    )
    p.add_argument("action", choices=["up", "down", "status"])

    p = verb(
        "use",
        "choose the store every later command uses (kept in .env); alone: show it",
        cmd_use,
    )
    p.add_argument("store", nargs="?", metavar="duckdb|ducklake", help="the store to use")

    p = verb("bench", "benchmark the whole path", cmd_bench)
    p.add_argument("-n", type=int, default=1_000_000, help="ticks (default: 1,000,000)")
    p.add_argument(
        "--output", default="bench/latest.json", help="results (default: bench/latest.json)"
    )

    p = verb("soak", "N ticks through a consumer process; its memory reported", cmd_soak)
    p.add_argument("-n", type=int, default=1_000_000, help="ticks (default: 1,000,000)")
    p.add_argument("--keep", action="store_true", help="keep the topic and DuckDB file")
    p.add_argument("--json", type=Path, help="also write the report (all samples) here")
    return parser


def _secret_values() -> list[str]:
    """The configured credentials, to mask in an error line (none if settings are broken:
    the line is then about them, and passwords are still masked by their pattern)."""
    try:
        return Settings.from_env().secret_values
    except MarketstreamError:
        return []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MarketstreamError, FileNotFoundError) as exc:
        print(f"marketstream: error: {redact(str(exc), _secret_values())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("marketstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
