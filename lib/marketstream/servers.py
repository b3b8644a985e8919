"""One lifecycle for the local servers the kit starts: claim an address, start, wait, stop.

Why one module: the Kafka node (:mod:`marketstream.broker.node`) and the kit's
PostgreSQL (:mod:`marketstream.postgres`) each carried their own child registry,
wait-until-ready loop, stop-by-pid, log tail and "may a server listen here"
rule, and a third server (the object store, :mod:`marketstream.objectstore`)
would have been a third copy. The steps, once:

* :func:`claim_address`: the host must be an address of this machine and the
  port free (``None`` or 0: one the OS picks). A server is never started for a
  host elsewhere: the error says so instead of a bind failure deep in its log.
* :func:`start_server`: the server runs as our child in its own session
  (Ctrl-C reaches the kit, which stops it in order), output appended to its log,
  its pid written into its run dir so a later command (``status``, ``down``)
  finds it, and a parent-death signal so it dies with the process that started
  it, unless it is kept (``keep``: a ``... up`` command that ends right after).
* :func:`wait_ready`: poll a probe until the server answers; if it exits or
  does not answer in time it is stopped and the error quotes its log's tail
  since this start (the lines that say why, not an earlier run's).
* :func:`running_pid`: a pid file is believed only while that process's
  command line carries the server's marker (its run dir), so a stale file or a
  recycled pid never names a stranger; a process whose pid file was lost is
  found by the marker.
* :func:`stop_pid`: the server's stop signal (SIGTERM; PostgreSQL's fast
  shutdown is SIGINT), a grace period, then SIGKILL for it and whatever of its
  family is left. Our own child is reaped through its ``Popen`` (waiting on a
  bare pid would leave a zombie, or reap a recycled pid later).

Measured here (2 shared cores): a probe loop polls every 50 ms, which costs
nothing beside a JVM's 1.3-1.9 s start and keeps the added wait under 5 % of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from marketstream.processes import (
    KILL_WAIT_S,
    Child,
    alive,
    can_bind,
    free_port,
    is_local_address,
    process_family,
    start_child,
    wait_exit,
)

__all__ = [
    "ServerSpec",
    "alive",
    "child_of",
    "claim_address",
    "log_size",
    "log_tail",
    "read_since",
    "reap",
    "running_pid",
    "start_server",
    "stop_pid",
    "stop_server",
    "wait_ready",
]

log = logging.getLogger(__name__)

#: Between readiness probes and while waiting for a process to go.
POLL_S = 0.05

#: Servers started by this Python process, by pid: only their ``Popen`` may reap them.
_CHILDREN: dict[int, Child] = {}


@dataclass(frozen=True)
class ServerSpec:
    """What the lifecycle needs to know about one kind of server in one run dir."""

    #: For people: "the object store (s3proxy)", "PostgreSQL".
    name: str
    #: Its pid file and (unless told otherwise) its log live here.
    run_dir: Path
    #: A command-line argument only this server of this run dir has (how it is recognised).
    marker: str
    #: What raises on failure (the concern's own error: StoreUnavailable, BrokerError).
    error: type[Exception] = RuntimeError
    #: First signal of a stop: SIGTERM, or SIGINT for PostgreSQL's fast shutdown.
    stop_signal: int = signal.SIGTERM
    #: How long it gets after the stop signal before SIGKILL.
    grace_s: float = 10.0
    log_name: str = "server.log"
    #: Between readiness probes (PostgreSQL: 20 ms, its start takes 30 ms).
    poll_s: float = POLL_S
    #: None: the server keeps its own pid file (PostgreSQL's ``postmaster.pid``).
    pid_name: str | None = "server.pid"
    #: What a refused address's error ends with: the setting to change and how
    #: (a broker's ``set KAFKA_BOOTSTRAP_SERVERS=localhost:{free_port}``); empty: generic.
    #: ``{free_port}`` becomes a port free now, found only when an address is refused
    #: (a spec is built for every status check).
    hint: str = ""

    def fix(self, default: str) -> str:
        """The end of a refused address's error: the hint (its free port filled), or ``default``."""
        if "{free_port}" in self.hint:
            return self.hint.replace("{free_port}", str(free_port()))
        return self.hint or default

    @property
    def log_path(self) -> Path:
        """Its output (appended to by every start)."""
        return self.run_dir / self.log_name

    @property
    def pid_path(self) -> Path | None:
        """Its pid, for another process's ``status`` and ``down`` (None: the server's own)."""
        return None if self.pid_name is None else self.run_dir / self.pid_name

    def forget_pid(self) -> None:
        """Remove the pid file (the server is gone)."""
        if self.pid_path is not None:
            self.pid_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- address


def claim_address(host: str, port: int | None, spec: ServerSpec) -> int:
    """The port the server may listen on at ``host`` (``None``/0: a free one), or raise.

    The rule every local server follows: only an address of this machine, only a
    port no other program holds.
    """
    if not is_local_address(host):
        raise spec.error(
            f"cannot start {spec.name} on {host}: it is not an address of this machine; "
            f"{spec.fix('use 127.0.0.1')}"
        )
    if not port:
        return free_port(host)
    if not can_bind(host, port):
        fix = spec.fix("stop that program, or give another port (0 picks a free one)")
        raise spec.error(
            f"port {port} on {host} is taken by another program, so {spec.name} cannot "
            f"listen there; {fix}"
        )
    return port


# --------------------------------------------------------------------------- logs


def log_size(path: Path) -> int:
    """The log's size now: what :func:`log_tail` reads after, for this start's lines only."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_since(path: Path, since: int = 0, max_bytes: int = 64_000) -> str | None:
    """What was logged after offset ``since`` (at most the last ``max_bytes``); None if
    there is no log."""
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            handle.seek(max(0, size - max_bytes, since if since <= size else 0))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return None


def log_tail(path: Path, since: int = 0, lines: int = 6, max_bytes: int = 64_000) -> str:
    """The last non-empty lines logged since offset ``since``, on one line."""
    text = read_since(path, since, max_bytes)
    if text is None:
        return "(no log)"
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(nothing logged)"


# --------------------------------------------------------------------------- processes


def _is_ours(pid: int, spec: ServerSpec) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and spec.marker in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def reap() -> None:
    """Forget (and reap) servers of ours that have exited."""
    for pid, child in list(_CHILDREN.items()):
        if child.proc.poll() is not None:
            _CHILDREN.pop(pid, None)
            child.close_log()


def child_of(pid: int) -> Child | None:
    """Our handle on the server ``pid`` if this process started it (None otherwise)."""
    return _CHILDREN.get(pid)


def running_pids(spec: ServerSpec) -> list[int]:
    """Every live process carrying the server's marker (pid file or not)."""
    reap()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if spec.marker in (proc.info.get("cmdline") or []) and _is_ours(proc.pid, spec):
            found.append(proc.pid)
    return found


def running_pid(spec: ServerSpec) -> int | None:
    """The server's pid if it runs: its pid file's if that process is still it, else one
    found by its marker (and the pid file written again)."""
    reap()
    if spec.pid_path is not None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(spec.pid_path.read_text(encoding="utf-8").strip())
            if _is_ours(pid, spec):
                return pid
    pids = running_pids(spec)
    if not pids:
        return None
    if spec.pid_path is not None:
        with contextlib.suppress(OSError):
            spec.pid_path.write_text(f"{pids[0]}\n", encoding="utf-8")
    return pids[0]


def start_server(
    spec: ServerSpec,
    cmd: Sequence[str],
    env: Mapping[str, str],
    *,
    keep: bool = False,
    cwd: Path | None = None,
    user: int | None = None,
    group: int | None = None,
) -> Child:
    """Start the server as our child (own session, log appended, pid file written).

    It gets ``spec.stop_signal`` when this process dies, unless ``keep``: then
    it outlives us until :func:`stop_server`. ``cmd`` must carry ``spec.marker``.
    """
    if spec.marker not in cmd:
        raise ValueError(f"the command of {spec.name} lacks its marker {spec.marker!r}")
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    child = start_child(
        spec.name,
        cmd,
        env,
        spec.log_path,
        cwd=cwd or spec.run_dir,
        user=user,
        group=group,
        append=True,
        death_signal=0 if keep else spec.stop_signal,  # 0: prctl clears the request
        stop_grace_s=spec.grace_s,
    )
    _CHILDREN[child.proc.pid] = child
    if spec.pid_path is not None:
        spec.pid_path.write_text(f"{child.proc.pid}\n", encoding="utf-8")
    return child


def wait_ready(
    spec: ServerSpec,
    pid: int,
    probe: Callable[[], bool],
    timeout_s: float,
    *,
    since: int = 0,
    where: str = "",
    explain: Callable[[], str] | None = None,
    full_log: Path | None = None,
) -> None:
    """Poll ``probe`` until it is true; stop the server and raise if it exits or times out.

    ``since`` is the log's size before this start (:func:`log_size`): the error
    quotes only what this start logged. ``where`` names the address for people.
    ``explain`` says why instead of the log's tail (a Kafka broker's reason is in
    its own log, picked out of a JVM's noise), and ``full_log`` is the log to read.
    """
    why_now = explain or (lambda: log_tail(spec.log_path, since))
    full_log = full_log or spec.log_path
    child = _CHILDREN.get(pid)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            exited = child.proc.poll() is not None if child is not None else not alive(pid)
            if exited:
                code = f" with code {child.proc.returncode}" if child is not None else ""
                _CHILDREN.pop(pid, None)
                if child is not None:
                    child.close_log()
                spec.forget_pid()
                raise spec.error(
                    f"{spec.name} exited{code} during start-up: {why_now()}; full log: {full_log}"
                )
            if probe():
                return
            if time.monotonic() > deadline:
                why = why_now()  # before stopping, which logs more
                stop_pid(pid, spec)
                raise spec.error(
                    f"{spec.name} (pid {pid}) did not answer{' at ' + where if where else ''} "
                    f"within {timeout_s:g} s and was stopped (last log lines: {why}); "
                    f"full log: {full_log}"
                )
            time.sleep(spec.poll_s)
    except BaseException:  # KeyboardInterrupt too: never leave a half-started server
        if alive(pid) and _is_ours(pid, spec):
            stop_pid(pid, spec)
        raise


# --------------------------------------------------------------------------- stop


def _kill(procs: Sequence[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def stop_pid(pid: int, spec: ServerSpec) -> None:
    """The stop signal, ``spec.grace_s``, then SIGKILL for the server and its family."""
    child = _CHILDREN.pop(pid, None)
    proc = child.proc if child is not None else None
    family = process_family(pid)  # listed first: once it exits, its children are orphans
    try:
        try:
            os.kill(pid, spec.stop_signal)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise spec.error(
                f"cannot stop {spec.name} (pid {pid}): it runs as another user; stop it as "
                f"that user or as root"
            ) from None
        if not wait_exit(pid, spec.grace_s, proc):
            log.warning(
                "%s (pid %s) ignored %s for %g s: killed",
                spec.name,
                pid,
                signal.Signals(spec.stop_signal).name,
                spec.grace_s,
            )
            _kill(family)
            wait_exit(pid, KILL_WAIT_S, proc)
        rest = [p for p in family if p.pid != pid]
        deadline = time.monotonic() + KILL_WAIT_S
        while any(alive(p.pid) and p.is_running() for p in rest):
            if time.monotonic() > deadline:
                _kill(rest)
                break
            time.sleep(POLL_S)
    finally:
        if child is not None:
            child.close_log()


def stop_server(spec: ServerSpec) -> bool:
    """Stop the server of this run dir (and any stray process with its marker); True if
    one was running. Its pid file is removed."""
    pids = set(running_pids(spec))
    pid = running_pid(spec)
    if pid is not None:
        pids.add(pid)
    for found in sorted(pids):
        stop_pid(found, spec)
    spec.forget_pid()
    return bool(pids)
