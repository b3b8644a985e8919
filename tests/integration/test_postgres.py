"""A real local PostgreSQL server (:mod:`marketstream.postgres`, pgserver's bundled
binaries): it serves SQL and has the kit's database, a second start returns the
running server (from this process or another), a stop leaves no process, a stale
``postmaster.pid`` does not block a start, a taken port is named, the context
manager always stops, and the server dies with the process that started it.

Each test's data dir is in a folder of its own under the system's temporary folder,
not under ``tmp_path``: when the tests run as root the server runs as ``nobody``,
who cannot enter pytest's ``/tmp/pytest-of-root`` (0700, kept so by pytest). Every
test stops what it started; the fixture stops whatever is left and deletes the folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from marketstream import postgres
from marketstream.errors import StoreUnavailable
from marketstream.postgres import (
    PostgresServer,
    blocked_folder,
    postgres_binaries,
    postgres_status,
    run_as,
    start_postgres,
    stop_postgres,
    temporary_postgres,
)
from marketstream.processes import process_family
from support.processes import GRACE_S
from support.waiting import wait_until


def _binaries() -> Path | None:
    try:
        return postgres_binaries()
    except StoreUnavailable:
        return None


BINARIES = _binaries()

pytestmark = [
    pytest.mark.skipif(BINARIES is None, reason="needs pgserver's bundled PostgreSQL"),
    pytest.mark.usefixtures("no_stray_children"),
]


@pytest.fixture
def folder() -> Iterator[Path]:
    """A fresh folder the server's user can enter; whatever runs in it is stopped after."""
    path = Path(tempfile.mkdtemp(prefix="ms-pg-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for data_dir in (path / "pg", path / "postgres"):
            stop_postgres(data_dir)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data_dir(folder: Path) -> Path:
    return folder / "pg"


def psql(server: PostgresServer, sql: str, database: str = "marketstream") -> str:
    """Run sql with the bundled psql over TCP, as a client of the server would."""
    assert BINARIES is not None
    done = subprocess.run(
        [str(BINARIES / "psql"), "-X", "-tAc", sql, server.dsn(database)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def running_with(data_dir: Path) -> list[str]:
    """The command lines of live processes that mention data_dir."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("status") != psutil.STATUS_ZOMBIE and str(data_dir) in " ".join(cmdline):
            found.append(" ".join(cmdline))
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_start_serves_sql_in_the_kits_database(data_dir: Path) -> None:
    server = start_postgres(data_dir)
    assert psql(server, "SELECT 1") == "1"
    assert psql(server, "SELECT current_database() || ' ' || current_user") == (
        "marketstream marketstream"
    )
    assert psql(server, "SELECT count(*) FROM pg_database WHERE datname = 'marketstream'") == "1"
    assert psql(server, "SHOW listen_addresses") == "127.0.0.1"
    assert psql(server, "SHOW fsync") == "on" and psql(server, "SHOW data_checksums") == "on"
    assert (data_dir / f".s.PGSQL.{server.port}").is_socket()
    assert "database system is ready to accept connections" in server.log_path.read_text()
    assert server.log_path.parent == data_dir
    assert postgres_status(data_dir) == server
    user = run_as()
    if user is not None:  # as root: the whole server runs as nobody
        owners = set()
        for process in process_family(server.pid):
            with contextlib.suppress(psutil.NoSuchProcess):  # a backend that just ended
                owners.add(process.username())
        assert owners == {user.name}
    assert stop_postgres(data_dir)


def test_start_again_returns_the_running_server(data_dir: Path) -> None:
    first = start_postgres(data_dir)
    again = start_postgres(data_dir, first.port, database="second")
    assert again == first
    assert psql(again, "SELECT 1", database="second") == "1"
    with pytest.raises(StoreUnavailable, match=f"already runs at 127.0.0.1:{first.port}"):
        start_postgres(data_dir, first.port + 1)
    assert stop_postgres(data_dir)


def test_stop_leaves_no_process(data_dir: Path) -> None:
    server = start_postgres(data_dir)
    family = process_family(server.pid)
    assert len(family) >= 5  # postmaster, checkpointer, writers, launchers
    assert running_with(data_dir)
    assert stop_postgres(data_dir) is True
    assert not running_with(data_dir)
    _, alive = psutil.wait_procs(family, timeout=GRACE_S)
    assert not alive
    assert postgres_status(data_dir) is None
    assert not (data_dir / "postmaster.pid").exists()
    assert stop_postgres(data_dir) is False


def test_a_killed_servers_stale_pid_file_does_not_block_a_start(data_dir: Path) -> None:
    """SIGKILL leaves postmaster.pid behind; the next start recovers, committed rows kept."""
    server = start_postgres(data_dir)
    psql(server, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
    family = process_family(server.pid)
    os.kill(server.pid, signal.SIGKILL)
    wait_until(lambda: postgres_status(data_dir) is None, GRACE_S, "the killed postmaster")
    _, alive = psutil.wait_procs(family[1:], timeout=GRACE_S)  # backends follow it
    assert not alive
    assert (data_dir / "postmaster.pid").read_text().split()[0] == str(server.pid)
    restarted = start_postgres(data_dir)
    assert restarted.pid != server.pid
    assert psql(restarted, "SELECT n FROM kept") == "42"
    assert "not properly shut down" in restarted.log_path.read_text()
    assert stop_postgres(data_dir)


def test_a_stale_pid_file_of_a_dead_pid_does_not_block_a_start(data_dir: Path) -> None:
    server = start_postgres(data_dir)
    assert stop_postgres(data_dir)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lines = [str(dead.pid), str(data_dir), "1796121749", str(server.port), str(data_dir)]
    (data_dir / "postmaster.pid").write_text("\n".join([*lines, "127.0.0.1", "", "ready"]) + "\n")
    assert postgres_status(data_dir) is None
    restarted = start_postgres(data_dir)
    assert restarted.pid not in (None, dead.pid)
    assert psql(restarted, "SELECT 1") == "1"
    assert stop_postgres(data_dir)


def test_a_taken_port_is_named(data_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(StoreUnavailable) as caught:
            start_postgres(data_dir, port)
    message = str(caught.value)
    assert f"port {port} on 127.0.0.1 is taken by another program" in message
    assert "\n" not in message
    assert not running_with(data_dir)


def test_temporary_postgres_stops_even_when_the_body_raises(folder: Path) -> None:
    pids = []
    with pytest.raises(RuntimeError, match="body failed"), temporary_postgres(folder) as server:
        pids = [p.pid for p in process_family(server.pid)]
        assert psql(server, "SELECT 1") == "1"
        raise RuntimeError("body failed")
    assert pids and all(gone(pid) for pid in pids)
    assert not running_with(folder)


def test_the_server_dies_with_the_process_that_started_it(data_dir: Path) -> None:
    """Another process's server is returned as is; ``kill -9`` of that process ends it."""
    script = (
        "import sys, time; from pathlib import Path; "
        "from marketstream.postgres import start_postgres; "
        "print(start_postgres(Path(sys.argv[1])).pid, flush=True); time.sleep(120)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert start_postgres(data_dir).pid == pid  # not a second server
        parent.kill()
        parent.wait()
        wait_until(lambda: gone(pid), GRACE_S, "the orphaned postmaster to stop")
        assert not running_with(data_dir)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_a_folder_the_server_user_cannot_enter_is_named(tmp_path: Path) -> None:
    user = run_as()
    assert user is not None
    blocked = blocked_folder(tmp_path, user.uid, user.gid)
    assert blocked is not None  # pytest's base folder is 0700
    with pytest.raises(StoreUnavailable) as caught:
        start_postgres(tmp_path / "pg")
    message = str(caught.value)
    assert f"{user.name} cannot enter {blocked}" in message
    assert postgres.RUN_AS_VARIABLE in message
    assert not running_with(tmp_path)
