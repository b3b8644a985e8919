"""The scale-out mode on hosts that share nothing but addresses.

A ``services`` host runs the broker, PostgreSQL (the lake's catalog) and the object
store (the lake's data), each listening on that host's own address, not loopback.
Two ``worker`` hosts each run consumer workers from their own empty working folder,
and the API runs on the second one. A stream is produced; every process of the
first worker host is SIGKILLed mid-run, as if its plug were pulled; the second one
finishes. The lake must then hold every tick exactly once, and the API on the
surviving host must serve them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from marketstream import store
from marketstream.objectstore import objectstore_status, stop_objectstore
from marketstream.postgres import stop_postgres
from marketstream.produce import ensure_topic, produce_ticks
from marketstream.settings import OPTIONS, Settings
from marketstream.store import lake
from marketstream.ticks import generate_ticks
from support.waiting import wait_until

from .conftest import Host

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225", "DAX", "FTSE100", "CAC40")
TICKS = 30_000  # per symbol: 180,000 in all, over 6 partitions (seconds of work for 4 workers)
KAFKA_PORT, PG_PORT, S3_PORT, API_PORT = 19092, 15432, 19000, 18080


def host_env(home: Path, **variables: str) -> dict[str, str]:
    """A process environment with no setting of this machine's: only ``variables``, the
    home (its own empty folder) and what a Python process needs to start."""
    ours = {o.env for o in OPTIONS} | {"MARKETSTREAM_HOME"}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("MARKET")}
    return {**env, "MARKETSTREAM_HOME": str(home), **variables}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "marketstream.cli", *args]


START_SERVICES = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from marketstream.objectstore import ensure_bucket, start_objectstore
    from marketstream.postgres import start_postgres

    home, address, pg_port, s3_port, subnet = sys.argv[1:6]
    home = Path(home)
    pg = start_postgres(home / "postgres", int(pg_port), host=address, keep=True,
                        database="lake")
    # the services host's operator lets the worker hosts in: the subnet, by trust
    hba = Path(pg.data_dir).resolve() / "pg_hba.conf"
    hba.write_text(hba.read_text() + f"host all all {subnet}.0/24 trust\\n")
    s3 = start_objectstore(home / "objects", int(s3_port), host=address, keep=True)
    ensure_bucket(s3, "ticks")
    print(json.dumps({"pg_pid": pg.pid, "pg_data": str(pg.data_dir)}))
    """
)


@contextmanager
def services(host: Host, folder: Path, kafka_libs: Path) -> Iterator[dict[str, str]]:
    """The broker, PostgreSQL and the object store on ``host``, kept until the end."""
    folder.mkdir()
    version_dir = folder / ".cache" / "kafka" / kafka_libs.parent.name
    version_dir.mkdir(parents=True)
    (version_dir / "libs").symlink_to(kafka_libs)  # the jars this machine fetched once
    env = host_env(folder, KAFKA_BOOTSTRAP_SERVERS=f"{host.address}:{KAFKA_PORT}")
    started = json.loads(
        host.run(
            [
                sys.executable,
                "-c",
                START_SERVICES,
                str(folder),
                host.address,
                str(PG_PORT),
                str(S3_PORT),
                host.address.rsplit(".", 1)[0],
            ],
            env,
            folder,
        )
        .strip()
        .splitlines()[-1]
    )
    os.kill(started["pg_pid"], signal.SIGHUP)  # PostgreSQL reads pg_hba.conf again
    try:
        host.run(cli("broker", "up", "-q"), env, folder)
        found = objectstore_status(folder / "objects")
        assert found is not None
        yield {
            "KAFKA_BOOTSTRAP_SERVERS": f"{host.address}:{KAFKA_PORT}",
            "MARKET_STORE": "ducklake",
            "MARKET_DUCKLAKE_CATALOG": (
                f"host={host.address} port={PG_PORT} user=marketstream dbname=lake"
            ),
            "MARKET_DUCKLAKE_DATA": "s3://ticks/hosts/",
            "MARKET_S3_ENDPOINT": f"{host.address}:{S3_PORT}",
            "MARKET_S3_KEY_ID": found.key_id,
            "MARKET_S3_SECRET": found.secret,
            "MARKET_S3_URL_STYLE": "path",
            "MARKET_S3_USE_SSL": "false",
            "KAFKA_TOPIC": "hosts_ticks",
            "KAFKA_PARTITIONS": "6",
            "KAFKA_CONSUMER_GROUP": "hosts",
            "KAFKA_SESSION_TIMEOUT_S": "6",
            "MARKET_SYMBOLS": ",".join(SYMBOLS),
        }
    finally:
        with suppress(AssertionError):
            host.run(cli("broker", "down", "-q"), env, folder)
        stop_postgres(Path(started["pg_data"]))
        stop_objectstore(folder / "objects")


def test_workers_on_two_hosts_one_unplugged_store_every_tick_once(
    hosts: dict[str, Host], tmp_path: Path, kafka: Settings
) -> None:
    libs = kafka.kafka_home / kafka.kafka_version / "libs"
    with services(hosts["services"], tmp_path / "services", libs) as shared:
        # the test stands on the machine itself and reaches the hosts through the bridge
        here = Settings().with_(
            **{o.name: shared[o.env] for o in OPTIONS if o.env in shared},
            db_path=tmp_path / "unused.duckdb",
            log_path=tmp_path / "test.log",
        )
        ensure_topic(here)
        ticks = generate_ticks(SYMBOLS, TICKS, seed=11)
        produce_ticks(ticks, here, progress=False)

        procs: dict[str, subprocess.Popen[bytes]] = {}
        folders = {}
        for name in ("worker1", "worker2"):
            folder = folders[name] = tmp_path / name
            folder.mkdir()  # its own empty working folder: nothing of this machine's
            env = host_env(folder, **shared)
            procs[name] = hosts[name].start(
                cli("consume", "--workers", "2", "-q"), env, folder, tmp_path / f"{name}.out"
            )
        api_env = host_env(folders["worker2"], **shared)
        api = hosts["worker2"].start(
            cli("api", "--host", hosts["worker2"].address, "--port", str(API_PORT)),
            api_env,
            folders["worker2"],
            tmp_path / "api.out",
        )
        try:
            at = store.locate(here)

            def stored() -> int:
                return int(store.stats(at)["ticks"])

            def output() -> str:
                return "\n".join(
                    p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.out")
                )

            wait_until(lambda: stored() > 0, 180, "the first ticks in the lake", context=output)
            at_kill = stored()
            assert at_kill < len(ticks), "the run ended before a host could be unplugged"
            killed = hosts["worker1"].kill_all()
            assert killed and hosts["worker1"].pids() == []  # nothing of worker1 runs
            procs["worker1"].wait(timeout=30)  # `ip netns exec` ends with its command
            assert procs["worker2"].wait(timeout=600) == 0, output()

            report = store.stats(at)
            assert (report["ticks"], report["distinct_ticks"]) == (len(ticks), len(ticks))
            assert report["dead_letters"] == 0
            url = f"http://{hosts['worker2'].address}:{API_PORT}/metrics"
            metrics = wait_until(lambda: _json(url), 120, "the API on worker2", context=output)
            assert sum(row["tickcount"] for row in metrics) == len(ticks)
            print(
                f"\nhosts: {len(killed)} processes of worker1 killed with {at_kill:,} of "
                f"{len(ticks):,} ticks stored; {report['ticks']:,} stored in the end; the API on "
                f"{hosts['worker2'].address} serves {len(metrics)} symbols"
            )
        finally:
            lake.forget_connections()
            for proc in (api, *procs.values()):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    with suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=60)
            for name in ("worker1", "worker2"):
                hosts[name].kill_all()


def _json(url: str) -> list[dict] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.loads(answer.read())
    except OSError:
        return None
