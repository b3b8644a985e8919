"""Child processes and local ports: start, hand over settings, stop, probe.

Why one module: the broker JVM, the API, Voila (with its kernels), the bench
workers and the soak consumer are all child processes, and each used to carry
its own TERM-then-KILL loop, port check and way of passing settings. The
rules, once:

* a child gets its settings through its environment, built by
  :func:`child_env` from :meth:`Settings.to_env` (``Settings.from_env()`` in
  the child rebuilds them exactly, CLI overrides included);
* a child runs in its own session (Ctrl-C reaches the parent, which stops
  children in order) and, on Linux, gets SIGTERM (PostgreSQL: SIGINT) if the
  parent dies, so even a ``kill -9`` of the parent leaves nothing behind;
* stopping is SIGTERM, a grace period, then SIGKILL, for the process and then
  for whatever of its family (Voila's kernels) is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from marketstream.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a process gets to exit after SIGTERM before it is killed. Kafka's clean
#: shutdown (flush, controller hand-off) takes 2-5 s here; servers take < 1 s.
STOP_GRACE_S = 10.0

#: After SIGKILL: how long to wait for the kernel to reap it.
KILL_WAIT_S = 10.0
#: Between checks while a process we hold no handle on is waited for.
EXIT_POLL_S = 0.05


# --------------------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Does anything accept TCP connections at host:port?"""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def can_bind(host: str, port: int) -> bool:
    """Could a server listen on host:port? (SO_REUSEADDR, as the JVM sets it.)"""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    bound = False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue  # e.g. ::1 for "localhost" on a host without IPv6
                return False
            bound = True
    return bound  # False when no address of host is on this machine


def is_local_address(host: str) -> bool:
    """True if host resolves to an address of this machine (binding port 0 works)."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.bind(address)
                return True
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    return True
    return False


# --------------------------------------------------------------------------- settings


def child_env(
    settings: Settings,
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for a child that reads its settings with ``Settings.from_env()``.

    ``base`` defaults to this process's environment (PATH, JAVA_HOME...); the
    settings' variables replace any there, and ``extra`` comes last.
    """
    env = dict(os.environ if base is None else base)
    env.update(settings.to_env())
    env["PYTHONUNBUFFERED"] = "1"  # children's progress lines arrive as they happen
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- start


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when this process dies.

    libc is loaded here, in the parent, so the child only makes one C call
    between fork and exec (no imports, no Python locks). The kernel clears the
    request when a process changes its user, so it must come after the switch
    to ``user=``: it does, ``subprocess`` runs ``preexec_fn`` after ``setuid``.
    Linux sends it when the *thread* that started the child ends, so a server
    started from a short-lived thread dies with that thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, int(sig))

    return preexec


@dataclass
class Child:
    """A server subprocess with the log file its output goes to."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str
    _log: IO[bytes] | None = None
    #: SIGTERM to SIGKILL, for :meth:`stop`.
    stop_grace_s: float = STOP_GRACE_S
    #: Ready beyond an answering port (None: the port is enough); see ``live.wait_ready``.
    ready: Callable[[], bool] | None = None

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of its output, to say why it stopped."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())

    def stop(self, family: Sequence[psutil.Process] | None = None) -> None:
        """Stop it (and its family) and close its log file."""
        try:
            stop_process_tree(self.proc, family, self.stop_grace_s)
        finally:
            self.close_log()

    def close_log(self) -> None:
        """Close this process's handle on the log (for a child stopped another way)."""
        if self._log is not None:
            self._log.close()


def start_child(
    name: str,
    cmd: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    url: str = "",
    *,
    cwd: Path | None = None,
    user: str | int | None = None,
    group: str | int | None = None,
    append: bool = False,
    death_signal: int = signal.SIGTERM,
    stop_grace_s: float = STOP_GRACE_S,
) -> Child:
    """Start a server in its own session, output to ``log_path``, tied to this process's life.

    ``user``/``group`` (root only) run it as another user with no supplementary
    groups: PostgreSQL refuses to run as root. ``append`` keeps the log of earlier
    runs (a crashed server's last lines). ``death_signal`` is what it gets if this
    process dies: SIGTERM, or e.g. SIGINT for PostgreSQL, whose SIGTERM waits for
    every client to hang up. ``stop_grace_s``: how long :meth:`Child.stop` lets it
    finish after SIGTERM.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab" if append else "wb")
    as_user: dict[str, object] = {}
    if user is not None:
        as_user = {"user": user, "group": group, "extra_groups": []}
    try:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=parent_death_signal(death_signal),  # one C call between fork and exec
            **as_user,  # type: ignore[arg-type]
        )
    except BaseException:
        log.close()
        raise
    return Child(name, proc, log_path, url, log, stop_grace_s)


# --------------------------------------------------------------------------- stop


def alive(pid: int) -> bool:
    """Does pid run (a zombie has ended: it only waits to be reaped)?"""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_exit(pid: int, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    """Wait for pid to exit (reaping it if ``proc`` is our handle on it); True if it is gone.

    Without a handle, polled rather than psutil's ``wait``: another process's child
    that has exited stays a zombie until its parent reaps it, and ``wait`` would
    count it as running until the timeout.
    """
    if proc is not None:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(EXIT_POLL_S)
    return True


def terminate(
    target: int | subprocess.Popen, grace_s: float = STOP_GRACE_S, *, name: str = "process"
) -> bool:
    """SIGTERM, wait ``grace_s``, then SIGKILL; True if it had to be killed.

    ``target`` is a pid or our own ``Popen`` (which is then reaped, leaving no zombie).
    """
    proc = target if isinstance(target, subprocess.Popen) else None
    pid = proc.pid if proc is not None else int(target)  # type: ignore[arg-type]
    if proc is not None and proc.poll() is not None:
        return False
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            wait_exit(pid, 0.1, proc)
            return sig is signal.SIGKILL
        if wait_exit(pid, wait, proc):
            return sig is signal.SIGKILL
        log.warning("%s pid %s ignored %s", name, pid, sig.name)
    return True


def process_family(proc: subprocess.Popen | int) -> list[psutil.Process]:
    """The process and all its descendants (Voila's kernels), as they are now."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_process_tree(
    proc: subprocess.Popen,
    family: Sequence[psutil.Process] | None = None,
    grace_s: float = STOP_GRACE_S,
) -> None:
    """:func:`terminate` a process, then whatever of its family is left.

    ``family`` should be listed before anything is signalled: once the parent
    exits, its orphans are re-parented and can no longer be found from it.
    """
    family = process_family(proc) if family is None else family
    terminate(proc, grace_s)
    rest = [p for p in family if p.pid != proc.pid and p.is_running()]
    for p in rest:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(rest, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
