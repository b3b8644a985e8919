"""One local Kafka broker process: its run dir, pid file, start, stop and status.

Why a detached JVM with a pid file: the broker must outlive the command that
started it (``marketstream broker up``, a notebook cell) and be stoppable by a
later one, so it runs in its own session (Ctrl-C in a notebook or the CLI does
not reach it) and its pid is written into the run dir. Pid files go stale and
pids get recycled, so a pid is only trusted if that process's command line is
``kafka.Kafka`` with ``-Dmarketstream.run_dir=<this run dir>``; a JVM whose
pid file was lost is found by that marker too.

"Up" means a Kafka metadata request is answered, not that the port accepts
connections: the port opens before the broker has a controller, and clients
connecting in between fail. A broker that exits or does not answer within
``wait_s`` (90 s by default) is always stopped, with the lines of its own log
that say why. Stopping is SIGTERM (Kafka's clean shutdown, 2-5 s here) and
SIGKILL after 30 s.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from marketstream import servers
from marketstream.addresses import join_host_port, server_list, split_host_port
from marketstream.broker.config import (
    excerpt,
    listener_hosts,
    new_cluster_id,
    parse_properties,
    render_log4j2_config,
    render_server_properties,
)
from marketstream.broker.jars import fetch_kafka, file_lock, find_java, java_command
from marketstream.broker.security import ListenerSecurity, scram_arguments
from marketstream.clients import DEFAULT_CLIENTS, KafkaClients
from marketstream.errors import BrokerError, SettingsError
from marketstream.processes import can_bind, free_port
from marketstream.settings import Settings

#: Heap kept small on purpose: the demo machine has 2 cores and also runs
#: Jupyter, DuckDB and the producer; Kafka's own script defaults to 1 GB.
#: The GC flags are those of Kafka's ``kafka-run-class.sh``.
JVM_OPTS: tuple[str, ...] = (
    "-Xmx512m",
    "-Xms256m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)

KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
#: On every JVM started here, followed by the resolved run dir: how a broker is found.
RUN_DIR_PROPERTY = "-Dmarketstream.run_dir="
#: Seconds Kafka gets for its clean shutdown before SIGKILL.
STOP_TIMEOUT_S = 30.0

#: Between readiness probes: each asks Kafka for its metadata (up to 2 s).
PROBE_EVERY_S = 0.5


def server_spec(run_dir: Path) -> servers.ServerSpec:
    """The broker of ``run_dir`` for the kit's one server lifecycle (:mod:`marketstream.servers`:
    its pid file, how it is recognised, how it is stopped, what a refused address says).

    The JVM's stdout is ``broker.out``; Kafka's own log is ``server.log``, which is what
    a failed start quotes (:func:`_broker_excerpt`)."""
    run_dir = run_dir.resolve()
    return servers.ServerSpec(
        name="the Kafka broker",
        run_dir=run_dir,
        marker=f"{RUN_DIR_PROPERTY}{run_dir}",
        error=BrokerError,
        grace_s=STOP_TIMEOUT_S,
        log_name="broker.out",
        poll_s=PROBE_EVERY_S,
        pid_name="broker.pid",
        hint="set KAFKA_BOOTSTRAP_SERVERS=localhost:{free_port} for a local broker",
    )


@dataclass
class BrokerStatus:
    """What is known about the broker behind a set of bootstrap servers."""

    bootstrap_servers: str
    reachable: bool  # a Kafka broker answers there
    managed: bool  # started by us (pid file present and process alive)
    pid: int | None
    run_dir: Path | None
    log_file: Path | None
    #: Said when nothing answers: why (:meth:`marketstream.clients.KafkaClients.diagnose`).
    unreachable_line: str = ""

    @property
    def port(self) -> int:
        """The port of the first bootstrap server."""
        return split_host_port(server_list(self.bootstrap_servers)[0])[1]

    def describe(self) -> str:
        """One human line, e.g. for ``marketstream broker status``."""
        where = self.bootstrap_servers
        if self.reachable and self.managed:
            return (
                f"Kafka broker at {where} is up (started by marketstream, pid {self.pid}, "
                f"run dir {self.run_dir}, log {self.log_file})"
            )
        if self.reachable:
            return f"Kafka broker at {where} is up (not started by marketstream)"
        if self.managed:
            return (
                f"Kafka broker process {self.pid} is running but does not answer at {where}; "
                f"see {self.log_file}"
            )
        return self.unreachable_line or f"no Kafka broker answers at {where}"


# --------------------------------------------------------------------------- run dir


def default_run_dir(settings: Settings) -> Path:
    """``<kafka_home>/run/<port>``: one broker (and its data) per port."""
    return settings.kafka_home / "run" / str(settings.bootstrap_host_port[1])


def _log_file(run_dir: Path) -> Path:
    """Kafka's own log (log4j), beside the JVM's stdout (``broker.out``)."""
    return run_dir / "server.log"


def _broker_excerpt(run_dir: Path, log_offset: int = 0) -> str:
    """Why the broker failed: the JVM's own output (bad class path, old Java), then the
    lines Kafka logged since log_offset (this start, not earlier ones)."""
    out = servers.read_since(server_spec(run_dir).log_path) or ""
    logged = servers.read_since(_log_file(run_dir), since=log_offset) or ""
    return excerpt(out + "\n" + logged) or "(no log output)"


# --------------------------------------------------------------------------- processes


def running_broker_pids(run_dir: Path) -> list[int]:
    """Pids of every live Kafka JVM started for run_dir (pid file or not)."""
    return servers.running_pids(server_spec(run_dir))


def _managed_pid(run_dir: Path) -> int | None:
    """The pid of our live broker for run_dir: from the pid file if that process is still
    our broker, else found by its command line (and the pid file written again)."""
    return servers.running_pid(server_spec(run_dir))


# --------------------------------------------------------------------------- start


def _controller_port(props_file: Path, host: str, avoid: int) -> int:
    """Keep the controller port of an earlier start if still free, else pick a free one."""
    if props_file.is_file():
        old = parse_properties(props_file.read_text(encoding="utf-8"))
        voters = server_list(old.get("controller.quorum.bootstrap.servers", ""))
        if voters:
            with contextlib.suppress(SettingsError):
                port = split_host_port(voters[0])[1]
                if port != avoid and can_bind(listener_hosts(host)[0], port):
                    return port
    while True:
        port = free_port()
        if port != avoid:
            return port


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds passwords)."""
    path.unlink(missing_ok=True)  # a new inode: an old file's looser mode is not kept
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _argfile_token(arg: str) -> str:
    """One argument of a JVM ``@argfile``, quoted (the file's own syntax, not a shell's)."""
    if "'" in arg or "\\" in arg or "\n" in arg:
        raise BrokerError("a StorageTool argument has a quote, backslash or newline")
    return f"'{arg}'"


def _format_storage(
    java: str,
    libs: Path,
    run_dir: Path,
    props_file: Path,
    quorum: Sequence[str] = (),
    *,
    scram: Sequence[str] = (),
    secrets: Sequence[str] = (),
) -> None:
    """Run ``StorageTool format --standalone`` once per data dir (meta.properties = done).

    ``quorum`` replaces ``--standalone -t <new id>`` for a node of a cluster
    (``-t <cluster id> --initial-controllers ...``, see :mod:`.cluster`).
    ``scram`` are ``--add-scram`` arguments (:func:`scram_arguments`): they hold
    passwords, so the main class and its arguments go into a private JVM
    ``@argfile``, deleted right after, and ``ps`` shows only its path;
    ``secrets`` are blanked out of the tool's output before it is quoted in an error.
    """
    data = run_dir / "data"
    if (data / "meta.properties").is_file():
        return
    start = quorum or ("--standalone", "-t", new_cluster_id())
    args = ["format", *start, "-c", str(props_file), *scram]
    extra = [f"-Dlog4j2.configurationFile={run_dir / 'log4j2.properties'}"]
    argfile = run_dir / ".format.args"
    if scram:
        _write_private(argfile, "\n".join(_argfile_token(a) for a in [STORAGE_TOOL, *args]))
        cmd = java_command(java, libs, f"@{argfile}", [], extra=extra)  # main class in the file
    else:
        cmd = java_command(java, libs, STORAGE_TOOL, args, extra=extra)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    finally:
        argfile.unlink(missing_ok=True)
    if done.returncode != 0:
        output = done.stdout + done.stderr
        for secret in secrets:
            output = output.replace(secret, "***")
        raise BrokerError(
            f"Kafka's StorageTool could not format {data} (exit {done.returncode}): "
            f"{excerpt(output)}; delete {run_dir} to start from scratch"
        )


def _wait_ready(
    settings: Settings,
    pid: int,
    run_dir: Path,
    wait_s: float,
    proc: subprocess.Popen[bytes] | None,
    log_offset: int,
    clients: KafkaClients,
) -> None:
    """Block until the broker answers; raise (after stopping it) if it dies or times out
    (:func:`marketstream.servers.wait_ready`, quoting Kafka's own log)."""
    servers.wait_ready(
        server_spec(run_dir),
        pid,
        lambda: clients.reachable(settings, timeout_s=2.0),
        wait_s,
        where=settings.bootstrap_servers,
        explain=lambda: _broker_excerpt(run_dir, log_offset),
        full_log=_log_file(run_dir),
    )


def _write_keystore(run_dir: Path, security: ListenerSecurity) -> Path:
    """The PEM keystore Kafka reads: the listener's key, then its certificate chain."""
    assert security.keyfile is not None and security.certfile is not None
    keystore = run_dir / "client-listener.keystore.pem"
    try:
        key = security.keyfile.read_text(encoding="ascii")
        chain = security.certfile.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerError(f"cannot read the listener's key or certificate: {exc}") from None
    if "BEGIN PRIVATE KEY" not in key and "BEGIN ENCRYPTED PRIVATE KEY" not in key:
        raise BrokerError(
            f"{security.keyfile} is not a PKCS#8 PEM key, which Kafka's PEM keystore needs; "
            f"convert it: openssl pkcs8 -topk8 -nocrypt -in {security.keyfile}"
        )
    _write_private(keystore, key.rstrip() + "\n" + chain.strip() + "\n")
    return keystore


def _internal_port(avoid: Sequence[int]) -> int:
    """A free port on 127.0.0.1 for the INTERNAL listener, none of ``avoid``."""
    while True:
        port = free_port()
        if port not in avoid:
            return port


def _prepare(
    settings: Settings,
    run_dir: Path,
    say: Callable[[str], None] | None,
    security: ListenerSecurity | None = None,
    *,
    properties: str | None = None,
    quorum: Sequence[str] = (),
    jvm_opts: Sequence[str] = JVM_OPTS,
) -> list[str]:
    """Fetch the jars, write the configs, format the storage once; return the JVM command.

    With ``security``, ``server.properties`` holds passwords (JAAS lines), so it
    and the keystore are written readable by their owner only. A node of a
    cluster (:mod:`.cluster`) brings its own ``properties``, the ``quorum``
    arguments of its storage format and its ``jvm_opts``.
    """
    host, port = settings.bootstrap_host_port
    java = find_java()
    libs = fetch_kafka(settings, say=say)
    data = run_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    props_file = run_dir / "server.properties"
    controller_port = _controller_port(props_file, host, port)
    secured: dict[str, object] = {}
    if security is not None:
        secured = {
            "security": security,
            "internal_port": _internal_port((port, controller_port)),
            "keystore": _write_keystore(run_dir, security) if security.ssl else None,
        }
    text = properties
    if text is None:
        text = render_server_properties(
            host, port, controller_port, data, num_partitions=settings.partitions, **secured
        )
    if security is not None:
        _write_private(props_file, text)
    else:
        props_file.write_text(text, encoding="utf-8")
    log_config = run_dir / "log4j2.properties"
    log_config.write_text(render_log4j2_config(_log_file(run_dir)), encoding="utf-8")
    _format_storage(
        java,
        libs,
        run_dir,
        props_file,
        quorum,
        scram=scram_arguments(security) if security is not None else (),
        secrets=security.secrets if security is not None else (),
    )
    return java_command(
        java,
        libs,
        KAFKA_MAIN,
        [str(props_file)],
        extra=[
            *jvm_opts,
            f"-Dlog4j2.configurationFile={log_config}",
            f"-Dkafka.logs.dir={run_dir}",
            f"{RUN_DIR_PROPERTY}{run_dir}",
        ],
    )


def _spawn(cmd: list[str], run_dir: Path) -> subprocess.Popen[bytes]:
    """Start the JVM detached (own session: Ctrl-C in a notebook or CLI must not hit it;
    kept: it outlives its caller until :func:`stop_broker`), output to ``broker.out``
    (this start's only), its pid recorded."""
    spec = server_spec(run_dir)
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    spec.log_path.write_bytes(b"")  # a failed start quotes this start's output
    child = servers.start_server(spec, cmd, os.environ, keep=True, cwd=run_dir)
    return child.proc


def start_broker(
    settings: Settings,
    *,
    run_dir: Path | None = None,
    wait_s: float = 90,
    say: Callable[[str], None] | None = None,
    clients: KafkaClients = DEFAULT_CLIENTS,
    security: ListenerSecurity | None = None,
) -> BrokerStatus:
    """Start a local broker on ``settings.bootstrap_host_port`` and wait until it answers.

    If a broker already answers there, nothing is started. If our broker for
    this run dir is still booting, this waits for it instead of starting a
    second one. The JVM is detached (own session), so it outlives the caller
    until :func:`stop_broker`; a broker that fails to come up is always stopped.
    ``say`` hears the progress of a first jar fetch (see :func:`fetch_kafka`).

    ``security`` secures the client listener (:class:`ListenerSecurity`); the
    settings are then those of a client of that listener (protocol, mechanism,
    user, CA, client certificate), because the readiness probe is such a client.
    SCRAM users are added when the storage is first formatted, so a run dir
    keeps the users it was created with.
    """
    if security is not None:
        mismatch = security.mismatch(settings.security_protocol, settings.sasl_mechanism)
        if mismatch:
            raise BrokerError(f"cannot wait for a {security.protocol} broker: {mismatch}")
    run_dir = (run_dir or default_run_dir(settings)).resolve()
    if clients.reachable(settings):
        return broker_status(settings, run_dir=run_dir, clients=clients)
    host, port = settings.bootstrap_host_port
    with file_lock(run_dir / ".start.lock"):
        pid = _managed_pid(run_dir)
        if pid is not None:  # started by another call and still booting
            _wait_ready(settings, pid, run_dir, wait_s, None, 0, clients)
            return broker_status(settings, run_dir=run_dir, clients=clients)
        # it answers no Kafka request (above), so whatever holds the port is not Kafka
        servers.claim_address(host, port, server_spec(run_dir))
        cmd = _prepare(settings, run_dir, say, security)
        log_offset = servers.log_size(_log_file(run_dir))  # after the format
        proc = _spawn(cmd, run_dir)
        # wait_ready stops a JVM that dies, times out or is interrupted (never half-started)
        _wait_ready(settings, proc.pid, run_dir, wait_s, proc, log_offset, clients)
        return broker_status(settings, run_dir=run_dir, clients=clients)


# --------------------------------------------------------------------------- stop, status


def stop_broker(settings: Settings, *, run_dir: Path | None = None) -> bool:
    """Stop the broker started for run_dir (clean SIGTERM, SIGKILL after 30 s).

    Also stops any stray JVM of that run dir whose pid file was lost. Returns
    True if a broker was stopped; a broker not started by us is never touched.
    """
    run_dir = (run_dir or default_run_dir(settings)).resolve()
    return servers.stop_server(server_spec(run_dir))


def broker_status(
    settings: Settings, *, run_dir: Path | None = None, clients: KafkaClients = DEFAULT_CLIENTS
) -> BrokerStatus:
    """Is a broker answering at the bootstrap servers, and is it one we started?"""
    run_dir = (run_dir or default_run_dir(settings)).resolve()
    pid = _managed_pid(run_dir)
    log_file = _log_file(run_dir)
    problem = clients.diagnose(settings)  # None: a broker answers; else why not, in one line
    return BrokerStatus(
        bootstrap_servers=settings.bootstrap_servers,
        reachable=problem is None,
        managed=pid is not None,
        pid=pid,
        run_dir=run_dir if run_dir.is_dir() else None,
        log_file=log_file if log_file.is_file() else None,
        unreachable_line=problem or "",
    )


@contextlib.contextmanager
def temporary_broker(
    settings: Settings,
    tmp_dir: Path,
    *,
    security: ListenerSecurity | None = None,
    host: str = "127.0.0.1",
) -> Iterator[Settings]:
    """Start a broker on a free port with storage in tmp_dir; yield settings pointing at it
    (settings.with_(bootstrap_servers=f"{host}:{port}")); always stop it after. Used by tests.

    ``security`` secures its client listener (see :func:`start_broker`; ``settings``
    then carry the client's side of it).
    """
    port = free_port()
    local = settings.with_(bootstrap_servers=join_host_port(host, port))
    run_dir = Path(tmp_dir) / f"kafka-{port}"
    try:
        start_broker(local, run_dir=run_dir, security=security)
        yield local
    finally:
        stop_broker(local, run_dir=run_dir)
