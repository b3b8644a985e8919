"""The local PostgreSQL server's pure parts (:mod:`marketstream.postgres`), no server run:
the DSN, ``postmaster.pid`` parsing, finding the binaries, who runs them as root, and
which folder a run-as user cannot enter."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from marketstream.errors import SettingsError, StoreUnavailable
from marketstream.postgres import (
    DEFAULT_DATABASE,
    DEFAULT_USER,
    PostgresServer,
    blocked_folder,
    parse_postmaster_pid,
    postgres_binaries,
    postgres_status,
    run_as,
    server_settings,
)

#: A ``postmaster.pid`` as PostgreSQL 16.2 wrote it here (the status line is padded).
SAMPLE_PID_FILE = """\
29055
/tmp/pgexp/d
1796121749
54329
/tmp/pgexp/d
127.0.0.1
 10256401        33
ready   
"""  # noqa: W291


def test_dsn_is_libpq_keyword_form() -> None:
    server = PostgresServer(Path("/x"), "127.0.0.1", 54329, 42)
    assert server.dsn() == "host=127.0.0.1 port=54329 user=marketstream dbname=marketstream"
    assert server.dsn("other").endswith(" dbname=other")
    assert server.user == DEFAULT_USER and DEFAULT_DATABASE == "marketstream"


def test_dsn_quotes_what_libpq_would_split() -> None:
    """A socket folder as host may hold spaces or quotes: libpq wants them quoted."""
    server = PostgresServer(Path("/x"), "/tmp/my dir", 5432, None, user="o'neil")
    assert server.dsn("") == "host='/tmp/my dir' port=5432 user='o\\'neil' dbname=''"


def test_postmaster_pid_is_parsed() -> None:
    info = parse_postmaster_pid(SAMPLE_PID_FILE)
    assert info is not None
    assert (info.pid, info.data_dir, info.port) == (29055, "/tmp/pgexp/d", 54329)
    assert (info.socket_dir, info.listen_address, info.status) == (
        "/tmp/pgexp/d",
        "127.0.0.1",
        "ready",
    )


def test_postmaster_pid_written_early_or_damaged() -> None:
    """The first lines come before the rest while the server starts; garbage is no server."""
    early = parse_postmaster_pid("29055\n/tmp/pgexp/d\n1796121749\n54329\n")
    assert early is not None and (early.port, early.status) == (54329, "")
    assert parse_postmaster_pid("") is None
    assert parse_postmaster_pid("not a pid\n") is None
    assert parse_postmaster_pid("29055\n/tmp/pgexp/d\n") is None  # no port yet


def test_status_believes_a_pid_file_only_for_a_live_postmaster(tmp_path: Path) -> None:
    """A stale file (dead pid) or a recycled pid (here: pytest itself) is no server."""
    pid_file = tmp_path / "postmaster.pid"
    assert postgres_status(tmp_path) is None
    pid_file.write_text(SAMPLE_PID_FILE.replace("29055", str(os.getpid())), encoding="utf-8")
    assert postgres_status(tmp_path) is None
    pid_file.write_text(SAMPLE_PID_FILE.replace("29055", "999999999"), encoding="utf-8")
    assert postgres_status(tmp_path) is None


def test_missing_bin_dir_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bin"
    with pytest.raises(StoreUnavailable) as caught:
        postgres_binaries(missing)
    message = str(caught.value)
    assert str(missing) in message
    assert "initdb" in message and "psql" in message
    assert "pip install -e '.[lake]'" in message and "make setup" in message
    assert "\n" not in message


def test_bundled_binaries_are_found_without_importing_pgserver() -> None:
    """Importing pgserver creates its lock file and registers its atexit stop."""
    script = (
        "import sys; from marketstream.postgres import postgres_binaries; "
        "print(postgres_binaries()); print('pgserver' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    if "StoreUnavailable" in done.stderr:
        pytest.skip("pgserver is not installed")
    assert done.returncode == 0, done.stderr
    folder, imported = done.stdout.split()
    assert Path(folder).parts[-3:] == ("pgserver", "pginstall", "bin")
    assert (Path(folder) / "postgres").is_file()
    assert imported == "False"


def test_who_runs_postgres() -> None:
    assert run_as({}, euid=1000) is None  # not root: this process's own user
    nobody = run_as({}, euid=0)
    assert nobody is not None and nobody.name == "nobody" and nobody.uid != 0
    assert run_as({"MARKET_PG_RUN_AS": str(nobody.uid)}, euid=0) == nobody
    with pytest.raises(SettingsError, match="MARKET_PG_RUN_AS=no-such-user-x"):
        run_as({"MARKET_PG_RUN_AS": "no-such-user-x"}, euid=0)
    with pytest.raises(SettingsError, match="is root"):
        run_as({"MARKET_PG_RUN_AS": "root"}, euid=0)


def test_blocked_folder_is_the_first_one_a_user_cannot_enter(tmp_path: Path) -> None:
    """pytest's own base folder is 0700: ``nobody`` cannot reach anything below it."""
    nobody = run_as({}, euid=0)
    assert nobody is not None
    assert blocked_folder(tmp_path, os.getuid(), os.getgid()) is None
    assert blocked_folder(Path(tempfile.gettempdir()), nobody.uid, nobody.gid) is None
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    blocked = blocked_folder(private / "pg", nobody.uid, nobody.gid)
    assert blocked is not None and blocked in (private / "pg").parents
    assert not os.stat(blocked).st_mode & 0o001


def test_server_listens_on_its_host_with_the_socket_in_the_data_dir() -> None:
    short = server_settings(Path("/srv/pg"), "127.0.0.1", 5433)
    assert short[:2] == ["listen_addresses=127.0.0.1", "port=5433"]
    assert 'unix_socket_directories="/srv/pg"' in short
    deep = Path("/tmp") / ("d" * 100)
    assert "unix_socket_directories=" in server_settings(deep, "127.0.0.1", 5433)
