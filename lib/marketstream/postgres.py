"""The kit's own local PostgreSQL server (the DuckLake catalog): binaries, start, stop, status.

Why our own lifecycle and not ``pgserver.PostgresServer``: that class listens
on a unix socket only (DuckDB's postgres extension and other tools want a host
and port), shares one server between processes through a reference count on
disk, and stops it from ``atexit``, which a ``kill -9`` skips. Here a server is
run like the kit's Kafka broker: its own data dir, a free or given port on
127.0.0.1, a clean stop, nothing left running, and a parent-death signal so it
dies with the process that started it, unless it is to be kept (``keep``,
``marketstream postgres up``: below). Only pgserver's *binaries* are used
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
names) with that user's group and no supplementary groups, and the data dir is
handed to that user. That user must reach the programs and the data dir, and a
checkout under ``/root`` or made by ``mktemp -d`` lies in a 0700 folder it cannot
enter, with its venv (pgserver's programs) and ``.cache/postgres``. What it cannot
reach is put where it can, asking nothing of the user, in root's *shared home*
``/var/lib/marketstream/postgres`` (root's, 0755; the temporary folder if
``/var/lib`` is read-only; refused if it is a symlink or others may write there,
since root runs programs from it):

* ``programs/<key>``: a copy of the install's programs, ``lib`` and ``share`` (and
  ``pgserver.libs``, keeping the wheel's layout, which the programs' RPATH needs):
  19 MB in 741 files (pgserver 0.1.4; its headers and static libraries are left
  out), made once per install, by one process at a time, every file compared with
  its source byte for byte: 0.2 to 1.4 s here (median 0.8 s of 5 fresh installs,
  the disk shared with other work). The key hashes the install's list of files
  with sizes and mtimes (:func:`_manifest`, 4 ms); every start as root lists the
  install and the copy again (9 ms in all) so that a reinstalled pgserver, or a
  copy a temp cleaner thinned, is copied anew. Only root's starts from a folder the
  user cannot enter pay any of this.
* ``data/<key>/cluster``: a data dir that is new (or an empty folder) where that
  user cannot reach it is made here, and its path becomes a symlink to it: the user
  and the kit still name it by that path (``.cache/postgres``; status, stop and
  the lake follow the link). ``/var/lib``, not the temporary folder: the catalog
  must outlive a reboot, as the lake's Parquet files do. A folder that already
  holds data is not moved: the error names the folder to open or the user to use.

Deleting the link deletes the data: ``make clean`` stops the server and removes
``.cache/postgres`` (the link), and the next start or stop as root deletes the slot
no link names (:func:`prune_shared`), as it does a copy of programs whose install
is gone or changed; never one a server runs from. Rejected: ``chmod o+x`` on the
user's folders (a change to their security, and setup asked of them); giving the
server CAP_DAC_READ_SEARCH (Docker does not grant it) or CAP_DAC_OVERRIDE (any
local client, logging in by trust, could then write any file as the server);
hardlinks instead of copies (one file system only, and they share the venv's
inodes: its owner and modes, 0700 under a umask of 077); a data dir only
``chdir``-ed into as root (postgres checks it by its absolute path).

Stopping is SIGINT, PostgreSQL's "fast" shutdown (sessions rolled back, a
checkpoint, exit), then SIGKILL of the postmaster and its backends after
``timeout_s``. SIGTERM ("smart") would wait for every client to hang up, which
a DuckDB session in another process may never do; the parent-death signal is
SIGINT for the same reason. Linux sends it when the *thread* that started the
server ends: start it from the main thread, not from a worker.

A kept server (``start_postgres(keep=True)``, what ``marketstream postgres up``
must ask for) gets no parent-death signal: the command that starts it ends right
after, and the signal made the server shut down as that command exited (the bug:
``up`` printed a DSN for a server already gone). Its own session keeps Ctrl-C and
a closed terminal's SIGHUP from it, so, like ``broker up``'s JVM, it runs until
:func:`stop_postgres` (``marketstream postgres down``, ``make clean``). A server
already running is returned as it is: one that another command started without
``keep`` still ends with that command.

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
import filecmp
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from marketstream import servers
from marketstream.errors import SettingsError, StoreUnavailable
from marketstream.processes import parent_death_signal
from marketstream.servers import ServerSpec, alive, claim_address, log_tail

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "marketstream"
DEFAULT_USER = "marketstream"
DEFAULT_HOST = "127.0.0.1"

#: When the kit runs as root: the user PostgreSQL runs as, unless this variable names another.
RUN_AS_VARIABLE = "MARKET_PG_RUN_AS"
DEFAULT_RUN_AS = "nobody"

#: The programs this module runs: a folder without them is not a PostgreSQL install.
PROGRAMS = ("initdb", "postgres", "psql", "pg_isready")

#: Run as root, where the kit keeps what the run-as user must reach but cannot where it is
#: (a checkout or venv in a folder that user cannot enter): the first of these root can make.
#: Each is (an existing system folder, the folders made below it, root's and 0755). A moved
#: data dir must survive a reboot, so ``/var/lib`` comes first; the temporary folder is for a
#: read-only ``/var/lib``.
SHARED_PLACES: tuple[tuple[Path, tuple[str, ...]], ...] = (
    (Path("/var/lib"), ("marketstream", "postgres")),
    (Path(tempfile.gettempdir()), ("marketstream-postgres",)),
)
#: In a shared home: copies of the programs (``<key>/``) and moved data dirs (``<key>/``).
PROGRAMS_FOLDER = "programs"
DATA_FOLDER = "data"
#: In a copy of the programs: the bin folder it was copied from (to tell when it is stale).
SOURCE_NAME = ".source"
#: In a moved data dir's slot: the path that links to it, and the data dir itself.
ORIGIN_NAME = "origin"
CLUSTER_DIR = "cluster"
#: pgserver's wheel keeps libpq beside the package: its programs' RPATH is
#: ``$ORIGIN/../../../pgserver.libs``, so a copy keeps that layout.
WHEEL_LIBS = "pgserver.libs"
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


def _spec(data_dir: Path, grace_s: float = KILL_WAIT_S) -> ServerSpec:
    """The server of data_dir for :mod:`marketstream.servers`' lifecycle: found by its
    ``-D <data_dir>``, stopped by SIGINT (a fast shutdown, the module docstring says why),
    its pid kept by PostgreSQL itself (``postmaster.pid``)."""
    return ServerSpec(
        name="PostgreSQL",
        run_dir=data_dir,
        marker=str(data_dir),
        error=StoreUnavailable,
        stop_signal=signal.SIGINT,
        grace_s=grace_s,
        log_name=LOG_NAME,
        poll_s=POLL_S,
        pid_name=None,
    )


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
            f"enter {folder}, which holds the data dir {data_dir} (one that holds data is "
            f"not moved); move it where {user.name} can reach it and link to it there, "
            f"chmod o+x {folder}, {fix}"
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


# --------------------------------------------------------------------------- root's shared home


def _root_folder(path: Path) -> Path:
    """``path`` as a folder of root's that anyone may enter and read (0755), made if missing.

    Refuses a symlink, a folder of another user's or one others may write to: root
    runs programs copied here (psql, pg_isready), so nobody else may put anything
    in it. The mode is set, not left to the umask (root's is often 077).
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o755)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise StoreUnavailable(
            f"{path} is not a folder only root can change (a symlink, another user's, or "
            f"writable by others), so the kit will not keep PostgreSQL's programs or data "
            f"there; delete it and try again"
        )
    if stat.S_IMODE(info.st_mode) != 0o755:
        path.chmod(0o755)
    return path


def _shared_home() -> Path:
    """Root's folder for what the run-as user must reach (``SHARED_PLACES``), made if missing."""
    failures = []
    for base, names in SHARED_PLACES:
        if not base.is_dir():
            continue
        folder = base
        try:
            for name in names:
                folder = _root_folder(folder / name)
        except OSError as exc:  # a read-only /var/lib: the next place
            failures.append(f"{folder}: {exc.strerror or exc}")
            continue
        return folder
    raise StoreUnavailable(
        f"nowhere to keep PostgreSQL's programs or data where its user can reach them "
        f"({'; '.join(failures) or 'no such folder'}); set {RUN_AS_VARIABLE} to a user who "
        f"can enter the checkout"
    )


def _shared_homes() -> list[Path]:
    """The shared homes that exist (none is made)."""
    homes = []
    for base, names in SHARED_PLACES:
        folder = base.joinpath(*names)
        if folder.is_dir() and not folder.is_symlink():
            homes.append(folder)
    return homes


# --------------------------------------------------------------------------- a copy of the programs


def _install_parts(bins: Path) -> tuple[Path, list[Path]]:
    """The folder a copy of the install mirrors, and what of it the server needs (relative):
    the programs, the install's ``lib`` (modules such as plpgsql, libpq) and ``share``
    (initdb's catalog, time zones), and pgserver's ``pgserver.libs`` (libpq, found through
    the programs' RPATH ``$ORIGIN/../../../pgserver.libs``). PostgreSQL finds ``lib`` and
    ``share`` relative to its program, so the copy runs wherever it is."""
    prefix = bins.parent
    wheel = prefix.parent.parent
    anchor = wheel if (wheel / WHEEL_LIBS).is_dir() else prefix
    parts = [bins / name for name in PROGRAMS] + [prefix / "lib", prefix / "share"]
    if anchor == wheel:
        parts.append(wheel / WHEEL_LIBS)
    return anchor, [part.relative_to(anchor) for part in parts]


def _manifest(anchor: Path, parts: Sequence[Path]) -> str:
    """One line per file of ``parts`` under anchor: its path, size, mtime and whether it is
    executable, or, for a symlink to a sibling (``libpq.so`` -> ``libpq.so.5.16``), its
    target. Static libraries (``.a``) serve builds only and are left out. A copy whose list
    equals its install's is that install; a reinstalled or upgraded one lists other mtimes.
    (``os.scandir``: one stat per file, 4 ms here for pgserver's 741.)"""
    lines: list[str] = []

    def add(path: str, relative: str, entry: os.DirEntry[str] | None) -> None:
        if entry is not None and entry.is_symlink() and "/" not in (target := os.readlink(path)):
            lines.append(f"{relative}\t->\t{target}")
            return
        if relative.endswith(".a"):
            return
        try:
            info = entry.stat() if entry is not None else os.stat(path)
        except FileNotFoundError:  # a dangling link
            return
        executable = "x" if info.st_mode & 0o111 else "-"
        lines.append(f"{relative}\t{info.st_size}\t{info.st_mtime_ns}\t{executable}")

    def walk(folder: str, relative: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path, f"{relative}/{entry.name}")
            elif not entry.is_dir():  # a symlink to a folder is left out, as by os.walk
                add(entry.path, f"{relative}/{entry.name}", entry)

    for part in parts:
        top = anchor / part
        if top.is_file():
            add(str(top), str(part), None)  # a program: its file, even through a link
        else:
            walk(str(top), str(part))
    return "".join(line + "\n" for line in lines)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _copy_install(anchor: Path, manifest: str, into: Path) -> None:
    """Copy what ``manifest`` lists from anchor into ``into``: folders 0755, files 0755 or
    0644 (root's, whatever the venv's umask was), mtimes kept (the manifest compares them),
    each file compared with its source byte for byte."""
    for line in manifest.splitlines():
        relative, *fields = line.split("\t")
        source, target = anchor / relative, into / relative
        for folder in reversed(target.relative_to(into).parents[:-1]):
            with contextlib.suppress(FileExistsError):
                (into / folder).mkdir(mode=0o755)
            (into / folder).chmod(0o755)
        if fields[0] == "->":
            os.symlink(fields[1], target)
            continue
        shutil.copy2(source, target)
        target.chmod(0o755 if fields[2] == "x" else 0o644)
        if not filecmp.cmp(source, target, shallow=False):
            raise StoreUnavailable(f"copying {source} to {target} gave a different file")


def _discard(folder: Path) -> None:
    """Delete a folder, renaming it first so that no half-deleted one is ever seen."""
    trash = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _runs_from(folder: Path) -> bool:
    """Does a process run a program inside folder?"""
    inside = f"{folder}/"
    for proc in psutil.process_iter(["exe"]):
        if (proc.info.get("exe") or "").startswith(inside):
            return True
    return False


def _prune_programs(programs: Path) -> list[Path]:
    """Delete (with the folder locked) copies whose install is gone or changed, and no
    process runs from, and copies left half done."""
    removed = []
    for copy in sorted(programs.iterdir()):
        if copy.name.startswith("."):  # a copy or a deletion cut short; the lock is ours
            shutil.rmtree(copy, ignore_errors=True)
            removed.append(copy)
            continue
        try:
            bins = Path((copy / SOURCE_NAME).read_text(encoding="utf-8").strip())
        except OSError:
            bins = None
        installed = bins is not None and all((bins / name).is_file() for name in PROGRAMS)
        if installed and _key(_manifest(*_install_parts(bins))) == copy.name:
            continue
        if not _runs_from(copy):
            _discard(copy)
            removed.append(copy)
    return removed


def stage_programs(bins: Path, say: Callable[[str], None] | None = None) -> Path:
    """A copy of the install of ``bins`` that any user can run; its bin folder.

    For the kit run as root when the run-as user cannot reach ``bins`` (a venv in a
    0700 folder). The copy is kept in the shared home's ``programs/<key>``, the key
    being the hash of :func:`_manifest`: made once per install (by one process at a
    time), checked against the install's list on every use, replaced when it no longer
    matches, and deleted by :func:`prune_shared` once its install is gone or changed.
    """
    bins = Path(bins).absolute()
    anchor, parts = _install_parts(bins)
    manifest = _manifest(anchor, parts)
    programs = _root_folder(_shared_home() / PROGRAMS_FOLDER)
    copy = programs / _key(manifest)
    copied_bins = copy / bins.relative_to(anchor)
    if copy.is_dir() and _manifest(copy, parts) == manifest:
        return copied_bins
    with _locked(programs):
        if copy.is_dir() and _manifest(copy, parts) == manifest:
            return copied_bins  # made by another process meanwhile
        (say or log.info)(f"copying PostgreSQL's programs to {copy} (once per install)")
        work = programs / f".{copy.name}.{os.getpid()}.new"
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.mkdir(mode=0o755)
            work.chmod(0o755)
            _copy_install(anchor, manifest, work)
            (work / SOURCE_NAME).write_text(f"{bins}\n", encoding="utf-8")
            if copy.exists():  # damaged (a file deleted by a temp cleaner): replaced
                _discard(copy)
            os.rename(work, copy)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _prune_programs(programs)
    return copied_bins


def _can_run(bins: Path, user: RunAs) -> bool:
    """May user reach bins and run initdb and postgres there?"""
    if blocked_folder(bins, user.uid, user.gid) is not None:
        return False
    return all(_permitted(bins / name, user.uid, user.gid, 1) for name in ("initdb", "postgres"))


# --------------------------------------------------------------------------- a moved data dir


def _slot_of(link: Path) -> Path:
    """The data dir of the path ``link`` in the shared home: ``data/<key>/cluster``, the key
    hashing the path (the shared home and its ``data`` are made if missing)."""
    data = _root_folder(_shared_home() / DATA_FOLDER)
    return data / _key(str(link)) / CLUSTER_DIR


def _links_to(link: Path, cluster: Path) -> bool:
    """Is link a symlink to cluster (which need not exist)?"""
    return link.is_symlink() and os.path.realpath(link) == os.path.realpath(cluster)


def _prune_data(data: Path) -> list[Path]:
    """Delete (with the folder locked) slots whose link is gone and whose server is not
    running: ``make clean`` deleted ``.cache/postgres``, or the checkout was deleted."""
    removed = []
    for slot in sorted(data.iterdir()):
        cluster = slot / CLUSTER_DIR
        if not slot.name.startswith("."):
            try:
                origin = Path((slot / ORIGIN_NAME).read_text(encoding="utf-8").strip())
            except OSError:
                origin = None
            if origin is not None and _links_to(origin, cluster):
                continue
            if postgres_status(cluster) is not None or _postmasters_of(cluster.resolve()):
                continue
        _discard(slot)
        removed.append(slot)
    return removed


def _move_data_dir(link: Path, user: RunAs, say: Callable[[str], None]) -> Path:
    """Make ``link`` a symlink to a data dir in the shared home, where ``user`` can reach it;
    return that data dir. A slot left by an earlier data dir of this name whose link was
    deleted (``make clean``) is deleted first: deleting the link deleted that data."""
    cluster = _slot_of(link)
    slot = cluster.parent
    with _locked(slot.parent):
        if not _links_to(link, cluster):
            _prune_data(slot.parent)
            if link.is_symlink() or (link.exists() and _holds_data(link)):
                return link.resolve()  # made meanwhile by someone else: used as it is
        _root_folder(slot)
        (slot / ORIGIN_NAME).write_text(f"{link}\n", encoding="utf-8")
        cluster.mkdir(mode=0o700, exist_ok=True)  # initdb hands it to the run-as user
        if not _links_to(link, cluster):
            if link.is_dir():
                link.rmdir()  # empty: _holds_data said so
            link.parent.mkdir(parents=True, exist_ok=True)
            new = link.with_name(f".{link.name}.{os.getpid()}.link")
            new.unlink(missing_ok=True)
            os.symlink(cluster, new)
            os.replace(new, link)
            say(
                f"keeping the PostgreSQL data of {link} in {cluster} ({user.name}, who runs "
                f"it, cannot enter {blocked_folder(link.parent, user.uid, user.gid)}); "
                f"{link} links there"
            )
    return cluster


def _holds_data(path: Path) -> bool:
    """Is path something other than an empty folder?"""
    return not path.is_dir() or any(path.iterdir())


def _data_dir_for(data_dir: Path, user: RunAs, say: Callable[[str], None]) -> Path:
    """Where the server of data_dir keeps its data when it runs as ``user``: data_dir itself
    (symlinks resolved) if user can reach it; else a data dir in the shared home, data_dir
    made a symlink to it (it is new or an empty folder, or already such a symlink). A
    folder already holding data stays where it is (:func:`_check_access` names the fix)."""
    absolute = Path(data_dir).absolute()
    link = absolute.parent.resolve() / absolute.name
    real = link.resolve()
    if blocked_folder(real.parent, user.uid, user.gid) is None:
        return real
    if link.is_symlink():  # ours, its slot deleted (a wiped /var/lib): made again
        return _move_data_dir(link, user, say) if _links_to(link, _slot_of(link)) else real
    if link.exists() and _holds_data(link):
        return real
    return _move_data_dir(link, user, say)


def prune_shared() -> list[Path]:
    """Delete what the kit, run as root, keeps in its shared homes for what is gone: a moved
    data dir whose link was deleted (``make clean``, a deleted checkout) and a copy of the
    programs whose install was removed or changed; never one a server runs from.

    Runs when a copy is made or a data dir is moved, and after every stop as root; tests
    call it after deleting their folders. Returns what it deleted.
    """
    if os.geteuid() != 0:
        return []
    removed = []
    for home in _shared_homes():
        for name, prune in ((DATA_FOLDER, _prune_data), (PROGRAMS_FOLDER, _prune_programs)):
            folder = home / name
            if folder.is_dir() and not folder.is_symlink():
                with _locked(folder):
                    removed += prune(folder)
    return removed


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


def postgres_status(data_dir: Path) -> PostgresServer | None:
    """The running server of data_dir (from postmaster.pid; None if none runs)."""
    data_dir = Path(data_dir).resolve()
    servers.reap()
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
                f"{log_tail(server.log_path, since)}); full log: {server.log_path}"
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
    child = servers.child_of(server.pid)
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
    keep: bool = False,
) -> PostgresServer:
    """initdb if needed, start postgres as our child, wait until it accepts connections.

    ``keep``: no parent-death signal, so the server outlives this process."""
    spec = _spec(data_dir)
    port = claim_address(host, port, spec)
    if not (data_dir / "PG_VERSION").is_file():
        _initdb(bins, data_dir, user, say)
    elif user is not None and data_dir.stat().st_uid != user.uid:
        raise StoreUnavailable(
            f"{data_dir} belongs to uid {data_dir.stat().st_uid}, but PostgreSQL would run as "
            f"{user.name} (uid {user.uid}); set {RUN_AS_VARIABLE} to its owner, or "
            f"chown -R {user.name} {data_dir}"
        )
    trust_own_address(data_dir, host)
    log_path, since = _open_log(data_dir, user)
    cmd = [str(bins / "postgres"), "-D", str(data_dir)]
    for setting in server_settings(data_dir, host, port):
        cmd += ["-c", setting]
    # SIGINT when this process ends: a fast shutdown (SIGTERM would wait for every
    # client); none for a kept server, which outlives us.
    child = servers.start_server(
        spec,
        cmd,
        _env(),
        keep=keep,
        cwd=data_dir,
        user=user.uid if user is not None else None,
        group=user.gid if user is not None else None,
    )
    pid = child.proc.pid
    server = PostgresServer(data_dir, host, port, pid)
    # stopped and named with its log's tail if it exits or hangs, or on Ctrl-C
    servers.wait_ready(
        spec,
        pid,
        lambda: _pg_isready(server, bins),
        READY_TIMEOUT_S,
        since=since,
        where=f"{host}:{port}",
    )
    until = "until `marketstream postgres down`" if keep else "until this process ends"
    say(f"PostgreSQL is up at {host}:{port} (pid {pid}, log {log_path}), {until}")
    return server


def start_postgres(
    data_dir: Path,
    port: int | None = None,
    *,
    host: str = DEFAULT_HOST,
    bin_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
    database: str = DEFAULT_DATABASE,
    keep: bool = False,
) -> PostgresServer:
    """Start the server of data_dir on host:port and wait until it accepts connections.

    The first start runs initdb (``INITDB_ARGS``: trust auth, UTF8, superuser
    ``DEFAULT_USER``). postgres listens on ``host`` only, on ``port`` (None: a free
    one), with its unix socket and log inside data_dir, and is our child: it dies
    with this process (SIGINT) unless :func:`stop_postgres` stops it first, or
    ``keep`` is true (``marketstream postgres up``): then it outlives this process,
    until :func:`stop_postgres`. ``database`` is created if missing.

    Run as root, the server runs as another user (:func:`run_as`); what that user
    cannot reach is made reachable: the programs are copied (:func:`stage_programs`)
    and a new data dir is kept in root's shared home, ``data_dir`` a symlink to it
    (the module docstring says why and what it costs).

    If a server of this data dir already runs (its ``postmaster.pid`` names a live
    postmaster, started by any process), it is returned once it accepts
    connections instead of starting a second; asking it for another host or port
    raises. A stale ``postmaster.pid`` does not stop a start. Raises
    :class:`StoreUnavailable` when ``port`` is taken by another program (naming
    it), when a run-as user cannot reach a folder (naming it), or when the server
    exits or does not answer in time (quoting its log).
    """
    speak = say or (lambda _line: None)
    bins = postgres_binaries(bin_dir)
    user = run_as()
    if user is None:
        data_dir = Path(data_dir).resolve()
    else:
        if not _can_run(bins, user):
            bins = stage_programs(bins, speak)
        data_dir = _data_dir_for(Path(data_dir), user, speak)
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _check_access(user, bins, data_dir)
    with _locked(data_dir):
        server = _running(data_dir, host, port, bins)
        if server is None:
            server = _launch(data_dir, port, host, bins, user, speak, keep)
        _create_database(server, bins, database)
        return server


def trust_own_address(data_dir: Path, host: str) -> bool:
    """Let the server's own host connect on a non-loopback address it listens on, as it
    does on loopback: True if ``pg_hba.conf`` gained that line.

    initdb's ``pg_hba.conf`` trusts loopback only, so a server on a services host's
    address (the hosts test: 10.213.47.1) refused even the kit's ``psql`` creating its
    database, from that same host. A connection from the host's own address comes
    from the host itself; any other machine still needs a line its operator writes.
    """
    if host in ("127.0.0.1", "::1", "localhost"):
        return False
    hba = data_dir / "pg_hba.conf"
    mask = "128" if ":" in host else "32"
    line = f"host all all {host}/{mask} trust"
    text = hba.read_text()
    if line in text.splitlines():
        return False
    hba.write_text(f"{text.rstrip()}\n# the server's own address (marketstream)\n{line}\n")
    return True


# --------------------------------------------------------------------------- stop


def _postmasters_of(data_dir: Path) -> list[int]:
    """Live postgres processes started with ``-D <data_dir>`` (their pid file may be gone)."""
    pids = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "postgres" and str(data_dir) in cmdline and alive(proc.pid):
            pids.append(proc.pid)
    return pids


def stop_postgres(data_dir: Path, timeout_s: float = 20.0) -> bool:
    """Fast shutdown (SIGINT to the postmaster, as ``pg_ctl -m fast``), wait up to
    ``timeout_s``, then kill the process tree if it is still there.

    Also stops a postmaster of data_dir whose ``postmaster.pid`` was lost (found by
    ``-D <data_dir>`` in its command line). True if a server was stopped. Run as
    root, it then deletes what the shared homes keep for what is gone
    (:func:`prune_shared`).
    """
    data_dir = Path(data_dir).resolve()
    pids = set(_postmasters_of(data_dir))
    server = postgres_status(data_dir)
    if server is not None and server.pid is not None:
        pids.add(server.pid)
    for pid in sorted(pids):  # a fast shutdown, then SIGKILL for it and its backends
        servers.stop_pid(pid, _spec(data_dir, timeout_s))
    try:
        prune_shared()
    except (OSError, StoreUnavailable) as exc:  # housekeeping: never fails a stop
        log.warning("could not tidy PostgreSQL's shared folders: %s", exc)
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
