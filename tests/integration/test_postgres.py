"""A real local PostgreSQL server (:mod:`marketstream.postgres`, pgserver's bundled
binaries): it serves SQL and has the kit's database, a second start returns the
running server (from this process or another), a stop leaves no process, a stale
``postmaster.pid`` does not block a start, a taken port is named, the context
manager always stops, the server dies with the process that started it, and, run as
root, it starts wherever its programs and data dir are (``test_postgres_up.py``: a
kept server outlives the command that started it).

Each test's data dir is in a folder of its own under the system's temporary folder,
made enterable by all: when the tests run as root the server runs as ``nobody``, and
these tests are about the server, not about where it is kept. The tests marked
``AS_ROOT`` are: a data dir or programs under pytest's ``/tmp/pytest-of-root`` (0700,
kept so by pytest) are put where ``nobody`` can reach them, in root's shared home, and
deleted from there once their folder is gone. Every test stops what it started; the
fixture stops whatever is left and deletes the folder.
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
    prune_shared,
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


AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")


@AS_ROOT
def test_a_new_data_dir_the_server_user_cannot_reach_is_kept_where_it_can(tmp_path: Path) -> None:
    """pytest's folder is 0700 (a checkout under /root, too): the data dir is made in root's
    shared home and its path links there; deleting the link deletes the data (make clean)."""
    user = run_as()
    assert user is not None
    assert blocked_folder(tmp_path, user.uid, user.gid) is not None
    link = tmp_path / "pg"
    said: list[str] = []
    server = start_postgres(link, say=said.append)
    assert link.is_symlink() and link.resolve() == server.data_dir
    assert blocked_folder(server.data_dir, user.uid, user.gid) is None
    assert server.data_dir.stat().st_uid == user.uid
    assert any(f"keeping the PostgreSQL data of {link}" in line for line in said), said
    psql(server, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
    assert postgres_status(link) == server
    assert stop_postgres(link)
    again = start_postgres(link)  # the link is followed: same data, nothing moved again
    assert again.data_dir == server.data_dir and psql(again, "SELECT n FROM kept") == "7"
    assert stop_postgres(link)
    slot = server.data_dir.parent
    assert slot not in prune_shared()  # its link still names it
    link.unlink()
    assert slot in prune_shared() and not slot.exists()


@AS_ROOT
def test_a_folder_holding_data_the_server_user_cannot_enter_is_named(tmp_path: Path) -> None:
    """Data already there is not moved behind the user's back: the error says what to do."""
    user = run_as()
    assert user is not None
    blocked = blocked_folder(tmp_path, user.uid, user.gid)
    assert blocked is not None  # pytest's base folder is 0700
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "PG_VERSION").write_text("16\n")
    with pytest.raises(StoreUnavailable) as caught:
        start_postgres(tmp_path / "pg")
    message = str(caught.value)
    assert f"{user.name} cannot enter {blocked}" in message
    assert postgres.RUN_AS_VARIABLE in message
    assert not (tmp_path / "pg").is_symlink()
    assert not running_with(tmp_path)


@AS_ROOT
def test_programs_the_server_user_cannot_reach_are_copied_once(
    tmp_path: Path, data_dir: Path
) -> None:
    """An install in a 0700 folder (a venv in a checkout under /root) is copied to root's
    shared home, once; the copy goes when the install does (and no server runs from it)."""
    assert BINARIES is not None
    wheel = BINARIES.parents[2]  # site-packages: pgserver/ and pgserver.libs/
    site = tmp_path / "site"
    for name in ("pgserver", postgres.WHEEL_LIBS):
        # shutil.copy, not copy2: new mtimes make an install of its own, with its own copy
        shutil.copytree(wheel / name, site / name, copy_function=shutil.copy)
    bins = site / "pgserver" / "pginstall" / "bin"
    user = run_as()
    assert user is not None and blocked_folder(bins, user.uid, user.gid) is not None
    said: list[str] = []
    server = start_postgres(data_dir, bin_dir=bins, say=said.append)
    copied = [line for line in said if "copying PostgreSQL's programs" in line]
    assert len(copied) == 1, said
    postmaster = Path(psutil.Process(server.pid).exe())
    copy = postmaster.parents[3]  # <copy>/pgserver/pginstall/bin/postgres
    assert copy.parent.name == postgres.PROGRAMS_FOLDER and copy.stat().st_uid == 0
    assert blocked_folder(postmaster, user.uid, user.gid) is None
    assert psql(server, "SELECT 1") == "1"
    assert copy not in prune_shared()  # its install is there and a server runs from it
    assert stop_postgres(data_dir)
    said.clear()
    start_postgres(data_dir, bin_dir=bins, say=said.append)
    assert not any("copying" in line for line in said), said  # the copy is reused
    assert stop_postgres(data_dir)
    shutil.rmtree(site)
    assert copy in prune_shared() and not copy.exists()
