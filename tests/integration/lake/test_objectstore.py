"""The kit's own object store (s3proxy): its lifecycle, its keys, and a pipeline on it.

Real processes throughout: the JVM of s3proxy, the broker, PostgreSQL and the
pipeline's workers and notebook kernels.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from marketstream import store
from marketstream.errors import StoreUnavailable
from marketstream.objectstore import (
    bucket_of,
    objectstore_status,
    start_objectstore,
    stop_objectstore,
)
from marketstream.pipeline import run_pipeline
from marketstream.postgres import PostgresServer, start_postgres
from marketstream.settings import Settings
from support.processes import CommandLines, cli

pytestmark = pytest.mark.usefixtures("no_stray_children")

#: The jars come from the kit's cache, fetched once (as the broker's).
JARS = Settings().objectstore_home


def _status_from_another_process(home: Path) -> dict[str, object] | None:
    code = (
        "import json, sys; from marketstream.objectstore import objectstore_status as s; "
        "found = s(sys.argv[1]); "
        "print(json.dumps(found and {'pid': found.pid, 'endpoint': found.endpoint, "
        "'shown': repr(found)}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def test_it_starts_keeps_its_keys_private_is_found_by_another_process_and_stops(
    tmp_path: Path,
) -> None:
    home = tmp_path / "objects"
    server = start_objectstore(home, jars_home=JARS)
    try:
        assert server.pid is not None
        cmdline = " ".join(psutil.Process(server.pid).cmdline())
        assert server.secret not in cmdline and server.key_id not in cmdline  # ps shows it
        assert server.secret not in repr(server) and server.key_id not in repr(server)
        for private in (home / "credentials", home / "run" / "s3proxy.properties"):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert server.secret not in (home / "run" / "s3proxy.log").read_text()
        seen = _status_from_another_process(home)
        assert seen is not None and seen["pid"] == server.pid
        assert seen["endpoint"] == server.endpoint and server.secret not in str(seen["shown"])
        again = start_objectstore(home, jars_home=JARS)  # running: the same one, no second
        assert again.pid == server.pid
    finally:
        assert stop_objectstore(home)
    assert not psutil.pid_exists(server.pid) or (
        psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE
    )
    assert objectstore_status(home) is None
    assert _status_from_another_process(home) is None
    assert not stop_objectstore(home)  # nothing left to stop


def test_a_taken_port_is_named_and_nothing_is_left_running(tmp_path: Path, listener) -> None:
    with pytest.raises(StoreUnavailable, match=f"port {listener} .* is taken"):
        start_objectstore(tmp_path / "objects", listener, jars_home=JARS)
    assert objectstore_status(tmp_path / "objects") is None


@pytest.mark.parametrize("url", ["s3://A_B/x/", "s3://ab/", "s3://../x", "file:///tmp"])
def test_a_bucket_name_s3_refuses_is_refused_before_anything_starts(url: str) -> None:
    with pytest.raises(StoreUnavailable):
        bucket_of(url)


def test_the_pipeline_on_s3_starts_the_kits_object_store_and_keeps_no_parquet_elsewhere(
    fresh: Settings, postgres: PostgresServer, tmp_path: Path
) -> None:
    """What ``MARKET_STORE=ducklake MARKET_DUCKLAKE_DATA=s3://marketstream/ticks/
    MARKET_CONSUMERS=3 make demo`` does, with no endpoint or keys set: the kit starts its
    own object store, stores 150 ticks there, and stops it."""
    database = "lake_owned_s3"
    start_postgres(postgres.data_dir, postgres.port, database=database)
    objects = tmp_path / "objects"
    settings = fresh.with_(
        store="ducklake",
        ducklake_catalog=postgres.dsn(database),
        ducklake_data="s3://marketstream/ticks/",
        objectstore_home=str(objects),
        consumers=3,
    )
    assert not settings.s3_endpoint and not settings.s3_key_id
    with CommandLines() as seen:  # the JVM, the workers, the kernels: none shows a key
        summary = run_pipeline(settings, progress=False)
    assert summary.rows == 150
    assert "s3://marketstream/ticks/" in summary.location
    assert objectstore_status(objects) is None  # started by the run, stopped after it
    data = objects / "data"
    parquet = sorted(tmp_path.rglob("*.parquet"))
    assert parquet, "the lake wrote no Parquet file"
    assert all(data in path.parents for path in parquet), parquet
    key_id, secret = (objects / "credentials").read_text().split()
    assert any("org.gaul.s3proxy.Main" in line for line in seen.seen)
    assert not [line for line in seen.seen if secret in line or key_id in line]
    for path in [*settings.output_dir.rglob("*.ipynb"), settings.log_path]:
        text = path.read_text()  # notebooks and the log never hold the keys
        assert secret not in text and key_id not in text, path
    assert secret not in summary.describe() and key_id not in summary.describe()
    with store.owned_store(settings) as owned:  # started again: the data is still there
        report = store.stats(store.locate(owned))
        assert (report["ticks"], report["distinct_ticks"]) == (150, 150)
    assert objectstore_status(objects) is None


def test_the_cli_keeps_it_up_until_down(tmp_path: Path) -> None:
    """``objectstore up`` outlives the command (like ``postgres up``); ``down`` stops it."""
    settings = Settings().with_(objectstore_home=tmp_path / "objects")
    up = cli(settings, "objectstore", "up", "-q")
    assert up.returncode == 0 and "object store (s3proxy) at " in up.stdout, up.stderr
    try:
        status = cli(settings, "objectstore", "status")
        assert status.returncode == 0, status.stdout
        found = objectstore_status(settings.objectstore_home)
        assert found is not None and found.pid is not None and psutil.pid_exists(found.pid)
        assert found.key_id not in up.stdout + up.stderr + status.stdout  # keys never shown
    finally:
        down = cli(settings, "objectstore", "down")
    assert down.returncode == 0 and "object store stopped" in down.stdout
    gone = cli(settings, "objectstore", "status", check=False)
    assert gone.returncode == 3 and "no object store running" in gone.stdout
