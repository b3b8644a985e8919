"""The kit's own local PostgreSQL server (the DuckLake catalog): binaries, start, stop, status.

Why our own lifecycle and not ``pgserver.PostgresServer``: that class listens
on a unix socket only (DuckDB's postgres extension and other tools want a host
and port), shares one server between processes through a reference count on
disk, and stops it from ``atexit``, which a ``kill -9`` skips. Here a server is
run like the kit's Kafka broker: its own data dir, a free or given port on
127.0.0.1, a clean stop, nothing left running, and a parent-death signal so it
dies with the process that started it. Only pgserver's *binaries* are used
(PostgreSQL 16.2 under ``pgserver/pginstall/bin``, from PyPI, so ``make setup``
brings them to a fresh machine without apt), found without importing pgserver;
``bin_dir`` takes any other build (Debian's ``/usr/lib/postgresql/15/bin``).

The data dir holds everything of one server: the cluster (initdb runs once),
its log (``server.log``, appended to, so a crashed server's last words survive
the next start) and its unix socket. The socket is left out when its path would
pass the kernel's 107 bytes (a deep test folder): PostgreSQL refuses to start if
it can create no socket it was asked for, and TCP serves alone. Whether a
server runs is read from ``postmaster.pid``, PostgreSQL's own lock file; its pid
is believed only while that process is a live ``postgres`` postmaster, so a
stale file (a killed server, a recycled pid) never blocks a start: PostgreSQL
checks the file itself (and the shared memory it names) and starts anyway.

Choices, each against PostgreSQL's default:

* ``initdb --auth=trust``: DuckDB needs no password. Safe only because the
  server listens on one loopback address (``listen_addresses`` is ``host``,
  never ``*``): a local user can connect as the superuser, nobody else can.
* ``--no-locale`` (C) with ``--encoding=UTF8``: the machine's locale need not
  be generated (initdb fails on such a ``LANG``, common in containers), and the
  catalog's names and paths sort bytewise anyway.
* ``--data-checksums``: the catalog is the only record of which Parquet files
  make up a table; a torn or rotted page is reported instead of being read. It
  costs initdb 0.1 s once (median of 5: 1.23 s against 1.13 s without) and a
  checksum per 8 kB page read from disk, nothing for a catalog of a few MB.
* ``unix_socket_directories`` = the data dir, not ``/tmp``: two servers with one
  port number (two checkouts, Debian's own server) would fight over
  ``/tmp/.s.PGSQL.5432``, and ``nobody``'s files would litter ``/tmp``.
* ``cluster_name=marketstream``: ``ps`` names the backends
  (``postgres: marketstream: checkpointer``).
* kept on purpose: ``fsync``, ``synchronous_commit``, ``full_page_writes`` and
  initdb's final sync. A commit DuckLake was told about must survive a power
  cut, and the catalog is small: syncing it costs nothing worth saving
  (``initdb --no-sync`` saves 0.15 s once: median 0.98 s against 1.13 s).

Root: PostgreSQL refuses to run as root, and this machine and CI run as root.
Then initdb and postgres run as ``nobody`` (or the user ``MARKET_PG_RUN_AS``
names) with that user's group and no supplementary groups; the data dir is
handed to that user, and the folders above it and the binaries must be
enterable by it, which is checked first, naming the folder (pytest's
``/tmp/pytest-of-root`` is 0700, for one).

Stopping is SIGINT, PostgreSQL's "fast" shutdown (sessions rolled back, a
checkpoint, exit), then SIGKILL of the postmaster and its backends after
``timeout_s``. SIGTERM ("smart") would wait for every client to hang up, which
a DuckDB session in another process may never do; the parent-death signal is
SIGINT for the same reason. Linux sends it when the *thread* that started the
server ends: start it from the main thread, not from a worker.

Measured on this machine (2 shared cores, pgserver's 16.2 run as ``nobody``,
medians of 5 runs; the disk's sync speed varied between rounds): initdb 0.72 to
1.17 s; postgres spawned to accepting connections 0.03 s (polled every 20 ms
with ``pg_isready``); a first start in all 1.0 to 1.5 s (initdb, then 0.25 s to
create the database); a start of an existing cluster 0.04 s; a start on a
running server 0.01 s; a fast stop 0.03 s (0.08 s right after the database was
created: the shutdown checkpoint writes its pages).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from marketstream.errors import SettingsError, StoreUnavailable
from marketstream.processes import (
    Child,
    can_bind,
    free_port,
    is_local_address,
    parent_death_signal,
    process_family,
    start_child,
)

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "marketstream"
DEFAULT_USER = "marketstream"
DEFAULT_HOST = "127.0.0.1"

#: When the kit runs as root: the user PostgreSQL runs as, unless this variable names another.
RUN_AS_VARIABLE = "MARKET_PG_RUN_AS"
DEFAULT_RUN_AS = "nobody"

#: The programs this module runs: a folder without them is not a PostgreSQL install.
PROGRAMS = ("initdb", "postgres", "psql", "pg_isready")
INSTALL_HINT = "pip install -e '.[lake]' (or make setup) installs them with the pgserver package"

LOG_NAME = "server.log"
PID_NAME = "postmaster.pid"
CLUSTER_NAME = "marketstream"
#: Every choice is explained in the module docstring.
INITDB_ARGS = (
    "--auth=trust",
    "--encoding=UTF8",
    "--no-locale",
    "--data-checksums",
    "--no-instructions",
)
#: A unix socket's path holds 108 bytes with its NUL; PostgreSQL refuses longer ones.
SOCKET_PATH_MAX = 107

#: initdb takes 0.7-1.2 s here; the limit is only reached when something hangs.
INITDB_TIMEOUT_S = 120.0
#: Start to ready takes 0.03 s here; crash recovery after a kill replays the WAL
#: first. Only a server that is stuck reaches this.
READY_TIMEOUT_S = 60.0
#: After SIGKILL: how long the kernel gets to end the processes.
KILL_WAIT_S = 10.0
#: One psql or pg_isready call (each takes 10-20 ms here).
CLIENT_TIMEOUT_S = 30.0
#: Between readiness probes: a pg_isready costs ~5 ms; ready comes ~30 ms after the spawn.
POLL_S = 0.02

#: Creates the database unless it exists; ``:'name'`` and ``%I`` quote it, whatever it is.
CREATE_DATABASE_SQL = (
    "SELECT format('CREATE DATABASE %I', :'name')"
    " WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name') \\gexec\n"
)
DATABASE_EXISTS_SQL = "SELECT count(*) FROM pg_database WHERE datname = :'name';\n"

#: Postmasters started by this Python process: only their ``Popen`` may reap them
#: (waiting on a bare pid would leave a zombie, or reap a recycled pid later).
_CHILDREN: dict[int, Child] = {}


# --------------------------------------------------------------------------- binaries


def postgres_binaries(bin_dir: Path | None = None) -> Path:
    """Folder holding initdb/pg_ctl/postgres/psql: ``bin_dir`` if given (e.g. Debian's
    ``/usr/lib/postgresql/15/bin``), else pgserver's bundled ``pginstall/bin``.

    pgserver is located with ``importlib.util.find_spec``, not imported: importing it
    creates its lock file under the user's runtime dir and registers its ``atexit``.
    Raises :class:`StoreUnavailable` naming the fix if neither has the programs.
    """
    if bin_dir is not None:
        folder = Path(bin_dir)
        missing = [name for name in PROGRAMS if not (folder / name).is_file()]
        if missing:
            raise StoreUnavailable(
                f"no PostgreSQL programs in {folder} (missing: {', '.join(missing)}); point "
                f"bin_dir at a PostgreSQL bin folder such as /usr/lib/postgresql/16/bin, or "
                f"leave it out to use pgserver's: {INSTALL_HINT}"
            )
        return folder
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        folder = Path(location) / "pginstall" / "bin"
        if all((folder / name).is_file() for name in PROGRAMS):
            return folder
    why = "has no pginstall/bin" if locations else "is not installed"
    raise StoreUnavailable(
        f"PostgreSQL's programs were not found (the pgserver package {why}); {INSTALL_HINT}"
    )


# --------------------------------------------------------------------------- running as root


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user (and its group) PostgreSQL runs as when the kit runs as root."""

    name: str
    uid: int
    gid: int


def run_as(env: Mapping[str, str] | None = None, euid: int | None = None) -> RunAs | None:
    """Who runs initdb and postgres: None (this process's user) unless that is root; then
    ``nobody`` or the user ``MARKET_PG_RUN_AS`` names (a name or a uid)."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return None
    env = os.environ if env is None else env
    wanted = env.get(RUN_AS_VARIABLE, "").strip() or DEFAULT_RUN_AS
    try:
        entry = pwd.getpwuid(int(wanted)) if wanted.isdigit() else pwd.getpwnam(wanted)
    except KeyError:
        raise SettingsError(
            f"{RUN_AS_VARIABLE}={wanted}: no such user on this machine; name an existing "
            f"unprivileged user (PostgreSQL refuses to run as root), or unset it for "
            f"{DEFAULT_RUN_AS}"
        ) from None
    if entry.pw_uid == 0:
        raise SettingsError(
            f"{RUN_AS_VARIABLE}={wanted} is root, which PostgreSQL refuses to run as; name an "
            f"unprivileged user, or unset it for {DEFAULT_RUN_AS}"
        )
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _permitted(path: Path, uid: int, gid: int, bits: int) -> bool:
    """May uid:gid (no supplementary groups) do ``bits`` (4 r, 2 w, 1 x) on path?"""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid == uid:
        granted = (st.st_mode >> 6) & 7
    elif st.st_gid == gid:
        granted = (st.st_mode >> 3) & 7
    else:
        granted = st.st_mode & 7
    return granted & bits == bits


def blocked_folder(path: Path, uid: int, gid: int) -> Path | None:
    """The first of the folders down to ``path`` (included) that uid:gid cannot enter."""
    path = Path(path).absolute()
    for folder in (*reversed(path.parents), path):
        if not _permitted(folder, uid, gid, 1):
            return folder
    return None


def _check_access(user: RunAs, bins: Path, data_dir: Path) -> None:
    """Can ``user`` reach its data dir and run the binaries? Else say which folder stops it."""
    fix = f"or set {RUN_AS_VARIABLE} to a user who can"
    folder = blocked_folder(data_dir.parent, user.uid, user.gid)
    if folder is not None:
        raise StoreUnavailable(
            f"PostgreSQL runs as {user.name} (the kit runs as root) and {user.name} cannot "
            f"enter {folder}, which holds the data dir {data_dir}; put the data dir where "
            f"{user.name} can reach it, chmod o+x {folder}, {fix}"
        )
    folder = blocked_folder(bins, user.uid, user.gid)
    if folder is not None:
        raise StoreUnavailable(
            f"PostgreSQL runs as {user.name} (the kit runs as root) and {user.name} cannot "
            f"enter {folder}, which holds its programs {bins}; chmod o+x {folder}, {fix}"
        )
    for name in ("initdb", "postgres"):
        if not _permitted(bins / name, user.uid, user.gid, 1):
            raise StoreUnavailable(
                f"{user.name} may not run {bins / name} (PostgreSQL runs as {user.name} "
                f"because the kit runs as root); chmod o+x {bins / name}, {fix}"
            )


def _as(user: RunAs | None) -> dict[str, object]:
    """``subprocess`` arguments that run a child as ``user`` with only its own group."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


# --------------------------------------------------------------------------- the server


def _conninfo_value(value: str) -> str:
    """One libpq keyword value: bare if it can be, else quoted with ' and \\ escaped."""
    if value and not any(c.isspace() or c in "'\\" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class PostgresServer:
    """A running server: where it keeps its data and where it listens."""

    data_dir: Path
    host: str  # "127.0.0.1"
    port: int
    pid: int | None
    user: str = DEFAULT_USER

    def dsn(self, database: str = DEFAULT_DATABASE) -> str:
        """libpq keyword form, what DuckDB's postgres extension takes:
        ``host=127.0.0.1 port=N user=marketstream dbname=marketstream``."""
        parts = {"host": self.host, "port": str(self.port), "user": self.user, "dbname": database}
        return " ".join(f"{key}={_conninfo_value(value)}" for key, value in parts.items())

    @property
    def log_path(self) -> Path:
        """The server's log (PostgreSQL's stderr), inside its data dir."""
        return self.data_dir / LOG_NAME


@dataclass(frozen=True)
class Postmaster:
    """What ``postmaster.pid`` says (PostgreSQL 10+: pid, data dir, start time, port,
    socket dir, listen address, shared memory key, status)."""

    pid: int
    data_dir: str
    port: int
    socket_dir: str = ""
    listen_address: str = ""
    status: str = ""  # "starting", "ready", "stopping", "standby"; "" in an older file


def parse_postmaster_pid(text: str) -> Postmaster | None:
    """The fields of a ``postmaster.pid``'s text; None if it has no pid and port."""
    lines = [line.strip() for line in text.splitlines()]
    lines += [""] * (8 - len(lines))
    try:
        pid, port = int(lines[0]), int(lines[3])
    except ValueError:
        return None
    if pid <= 0:
        return None
    return Postmaster(pid, lines[1], port, lines[4], lines[5], lines[7])


def read_postmaster_pid(data_dir: Path) -> Postmaster | None:
    """The data dir's ``postmaster.pid``, parsed; None if there is none (or it is unreadable)."""
    try:
        text = (Path(data_dir) / PID_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return parse_postmaster_pid(text)


def _alive(pid: int) -> bool:
    """Does pid run (a zombie has ended: it only waits to be reaped)?"""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _is_postmaster(pid: int) -> bool:
    """Is pid a live postgres whose parent is not a postgres (a postmaster, not a backend)?
    Guards against a pid file outliving its server and the pid being given to another."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "postgres":
            return False
        parent = proc.parent()
        return parent is None or parent.name() != "postgres"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _host_of(info: Postmaster) -> str:
    """Where clients reach the server the file describes (a wildcard means loopback)."""
    first = info.listen_address.split(",")[0].strip()
    if first in ("*", "0.0.0.0"):
        return DEFAULT_HOST
    if first == "::":
        return "::1"
    return first or info.socket_dir  # no TCP at all: libpq takes the socket's folder


def _reap() -> None:
    """Forget (and reap) postmasters of ours that have exited."""
    for pid, child in list(_CHILDREN.items()):
        if child.proc.poll() is not None:
            _CHILDREN.pop(pid, None)
            child.close_log()


def postgres_status(data_dir: Path) -> PostgresServer | None:
    """The running server of data_dir (from postmaster.pid; None if none runs)."""
    data_dir = Path(data_dir).resolve()
    _reap()
    info = read_postmaster_pid(data_dir)
    if info is None or not _is_postmaster(info.pid):
        return None
    return PostgresServer(data_dir, _host_of(info), info.port, info.pid)


# --------------------------------------------------------------------------- start


def server_settings(data_dir: Path, host: str, port: int) -> list[str]:
    """The ``-c`` settings postgres starts with (why each: the module docstring)."""
    socket = f"{data_dir}/.s.PGSQL.{port}"
    fits = len(socket.encode()) <= SOCKET_PATH_MAX and '"' not in str(data_dir)
    return [
        f"listen_addresses={host}",
        f"port={port}",
        f'unix_socket_directories="{data_dir}"' if fits else "unix_socket_directories=",
        f"cluster_name={CLUSTER_NAME}",
    ]


def _env() -> dict[str, str]:
    """This environment without libpq's ``PG*`` variables (PGHOST, PGPORT, PGDATA...),
    which would send the clients elsewhere or change what the server reads."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _log_excerpt(path: Path, since: int = 0, lines: int = 6) -> str:
    """The last lines the server logged since offset ``since``, on one line."""
    try:
        with path.open("rb") as handle:
            handle.seek(since if since <= path.stat().st_size else 0)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(nothing logged)"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One start at a time per data dir (two notebooks at once make one server).

    The lock is ``flock`` on the folder itself: a lock file inside would stop
    initdb, which wants an empty folder. Children do not inherit the descriptor.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _initdb(bins: Path, data_dir: Path, user: RunAs | None, say: Callable[[str], None]) -> None:
    """Create the cluster (``INITDB_ARGS``, superuser ``DEFAULT_USER``) in the empty data dir."""
    if any(data_dir.iterdir()):
        raise StoreUnavailable(
            f"{data_dir} is neither empty nor a PostgreSQL data dir (it has no PG_VERSION); "
            f"give start_postgres a new or empty folder"
        )
    if user is not None:
        os.chown(data_dir, user.uid, user.gid)
    say(f"creating a PostgreSQL cluster in {data_dir} (once, about a second)")
    cmd = [str(bins / "initdb"), "-D", str(data_dir), "-U", DEFAULT_USER, *INITDB_ARGS]
    try:
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=_env(),
            cwd=data_dir,
            timeout=INITDB_TIMEOUT_S,
            check=False,
            preexec_fn=parent_death_signal(),
            **_as(user),  # type: ignore[arg-type]
        )
    except subprocess.TimeoutExpired:
        raise StoreUnavailable(
            f"initdb did not finish within {INITDB_TIMEOUT_S:g} s in {data_dir}; delete that "
            f"folder and try again"
        ) from None
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        why = " | ".join(line.strip() for line in output.splitlines()[-6:] if line.strip())
        raise StoreUnavailable(
            f"initdb could not create a PostgreSQL cluster in {data_dir} (exit "
            f"{done.returncode}): {why or '(no output)'}"
        )
    with (data_dir / LOG_NAME).open("a", encoding="utf-8") as handle:
        handle.write(output + "\n")


def _open_log(data_dir: Path, user: RunAs | None) -> tuple[Path, int]:
    """The log file, owned like the rest of the data dir, and its size before this start."""
    path = data_dir / LOG_NAME
    path.touch(mode=0o600, exist_ok=True)
    if user is not None:
        os.chown(path, user.uid, user.gid)
    return path, path.stat().st_size


def _pg_isready(server: PostgresServer, bins: Path) -> bool:
    """Does the server accept connections? (Also true before it would let us log in.)"""
    cmd = [str(bins / "pg_isready"), "-q", "-h", server.host, "-p", str(server.port)]
    cmd += ["-U", server.user, "-d", "postgres", "-t", "2"]
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, env=_env(), timeout=10
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _wait_ready(
    server: PostgresServer, bins: Path, proc: subprocess.Popen[bytes] | None, since: int = 0
) -> bool:
    """Poll until the server accepts connections (True) or exits (False); raise on timeout."""
    assert server.pid is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        exited = proc.poll() is not None if proc is not None else not _is_postmaster(server.pid)
        if exited:
            return False
        if _pg_isready(server, bins):
            return True
        if time.monotonic() > deadline:
            raise StoreUnavailable(
                f"PostgreSQL (pid {server.pid}) did not accept connections at {server.host}:"
                f"{server.port} within {READY_TIMEOUT_S:g} s (last log lines: "
                f"{_log_excerpt(server.log_path, since)}); full log: {server.log_path}"
            )
        time.sleep(POLL_S)


def _psql(
    server: PostgresServer, bins: Path, sql: str, variables: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run sql (from stdin, so ``:'var'`` is quoted by psql) in the ``postgres`` database."""
    cmd = [str(bins / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"]
    cmd += ["-h", server.host, "-p", str(server.port), "-U", server.user, "-d", "postgres"]
    for name, value in variables.items():
        cmd += ["-v", f"{name}={value}"]
    try:
        return subprocess.run(
            cmd,
            input=sql,
            capture_output=True,
            text=True,
            env=_env(),
            timeout=CLIENT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StoreUnavailable(
            f"psql got no answer from PostgreSQL at {server.host}:{server.port} within "
            f"{CLIENT_TIMEOUT_S:g} s; see {server.log_path}"
        ) from None


def _create_database(server: PostgresServer, bins: Path, database: str) -> None:
    """Create ``database`` unless it exists (another process may create it at the same time)."""
    done = _psql(server, bins, CREATE_DATABASE_SQL, {"name": database})
    if done.returncode == 0:
        return
    again = _psql(server, bins, DATABASE_EXISTS_SQL, {"name": database})
    if again.returncode == 0 and again.stdout.strip() == "1":
        return  # created by someone else in between
    raise StoreUnavailable(
        f"could not create the database {database!r} on PostgreSQL at {server.host}:"
        f"{server.port}: {done.stderr.strip() or done.stdout.strip() or '(no output)'}"
    )


def _running(data_dir: Path, host: str, port: int | None, bins: Path) -> PostgresServer | None:
    """The server already running for data_dir, once it accepts connections; None if none
    runs (or it was shutting down and has gone)."""
    server = postgres_status(data_dir)
    if server is None:
        return None
    if host != server.host or (port is not None and port != server.port):
        raise StoreUnavailable(
            f"the PostgreSQL server of {data_dir} already runs at {server.host}:{server.port} "
            f"(pid {server.pid}), not at {host}:{port}; use that address, or stop it first"
        )
    assert server.pid is not None
    child = _CHILDREN.get(server.pid)
    if _wait_ready(server, bins, child.proc if child is not None else None):
        return server
    return None


def _launch(
    data_dir: Path,
    port: int | None,
    host: str,
    bins: Path,
    user: RunAs | None,
    say: Callable[[str], None],
) -> PostgresServer:
    """initdb if needed, start postgres as our child, wait until it accepts connections."""
    if not is_local_address(host):
        raise StoreUnavailable(
            f"cannot start PostgreSQL on {host}: it is not an address of this machine; "
            f"use 127.0.0.1"
        )
    if port is None:
        port = free_port(host)
    elif not can_bind(host, port):
        raise StoreUnavailable(
            f"port {port} on {host} is taken by another program, so PostgreSQL cannot listen "
            f"there; stop that program, or give another port (None picks a free one)"
        )
    if not (data_dir / "PG_VERSION").is_file():
        _initdb(bins, data_dir, user, say)
    elif user is not None and data_dir.stat().st_uid != user.uid:
        raise StoreUnavailable(
            f"{data_dir} belongs to uid {data_dir.stat().st_uid}, but PostgreSQL would run as "
            f"{user.name} (uid {user.uid}); set {RUN_AS_VARIABLE} to its owner, or "
            f"chown -R {user.name} {data_dir}"
        )
    log_path, since = _open_log(data_dir, user)
    cmd = [str(bins / "postgres"), "-D", str(data_dir)]
    for setting in server_settings(data_dir, host, port):
        cmd += ["-c", setting]
    child = start_child(
        "PostgreSQL",
        cmd,
        _env(),
        log_path,
        f"postgresql://{host}:{port}",
        cwd=data_dir,
        user=user.uid if user is not None else None,
        group=user.gid if user is not None else None,
        append=True,
        death_signal=signal.SIGINT,  # fast shutdown: SIGTERM would wait for every client
    )
    pid = child.proc.pid
    _CHILDREN[pid] = child
    server = PostgresServer(data_dir, host, port, pid)
    try:
        ready = _wait_ready(server, bins, child.proc, since)
    except BaseException:  # KeyboardInterrupt too: never leave a half-started server
        _stop_pid(pid, KILL_WAIT_S)
        raise
    if not ready:
        _CHILDREN.pop(pid, None)
        child.close_log()
        raise StoreUnavailable(
            f"PostgreSQL exited with code {child.proc.returncode} during start-up: "
            f"{_log_excerpt(log_path, since)}; full log: {log_path}"
        )
    say(f"PostgreSQL is up at {host}:{port} (pid {pid}, log {log_path})")
    return server


def start_postgres(
    data_dir: Path,
    port: int | None = None,
    *,
    host: str = DEFAULT_HOST,
    bin_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
    database: str = DEFAULT_DATABASE,
) -> PostgresServer:
    """Start the server of data_dir on host:port and wait until it accepts connections.

    The first start runs initdb (``INITDB_ARGS``: trust auth, UTF8, superuser
    ``DEFAULT_USER``). postgres listens on ``host`` only, on ``port`` (None: a free
    one), with its unix socket and log inside data_dir, and is our child: it dies
    with this process (SIGINT) unless :func:`stop_postgres` stops it first.
    ``database`` is created if missing.

    If a server of this data dir already runs (its ``postmaster.pid`` names a live
    postmaster, started by any process), it is returned once it accepts
    connections instead of starting a second; asking it for another host or port
    raises. A stale ``postmaster.pid`` does not stop a start. Raises
    :class:`StoreUnavailable` when ``port`` is taken by another program (naming
    it), when a run-as user cannot reach a folder (naming it), or when the server
    exits or does not answer in time (quoting its log).
    """
    speak = say or (lambda _line: None)
    data_dir = Path(data_dir).resolve()
    bins = postgres_binaries(bin_dir)
    user = run_as()
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _check_access(user, bins, data_dir)
    with _locked(data_dir):
        server = _running(data_dir, host, port, bins)
        if server is None:
            server = _launch(data_dir, port, host, bins, user, speak)
        _create_database(server, bins, database)
        return server


# --------------------------------------------------------------------------- stop


def _wait_gone(pid: int, timeout_s: float, proc: subprocess.Popen[bytes] | None) -> bool:
    """Wait for pid to end (reaping it if it is our child); True if it has."""
    if proc is not None:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout_s
    while _alive(pid):  # not psutil's wait: another process's zombie would hold it forever
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def _kill(procs: Sequence[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _stop_pid(pid: int, timeout_s: float) -> None:
    """Fast shutdown of one postmaster; SIGKILL for it and its backends after timeout_s."""
    child = _CHILDREN.pop(pid, None)
    proc = child.proc if child is not None else None
    family = process_family(pid)  # listed first: once it exits, its backends are orphans
    try:
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise StoreUnavailable(
                f"cannot stop PostgreSQL (pid {pid}): it runs as another user; stop it as "
                f"that user or as root"
            ) from None
        if not _wait_gone(pid, timeout_s, proc):
            log.warning("PostgreSQL pid %s ignored fast shutdown for %g s: killed", pid, timeout_s)
            _kill(family)
            _wait_gone(pid, KILL_WAIT_S, proc)
        rest = [p for p in family if p.pid != pid]
        deadline = time.monotonic() + KILL_WAIT_S
        while any(_alive(p.pid) and p.is_running() for p in rest):
            if time.monotonic() > deadline:
                _kill(rest)
                break
            time.sleep(POLL_S)
    finally:
        if child is not None:
            child.close_log()


def _postmasters_of(data_dir: Path) -> list[int]:
    """Live postgres processes started with ``-D <data_dir>`` (their pid file may be gone)."""
    pids = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "postgres" and str(data_dir) in cmdline and _alive(proc.pid):
            pids.append(proc.pid)
    return pids


def stop_postgres(data_dir: Path, timeout_s: float = 20.0) -> bool:
    """Fast shutdown (SIGINT to the postmaster, as ``pg_ctl -m fast``), wait up to
    ``timeout_s``, then kill the process tree if it is still there.

    Also stops a postmaster of data_dir whose ``postmaster.pid`` was lost (found by
    ``-D <data_dir>`` in its command line). True if a server was stopped.
    """
    data_dir = Path(data_dir).resolve()
    pids = set(_postmasters_of(data_dir))
    server = postgres_status(data_dir)
    if server is not None and server.pid is not None:
        pids.add(server.pid)
    for pid in sorted(pids):
        _stop_pid(pid, timeout_s)
    return bool(pids)


@contextlib.contextmanager
def temporary_postgres(folder: Path, *, bin_dir: Path | None = None) -> Iterator[PostgresServer]:
    """Start a server on a free port with its data dir ``folder/postgres``, yield it, and
    always stop it (for tests and the bench)."""
    data_dir = Path(folder) / "postgres"
    try:
        yield start_postgres(data_dir, bin_dir=bin_dir)
    finally:
        stop_postgres(data_dir)
