"""A local Kafka cluster: N KRaft nodes (3 by default), each a combined broker and controller.

Why: one broker cannot show what replication buys. On three nodes a topic with
replication factor 3 and ``min.insync.replicas=2`` keeps every acknowledged tick
through the loss of any one node, the active controller included, and producer
and consumer carry on after a short stall (``tests/integration/cluster``).
``marketstream broker up --nodes 3`` starts one without Docker, from the same
Maven jars as the single broker, reusing :mod:`.node` for the storage format,
the JVM launch, the pid files and the readiness check.

Layout: a *cluster dir* (default ``<kafka_home>/run/cluster-<P>``, P the first
bootstrap port) holds ``cluster.json`` (the cluster id and, per node, its id,
broker port, controller port and metadata directory id) and one run dir per
node, ``node-<id>/``, with the files of a single broker (see :mod:`marketstream.broker`).
Each JVM carries ``-Dmarketstream.run_dir=<its node dir>``, so ``broker down``
finds and stops every node by its run dir, pid file or not.

What each node is told (:func:`render_node_properties`):

* broker ports are consecutive from the configured one (P, P+1, P+2); controller
  ports are picked free once and kept in ``cluster.json``, because a dynamic
  quorum records its voters' endpoints in the metadata log;
* every node's storage is formatted with the same cluster id and
  ``--initial-controllers 1@host:c1:<dir id>,2@...`` (a dynamic quorum of all
  nodes, KIP-853), and ``controller.quorum.bootstrap.servers`` lists them all;
* internal topics get 3 replicas, min ISR 2 (consumer offsets, transactions,
  share groups), and so do topics Kafka auto-creates;
* failover: ``broker.session.timeout.ms=3000`` and ``broker.heartbeat.interval.ms=500``
  (Kafka: 9000 and 2000). A SIGKILLed node is fenced, and so dropped from every
  ISR (which is what unblocks ``acks=all``), once its session expires, so the
  session timeout is most of the stall: a probe here stalled partitions ~11 s
  with Kafka's defaults and ~5 s with these. The raft timeouts stay at Kafka's
  defaults: with ``controller.quorum.fetch.timeout.ms=1000`` and
  ``controller.quorum.election.timeout.ms=500`` a controller kill stalled 4.1 s
  instead of 5.6 s, but the loaded 2-core machine then also held a needless
  election (a third epoch while the leader was alive).

Measured on this project's 2-core machine (Kafka 4.4.0, ``-Xmx384m`` per node):
three nodes start in 15.5 s on a quiet machine (storage format included; 24-37 s
through the CLI at a load average of 2-9), and use 305-330 MiB RSS each when
idle, 340-460 MiB after the failover test's 110,000 ticks; ``stop_cluster``
takes 6 s (all nodes at once). A killed node restarts in 9 s (24-38 s under
load; ~4.5 s of it recovering its logs after the SIGKILL). With a producer at
~1,000 ticks/s (``tests/integration/cluster/test_failover.py``, three runs): a
plain broker SIGKILLed stops acknowledgements for 3.0-3.4 s, the active
controller for 5.6-7.2 s (a new quorum leader is elected first, then the dead
broker's session expires).
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from marketstream import servers
from marketstream.addresses import join_host_port
from marketstream.broker.config import (
    is_valid_cluster_id,
    listener_hosts,
    new_cluster_id,
    parse_properties,
    render_server_properties,
)
from marketstream.broker.jars import file_lock
from marketstream.broker.node import (
    JVM_OPTS,
    BrokerStatus,
    _log_file,
    _managed_pid,
    _prepare,
    _spawn,
    _wait_ready,
    broker_status,
    running_broker_pids,
    server_spec,
    stop_broker,
)
from marketstream.clients import DEFAULT_CLIENTS, KafkaClients, _quiet_kafka_logging
from marketstream.errors import BrokerError
from marketstream.processes import can_bind, free_port, is_local_address
from marketstream.settings import Settings

log = logging.getLogger(__name__)

#: Nodes a local cluster may have (each is a JVM of ~400 MiB).
MAX_NODES = 9
#: Written into the cluster dir: what the nodes were formatted with.
SPEC_FILE = "cluster.json"

#: Broker liveness: a dead node is fenced after the session timeout (see the module docstring).
FAILOVER_PROPERTIES: dict[str, str] = {
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
}

#: Each node's heap: three of them run beside Jupyter, DuckDB and the tests on 2 cores.
CLUSTER_JVM_OPTS: tuple[str, ...] = (
    *(opt for opt in JVM_OPTS if not opt.startswith(("-Xmx", "-Xms"))),
    "-Xmx384m",
    "-Xms192m",
)


# --------------------------------------------------------------------------- the spec (pure)


@dataclass(frozen=True)
class NodeSpec:
    """One node as formatted: its id, broker port, controller port, metadata directory id."""

    node_id: int
    port: int
    controller_port: int
    directory_id: str


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster as formatted (``cluster.json``): its id, the listeners' host, its nodes."""

    cluster_id: str
    host: str
    nodes: tuple[NodeSpec, ...]

    @property
    def advertised_host(self) -> str:
        """The host clients and the other nodes connect to (a wildcard means localhost)."""
        return listener_hosts(self.host)[1]

    @property
    def bootstrap_servers(self) -> str:
        """Every node's broker listener: ``localhost:P,localhost:P+1,...``."""
        return ",".join(join_host_port(self.advertised_host, n.port) for n in self.nodes)

    def node(self, node_id: int) -> NodeSpec:
        """The node with this id."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def to_json(self) -> str:
        """The ``cluster.json`` text."""
        nodes = [
            {
                "node_id": n.node_id,
                "port": n.port,
                "controller_port": n.controller_port,
                "directory_id": n.directory_id,
            }
            for n in self.nodes
        ]
        body = {"cluster_id": self.cluster_id, "host": self.host, "nodes": nodes}
        return json.dumps(body, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ClusterSpec:
        """Read ``cluster.json``; ValueError if it is not one."""
        try:
            data = json.loads(text)
            spec = cls(
                cluster_id=str(data["cluster_id"]),
                host=str(data["host"]),
                nodes=tuple(
                    NodeSpec(
                        int(n["node_id"]),
                        int(n["port"]),
                        int(n["controller_port"]),
                        str(n["directory_id"]),
                    )
                    for n in data["nodes"]
                ),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a cluster description ({type(exc).__name__}: {exc})") from None
        ids = [spec.cluster_id, *(n.directory_id for n in spec.nodes)]
        if not spec.nodes or not all(is_valid_cluster_id(i) for i in ids):
            raise ValueError("not a cluster description (no nodes, or a malformed id)")
        return spec


def new_cluster_spec(
    host: str, base_port: int, controller_ports: Sequence[int], *, cluster_id: str | None = None
) -> ClusterSpec:
    """A new cluster of ``len(controller_ports)`` nodes: ids 1..N, broker ports from base_port.

    The cluster id and the directory ids are random 22-character URL-safe base64
    UUIDs, the shape ``StorageTool random-uuid`` prints (:func:`new_cluster_id`).
    """
    nodes = tuple(
        NodeSpec(i + 1, base_port + i, controller_port, new_cluster_id())
        for i, controller_port in enumerate(controller_ports)
    )
    ports = [n.port for n in nodes] + [n.controller_port for n in nodes]
    if len(set(ports)) != len(ports):
        raise ValueError(f"broker and controller ports must all differ: {ports}")
    return ClusterSpec(cluster_id or new_cluster_id(), host, nodes)


def initial_controllers(spec: ClusterSpec) -> str:
    """``StorageTool format --initial-controllers``: ``1@host:port:<dir id>,2@...``."""
    return ",".join(
        f"{n.node_id}@{join_host_port(spec.advertised_host, n.controller_port)}:{n.directory_id}"
        for n in spec.nodes
    )


def quorum_bootstrap_servers(spec: ClusterSpec) -> str:
    """``controller.quorum.bootstrap.servers``: every node's controller listener."""
    return ",".join(join_host_port(spec.advertised_host, n.controller_port) for n in spec.nodes)


def format_arguments(spec: ClusterSpec) -> list[str]:
    """What replaces ``--standalone -t <id>`` when a node's storage is formatted."""
    return ["-t", spec.cluster_id, "--initial-controllers", initial_controllers(spec)]


def internal_replication(nodes: int) -> tuple[int, int]:
    """(replication factor, min ISR) of internal and auto-created topics on ``nodes`` nodes.

    3 and 2 from three nodes on; with two, 2 and 1, so that one node down still
    leaves the group coordinator and transactions writable.
    """
    factor = min(3, nodes)
    return factor, max(1, min(2, factor - 1))


def render_node_properties(
    spec: ClusterSpec, node_id: int, log_dir: Path, *, num_partitions: int = 3
) -> str:
    """``server.properties`` of one node: the single broker's, made a member of the cluster."""
    node = spec.node(node_id)
    props = parse_properties(
        render_server_properties(
            spec.host, node.port, node.controller_port, log_dir, num_partitions=num_partitions
        )
    )
    factor, min_isr = internal_replication(len(spec.nodes))
    props.update(
        {
            "node.id": str(node_id),
            "controller.quorum.bootstrap.servers": quorum_bootstrap_servers(spec),
            "offsets.topic.replication.factor": str(factor),
            "transaction.state.log.replication.factor": str(factor),
            "transaction.state.log.min.isr": str(min_isr),
            "share.coordinator.state.topic.replication.factor": str(factor),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "default.replication.factor": str(factor),
            "min.insync.replicas": str(min_isr),
            **FAILOVER_PROPERTIES,
        }
    )
    lines = [
        f"# Generated by marketstream.broker.cluster: node {node_id} of {len(spec.nodes)} "
        f"of cluster {spec.cluster_id}; rewritten on every start."
    ]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- status


@dataclass
class NodeStatus:
    """One node of a local cluster, as found now."""

    node_id: int
    port: int
    controller_port: int | None
    pid: int | None  # our live JVM for this node's run dir
    reachable: bool  # it answers a Kafka metadata request
    active_controller: bool  # it leads the metadata quorum
    run_dir: Path
    log_file: Path | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``marketstream broker status --json``)."""
        return {
            "node_id": self.node_id,
            "port": self.port,
            "controller_port": self.controller_port,
            "pid": self.pid,
            "reachable": self.reachable,
            "active_controller": self.active_controller,
            "run_dir": str(self.run_dir),
            "log_file": str(self.log_file) if self.log_file else None,
        }


@dataclass
class ClusterStatus:
    """A local cluster's nodes, which answer, and which is the active controller."""

    bootstrap_servers: str
    cluster_dir: Path
    cluster_id: str | None
    nodes: list[NodeStatus] = field(default_factory=list)
    controller_id: int | None = None

    @property
    def managed(self) -> bool:
        """True if any node's JVM (started by marketstream) is running."""
        return any(n.pid is not None for n in self.nodes)

    @property
    def reachable(self) -> bool:
        """True if any node answers."""
        return any(n.reachable for n in self.nodes)

    @property
    def all_up(self) -> bool:
        """True if there are nodes and every one answers."""
        return bool(self.nodes) and all(n.reachable for n in self.nodes)

    def describe(self) -> str:
        """A header line and a line per node, for ``marketstream broker status``."""
        if not self.nodes:
            return f"no local Kafka cluster in {self.cluster_dir}"
        up = sum(n.reachable for n in self.nodes)
        lines = [
            f"Kafka cluster {self.cluster_id} at {self.bootstrap_servers}: {up} of "
            f"{len(self.nodes)} nodes up (cluster dir {self.cluster_dir})"
        ]
        for n in self.nodes:
            state = "up" if n.reachable else ("starting or stuck" if n.pid else "down")
            role = ", active controller" if n.active_controller else ""
            pid = f"pid {n.pid}" if n.pid else "no process"
            lines.append(f"  node {n.node_id}: port {n.port}, {pid}, {state}{role}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``marketstream broker status --json``)."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "cluster_dir": str(self.cluster_dir),
            "cluster_id": self.cluster_id,
            "controller_id": self.controller_id,
            "nodes": [n.to_dict() for n in self.nodes],
        }


def broker_status_dict(status: BrokerStatus) -> dict[str, Any]:
    """A single broker's status in the shape of :meth:`ClusterStatus.to_dict` (one node)."""
    node = {
        "node_id": 1 if status.managed else None,
        "port": status.port,
        "controller_port": None,
        "pid": status.pid,
        "reachable": status.reachable,
        "active_controller": status.reachable and status.managed,
        "run_dir": str(status.run_dir) if status.run_dir else None,
        "log_file": str(status.log_file) if status.log_file else None,
    }
    return {
        "bootstrap_servers": status.bootstrap_servers,
        "cluster_dir": None,
        "cluster_id": None,
        "controller_id": 1 if node["active_controller"] else None,
        "nodes": [node],
    }


# --------------------------------------------------------------------------- files


def default_cluster_dir(settings: Settings) -> Path:
    """``<kafka_home>/run/cluster-<P>``, P the first bootstrap port."""
    return settings.kafka_home / "run" / f"cluster-{settings.bootstrap_host_port[1]}"


def cluster_settings(settings: Settings, spec: ClusterSpec) -> Settings:
    """The settings with every node as a bootstrap server."""
    return settings.with_(bootstrap_servers=spec.bootstrap_servers)


def _node_dir(cluster_dir: Path, node_id: int) -> Path:
    return cluster_dir / f"node-{node_id}"


def _node_settings(settings: Settings, spec: ClusterSpec, node: NodeSpec) -> Settings:
    return settings.with_(bootstrap_servers=join_host_port(spec.advertised_host, node.port))


def load_spec(cluster_dir: Path) -> ClusterSpec | None:
    """The cluster formatted in cluster_dir, or None if there is none."""
    path = cluster_dir / SPEC_FILE
    if not path.is_file():
        return None
    try:
        return ClusterSpec.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BrokerError(
            f"{path} is unreadable ({exc}); delete {cluster_dir} to start anew"
        ) from None


def _pick_controller_ports(count: int, avoid: set[int]) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in avoid and port not in ports:
            ports.append(port)
    return ports


def _spec_for(settings: Settings, cluster_dir: Path, nodes: int | None) -> ClusterSpec:
    """The cluster of cluster_dir if formatted (it must match), else a new one of ``nodes``
    (default 3) nodes, written down."""
    host, port = settings.bootstrap_host_port
    spec = load_spec(cluster_dir)
    if spec is not None:
        if nodes is not None and len(spec.nodes) != nodes:
            raise BrokerError(
                f"the cluster in {cluster_dir} has {len(spec.nodes)} nodes, not {nodes}; "
                f"use --nodes {len(spec.nodes)}, or stop it and delete {cluster_dir} for a new one"
            )
        if spec.nodes[0].port != port or listener_hosts(spec.host) != listener_hosts(host):
            raise BrokerError(
                f"the cluster in {cluster_dir} listens at {spec.bootstrap_servers}, not at "
                f"{settings.bootstrap_servers}; delete {cluster_dir} for a new one"
            )
        return spec
    nodes = 3 if nodes is None else nodes
    if any(cluster_dir.glob("node-*/data/meta.properties")):
        raise BrokerError(
            f"{cluster_dir} holds formatted nodes but no {SPEC_FILE}; delete it to start anew"
        )
    if port + nodes - 1 > 65535:
        raise BrokerError(f"ports {port}..{port + nodes - 1} do not all exist; pick a lower port")
    broker_ports = set(range(port, port + nodes))
    spec = new_cluster_spec(host, port, _pick_controller_ports(nodes, broker_ports))
    cluster_dir.mkdir(parents=True, exist_ok=True)
    (cluster_dir / SPEC_FILE).write_text(spec.to_json(), encoding="utf-8")
    return spec


def _check_ports(spec: ClusterSpec, node: NodeSpec, cluster_dir: Path) -> None:
    """Both ports of a node about to start must be free (one line naming the fix if not):
    the kit's one address rule (:func:`marketstream.servers.claim_address`)."""
    bind = listener_hosts(spec.host)[0]
    server = server_spec(_node_dir(cluster_dir, node.node_id))
    servers.claim_address(
        bind,
        node.port,
        replace(
            server,
            name=f"node {node.node_id} of the cluster",
            hint="it may be a single broker (`marketstream broker down` stops one of ours); "
            "or start the cluster elsewhere, e.g. KAFKA_BOOTSTRAP_SERVERS=localhost:{free_port}",
        ),
    )
    servers.claim_address(
        bind,
        node.controller_port,
        replace(
            server,
            name=f"the controller of node {node.node_id} (its port kept in "
            f"{cluster_dir / SPEC_FILE})",
            hint=f"stop that program, or delete {cluster_dir} to start a new cluster",
        ),
    )


# --------------------------------------------------------------------------- start


@dataclass
class _Booting:
    node: NodeSpec
    run_dir: Path
    pid: int
    proc: subprocess.Popen[bytes] | None  # ours, or None for a node another call started
    log_offset: int


def _wait_registered(
    settings: Settings, nodes: int, deadline: float, clients: KafkaClients
) -> None:
    """Until every node is registered and unfenced (a node answers before it is unfenced)."""
    last = "no answer"
    while time.monotonic() < deadline:
        with _quiet_kafka_logging(), contextlib.suppress(Exception):
            admin = clients.admin(settings, request_timeout_ms=5000)
            try:
                brokers = admin.describe_cluster().get("brokers") or []
            finally:
                admin.close()
            fenced = sorted(b.get("broker_id") for b in brokers if b.get("is_fenced"))
            unfenced = len(brokers) - len(fenced)
            if unfenced >= nodes:
                return
            last = f"{unfenced} of {nodes} brokers unfenced (fenced: {fenced})"
        time.sleep(0.5)
    raise BrokerError(
        f"the cluster at {settings.bootstrap_servers} did not register all {nodes} brokers "
        f"in time ({last}); see the nodes' server.log"
    )


def start_cluster(
    settings: Settings,
    *,
    nodes: int | None = None,
    cluster_dir: Path | None = None,
    wait_s: float = 180,
    say: Callable[[str], None] | None = None,
    clients: KafkaClients = DEFAULT_CLIENTS,
) -> ClusterStatus:
    """Start every node of a local cluster that is not running, and wait until all answer.

    Node i (1..N) listens at the first bootstrap host on port P+i-1. The first
    call formats the cluster (``cluster.json`` and each node's storage) with
    ``nodes`` nodes (default 3); later calls restart the same cluster (``nodes``
    defaults to its size), so after one node was killed this starts just that
    one again. Nodes already running are left alone; nodes this call
    started are stopped again if the cluster does not come up within ``wait_s``.
    ``say`` hears progress (and a first jar fetch's); without it, logged at INFO.
    """
    tell = say if say is not None else log.info
    if nodes is not None and not 2 <= nodes <= MAX_NODES:
        raise BrokerError(f"a local cluster has 2 to {MAX_NODES} nodes, not {nodes}")
    if settings.secured:
        raise BrokerError(
            "the local cluster speaks PLAINTEXT only; unset the KAFKA_SECURITY_PROTOCOL, "
            "KAFKA_SASL_* and KAFKA_SSL_* settings to start one"
        )
    host, port = settings.bootstrap_host_port
    if not is_local_address(host):
        raise BrokerError(
            f"cannot start a cluster at {host}: it is not an address of this machine; "
            f"set KAFKA_BOOTSTRAP_SERVERS=localhost:{port}"
        )
    cluster_dir = (cluster_dir or default_cluster_dir(settings)).resolve()
    started_at = time.monotonic()
    deadline = started_at + wait_s
    with file_lock(cluster_dir / ".start.lock"):
        spec = _spec_for(settings, cluster_dir, nodes)
        everyone = cluster_settings(settings, spec)
        running = {n.node_id: _managed_pid(_node_dir(cluster_dir, n.node_id)) for n in spec.nodes}
        missing = [n for n in spec.nodes if running[n.node_id] is None]
        for node in missing:  # before starting any: never half a cluster for a taken port
            _check_ports(spec, node, cluster_dir)
        if missing:
            tell(
                f"starting Kafka nodes {', '.join(str(n.node_id) for n in missing)} of "
                f"{len(spec.nodes)} (KRaft, broker+controller each) at {spec.bootstrap_servers}"
            )
        booting = [
            _Booting(n, _node_dir(cluster_dir, n.node_id), pid, None, 0)
            for n in spec.nodes
            if (pid := running[n.node_id]) is not None
        ]
        ours: list[_Booting] = []
        try:
            for node in missing:
                run_dir = _node_dir(cluster_dir, node.node_id)
                cmd = _prepare(
                    _node_settings(settings, spec, node),
                    run_dir,
                    say,
                    properties=render_node_properties(
                        spec, node.node_id, run_dir / "data", num_partitions=settings.partitions
                    ),
                    quorum=format_arguments(spec),
                    jvm_opts=CLUSTER_JVM_OPTS,
                )
                log_file = _log_file(run_dir)
                offset = log_file.stat().st_size if log_file.is_file() else 0
                proc = _spawn(cmd, run_dir)
                ours.append(_Booting(node, run_dir, proc.pid, proc, offset))
            for boot in booting + ours:
                _wait_ready(
                    _node_settings(settings, spec, boot.node),
                    boot.pid,
                    boot.run_dir,
                    max(1.0, deadline - time.monotonic()),
                    boot.proc,
                    boot.log_offset,
                    clients,
                )
            _wait_registered(everyone, len(spec.nodes), deadline, clients)
        except BaseException:  # KeyboardInterrupt too: never leave half-started JVMs
            _stop_all(settings, spec, cluster_dir, [b.node.node_id for b in ours])
            raise
    if missing:
        tell(f"cluster up in {time.monotonic() - started_at:.1f} s ({cluster_dir})")
    return cluster_status(everyone, cluster_dir=cluster_dir, clients=clients)


# --------------------------------------------------------------------------- stop, status


def _stop_all(
    settings: Settings, spec: ClusterSpec | None, cluster_dir: Path, node_ids: Sequence[int]
) -> None:
    """Stop these nodes at once (each SIGTERM, SIGKILL after 30 s), waiting for all."""
    threads = []
    for node_id in node_ids:
        run_dir = _node_dir(cluster_dir, node_id)
        local = (
            _node_settings(settings, spec, spec.node(node_id))
            if spec is not None and any(n.node_id == node_id for n in spec.nodes)
            else settings
        )
        thread = threading.Thread(
            target=stop_broker, args=(local,), kwargs={"run_dir": run_dir}, daemon=True
        )
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()


def _node_ids_in(cluster_dir: Path) -> list[int]:
    """Ids of the node run dirs in cluster_dir (``node-<id>``), spec or not."""
    ids = []
    for path in cluster_dir.glob("node-*"):
        with contextlib.suppress(ValueError):
            ids.append(int(path.name.removeprefix("node-")))
    return sorted(ids)


def stop_cluster(settings: Settings, *, cluster_dir: Path | None = None) -> list[int]:
    """Stop every node of the local cluster (all at once, each cleanly); their ids.

    Nodes are found by their run dirs (``node-<id>/``), so this works without
    knowing how many were started; a cluster not started by us is never touched.
    All nodes are stopped together (6 s here): stopped one by one, the last one
    waited for a controller quorum that was already gone, ignored SIGTERM for the
    whole 30 s and had to be killed.
    """
    cluster_dir = (cluster_dir or default_cluster_dir(settings)).resolve()
    if not cluster_dir.is_dir():
        return []
    try:
        spec = load_spec(cluster_dir)
    except BrokerError:  # an unreadable cluster.json: the run dirs still say what runs
        spec = None
    running = [i for i in _node_ids_in(cluster_dir) if _managed_pid(_node_dir(cluster_dir, i))]
    _stop_all(settings, spec, cluster_dir, running)
    return running


def active_controller(settings: Settings, clients: KafkaClients = DEFAULT_CLIENTS) -> int | None:
    """The node id leading the metadata quorum (the active controller), or None if unknown.

    From ``DescribeQuorum``: in KRaft, the "controller id" of ``DescribeCluster`` and
    of metadata answers is a random broker, not the active controller.
    """
    with _quiet_kafka_logging():
        try:
            admin = clients.admin(settings, request_timeout_ms=5000)
        except Exception:
            return None
        try:
            quorum = admin.describe_metadata_quorum()
            leader = quorum["topics"][0]["partitions"][0]["leader_id"]
            return int(leader) if leader is not None and int(leader) >= 0 else None
        except Exception:
            return None
        finally:
            with contextlib.suppress(Exception):
                admin.close()


def cluster_status(
    settings: Settings,
    *,
    cluster_dir: Path | None = None,
    clients: KafkaClients = DEFAULT_CLIENTS,
) -> ClusterStatus:
    """Every node of the local cluster: its pid, whether it answers, the active controller."""
    cluster_dir = (cluster_dir or default_cluster_dir(settings)).resolve()
    spec = load_spec(cluster_dir)
    if spec is None:
        return ClusterStatus(settings.bootstrap_servers, cluster_dir, None)
    nodes = []
    for node in spec.nodes:
        run_dir = _node_dir(cluster_dir, node.node_id)
        found = broker_status(
            _node_settings(settings, spec, node), run_dir=run_dir, clients=clients
        )
        nodes.append(
            NodeStatus(
                node.node_id,
                node.port,
                node.controller_port,
                found.pid,
                found.reachable,
                False,
                run_dir,
                found.log_file,
            )
        )
    leader = None
    if any(n.reachable for n in nodes):
        leader = active_controller(cluster_settings(settings, spec), clients)
    for n in nodes:
        n.active_controller = n.node_id == leader
    return ClusterStatus(spec.bootstrap_servers, cluster_dir, spec.cluster_id, nodes, leader)


def node_pids(settings: Settings, *, cluster_dir: Path | None = None) -> dict[int, int]:
    """{node id: pid} of the cluster's running nodes (what a failover test kills)."""
    cluster_dir = (cluster_dir or default_cluster_dir(settings)).resolve()
    pids = {}
    for node_id in _node_ids_in(cluster_dir):
        found = running_broker_pids(_node_dir(cluster_dir, node_id))
        if found:
            pids[node_id] = found[0]
    return pids


def free_base_port(nodes: int, host: str = "127.0.0.1", attempts: int = 50) -> int:
    """A port P with P..P+nodes-1 all free on host right now."""
    for _ in range(attempts):
        port = free_port(host)
        if port + nodes - 1 <= 65535 and all(can_bind(host, port + i) for i in range(nodes)):
            return port
    raise BrokerError(f"found no {nodes} consecutive free ports on {host}")


@contextlib.contextmanager
def temporary_cluster(settings: Settings, tmp_dir: Path, nodes: int = 3) -> Iterator[Settings]:
    """Start a cluster on free consecutive ports, storage in ``tmp_dir/cluster-<P>``; yield
    settings whose bootstrap servers are all its nodes; always stop it after. For tests."""
    base = free_base_port(nodes)
    local = settings.with_(bootstrap_servers=f"127.0.0.1:{base}")
    cluster_dir = Path(tmp_dir) / f"cluster-{base}"
    try:
        status = start_cluster(local, nodes=nodes, cluster_dir=cluster_dir)
        yield local.with_(bootstrap_servers=status.bootstrap_servers)
    finally:
        stop_cluster(local, cluster_dir=cluster_dir)
