"""The ``marketstream`` command: broker, generate, produce, consume, pipeline, live, bench, soak.

Expected failures (no broker, no Java, a bad setting, a missing file) print
one line saying what went wrong and what to do, and exit non-zero; only a
real bug shows a traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from marketstream.errors import BrokerError, MarketstreamError
from marketstream.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "bootstrap_servers": getattr(args, "bootstrap_servers", None),
        "topic": getattr(args, "topic", None),
        "db_path": getattr(args, "db", None),
        "csv_path": getattr(args, "csv", None),
        "symbols": getattr(args, "symbols", None),
        "ticks_per_symbol": getattr(args, "ticks_per_symbol", None),
        "seed": getattr(args, "seed", None),
    }
    return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})


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


def cmd_broker(args: argparse.Namespace) -> int:
    from marketstream import broker
    from marketstream.broker import cluster

    settings = _settings(args)
    nodes = 1 if args.nodes is None else args.nodes
    if nodes < 1:
        raise BrokerError(f"--nodes {nodes}: give 1 (one broker) or more")
    if args.action == "up":
        if nodes > 1:
            found = cluster.start_cluster(settings, nodes=nodes, say=_say)
            print(found.describe())
            print(f"export KAFKA_BOOTSTRAP_SERVERS={found.bootstrap_servers}")
            return 0 if found.all_up else 1
        status = broker.start_broker(settings, say=_say)
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
        return 0
    status = broker.broker_status(settings)
    if args.json:
        print(json.dumps(cluster.broker_status_dict(status), indent=2))
    else:
        print(status.describe())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from marketstream.ticks import generate_ticks, write_csv

    settings = _settings(args)
    ticks = generate_ticks(settings.symbols, settings.ticks_per_symbol, seed=settings.seed)
    rows = write_csv(ticks, settings.csv_path)
    print(f"wrote {rows} ticks ({len(settings.symbols)} symbols) to {settings.csv_path}")
    return 0


def _require_kafka(settings: Settings) -> None:
    """One line naming what is wrong with the connection, before a client would wait out
    its bootstrap timeout (a wrong password is otherwise "Unable to bootstrap" after 30 s)."""
    from marketstream.clients import DEFAULT_CLIENTS

    DEFAULT_CLIENTS.check(settings)


def cmd_produce(args: argparse.Namespace) -> int:
    from marketstream.produce import produce_csv, require_csv

    settings = _settings(args)
    require_csv(settings.csv_path)  # local problems first: they need no broker
    _require_kafka(settings)
    summary = produce_csv(settings.csv_path, settings, progress=not args.quiet)
    print(summary.describe())
    for problem in summary.problems:
        print(f"  {problem}", file=sys.stderr)
    return 0 if summary.failed == 0 else 1


def cmd_consume(args: argparse.Namespace) -> int:
    from marketstream.consume import consume

    settings = _settings(args)
    _require_kafka(settings)
    run = consume(
        settings,
        max_messages=args.max_messages,
        idle_timeout_s=args.idle_timeout,
        stop=_stop_event(),
        progress=not args.quiet,
    )
    print(
        f"consumed {run.messages_processed} messages: {run.rows_inserted} new rows, "
        f"{run.duplicates} already stored, {run.errors} dead letters, "
        f"{run.throughput_per_s:,.0f} msg/s -> {settings.db_path}"
    )
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from marketstream.pipeline import run_pipeline

    settings = _settings(args)
    summary = run_pipeline(
        settings, fresh=args.fresh, keep_broker=args.keep_broker, progress=not args.quiet
    )
    print(summary.describe())
    if summary.broker_started and args.keep_broker:
        print("  the broker is still running: `marketstream broker down` stops it")
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    from marketstream.live import run_live

    settings = _settings(args)
    if args.rate is not None:
        settings = settings.with_(live_rate=args.rate)
    return run_live(
        settings,
        api=not args.no_api,
        voila=not args.no_voila,
        duration_s=args.duration,
        stop=_stop_event(),
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from marketstream.bench import run_bench

    settings = _settings(args)
    return run_bench(settings, n_ticks=args.n, output=args.output, progress=not args.quiet)


def cmd_soak(args: argparse.Namespace) -> int:
    from marketstream.bench.soak import run_soak

    settings = _settings(args)
    if args.batch_size is not None:
        settings = settings.with_(batch_size=args.batch_size)
    report = run_soak(settings, args.n, keep=args.keep, progress=not args.quiet)
    print(report.describe())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(report.to_json())
    return 0 if report.rows == args.n else 1


def build_parser() -> argparse.ArgumentParser:
    """All verbs and their options (every option also has an environment variable)."""
    parser = argparse.ArgumentParser(
        prog="marketstream",
        description="Synthetic market ticks -> Kafka -> DuckDB. Settings come from the "
        "environment (see README); options here override them.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bootstrap-servers", help="Kafka host:port (KAFKA_BOOTSTRAP_SERVERS)")
    common.add_argument("--topic", help="Kafka topic (KAFKA_TOPIC)")
    common.add_argument("--db", help="DuckDB file (MARKET_DB_PATH)")
    common.add_argument("--csv", help="tick CSV (MARKET_CSV_PATH)")
    common.add_argument("--symbols", help="comma-separated symbols (MARKET_SYMBOLS)")
    common.add_argument("--ticks-per-symbol", type=int, help="(MARKET_TICKS_PER_SYMBOL)")
    common.add_argument("--seed", type=int, help="random seed (MARKET_SEED)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("broker", parents=[common], help="start/stop/report the local Kafka")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--nodes",
        type=int,
        help="up: a local cluster of N KRaft nodes on consecutive ports from the configured "
        "one (down and status find a running one without it)",
    )
    p.add_argument("--json", action="store_true", help="status: every node as JSON")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("generate", parents=[common], help="write synthetic ticks to CSV")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("produce", parents=[common], help="send the CSV to the topic")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("consume", parents=[common], help="topic -> DuckDB until caught up")
    p.add_argument("--max-messages", type=int)
    p.add_argument("--idle-timeout", type=float, help="seconds without data before stopping")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("pipeline", parents=[common], help="run notebooks 01-04 with papermill")
    p.add_argument("--fresh", action="store_true", help="delete the topic and DuckDB file first")
    p.add_argument(
        "--keep-broker", action="store_true", help="leave a broker this run started running"
    )
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("live", parents=[common], help="stream continuously; serve API + Voila")
    p.add_argument("--rate", type=float, help="ticks/s per symbol (MARKET_LIVE_RATE)")
    p.add_argument("--no-api", action="store_true")
    p.add_argument("--no-voila", action="store_true")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(func=cmd_live)

    p = sub.add_parser("bench", parents=[common], help="benchmark the whole path")
    p.add_argument("-n", type=int, default=1_000_000, help="ticks (default 1,000,000)")
    p.add_argument("--output", default="bench/latest.json")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "soak", parents=[common], help="N ticks through a consumer process; its memory reported"
    )
    p.add_argument("-n", type=int, default=1_000_000, help="ticks (default 1,000,000)")
    p.add_argument("--batch-size", type=int, help="records per poll/transaction")
    p.add_argument("--keep", action="store_true", help="keep the topic and DuckDB file")
    p.add_argument("--json", type=Path, help="also write the report (all samples) here")
    p.set_defaults(func=cmd_soak)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MarketstreamError, FileNotFoundError) as exc:
        print(f"marketstream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("marketstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
