"""What the local broker is told and what its logs say: pure text in, text out, no I/O.

Why a module of its own: ``server.properties``, the log4j2 config, the
cluster id and the reading of Kafka's and Maven's logs are where the broker's
start-up actually went wrong while it was built (a ``--standalone`` format
that needs ``controller.quorum.bootstrap.servers``, not ``voters``; a wildcard
bind address advertised to clients; a 60-line stack trace as the error
message). Keeping them free of files and processes lets every one of those
rules be tested without Java.
"""

from __future__ import annotations

import base64
import re
import uuid
from pathlib import Path

from marketstream.addresses import join_host_port
from marketstream.broker.security import STANDARD_AUTHORIZER, ListenerSecurity

#: Listener names of a broker with a secured client listener (see
#: :func:`secured_listener_properties`).
CLIENT_LISTENER = "CLIENT"
INTERNAL_LISTENER = "INTERNAL"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: A log line that states a cause: an ERROR/FATAL record, an exception, a JVM error.
_CAUSE = re.compile(
    r"(^|\s|\])(ERROR|FATAL)\s|^(Caused by: )?[\w.$]+(Exception|Error)\b(:|$)|^Error: "
)


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (Maven colours its output even with -B)."""
    return _ANSI.sub("", text)


# --------------------------------------------------------------------------- cluster ids


def new_cluster_id() -> str:
    """A random Kafka cluster id: a v4 UUID as 22 URL-safe base64 characters.

    Same shape as ``StorageTool random-uuid`` (and, like Kafka, never starting
    with ``-``, which would read as a command-line option), without paying
    for a JVM start.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def is_valid_cluster_id(value: str) -> bool:
    """True for a 22-character URL-safe base64 string encoding 16 bytes."""
    if len(value) != 22 or not re.fullmatch(r"[A-Za-z0-9_-]{22}", value):
        return False
    try:
        return len(base64.urlsafe_b64decode(value + "==")) == 16
    except ValueError:
        return False


# --------------------------------------------------------------------------- server.properties

#: Partitions of ``__consumer_offsets`` on a broker the kit starts (Kafka's default: 50).
#: The topic is created by the first consumer that looks for its group coordinator, and
#: even a lone consumer does (it assigns its partitions by hand, but commits to its group,
#: and kafka-python asks for the coordinator before every fetch), so on a fresh broker
#: its creation sits between live mode and its first stored tick. The partitions only
#: spread group coordination over brokers; one node coordinates every group anyway, and
#: a local cluster's nodes (which inherit this) replicate the one partition, so a lost
#: node still hands the coordinator over. Measured on this project's 2-core machine,
#: Kafka 4.4.0, a fresh broker each time, load average 2.5-5: from the auto-creation
#: request to the last coordinator shard loaded 0.51-1.25 s with 50 partitions, 0.09-0.20 s
#: with 1; a consumer's first offset commit 0.41-1.01 s against 0.03-0.06 s; in
#: ``marketstream live``, partitions assigned -> first stored tick took 0.26-1.78 s
#: (median 1.34 s, 5 runs) against 0.30-0.58 s (median 0.32 s).
#: A slower disk pays more (each partition is a log directory, fsynced checkpoints and
#: preallocated index files). It cannot change once the topic exists: a run dir that
#: already has the topic keeps its 50 partitions, which only costs that first start.
OFFSETS_TOPIC_PARTITIONS = 1


def listener_hosts(host: str) -> tuple[str, str]:
    """(bind host, advertised host): a wildcard bind address is advertised as localhost."""
    if host in ("0.0.0.0", "::", ""):
        return host or "0.0.0.0", "localhost"
    return host, host


def render_server_properties(
    host: str,
    port: int,
    controller_port: int,
    log_dir: Path,
    *,
    num_partitions: int = 3,
    security: ListenerSecurity | None = None,
    internal_port: int | None = None,
    keystore: Path | None = None,
) -> str:
    """``server.properties`` for one combined broker+controller node (KRaft).

    Kafka 4 formats a *dynamic* quorum with ``--standalone``, which needs
    ``controller.quorum.bootstrap.servers`` (``controller.quorum.voters`` would
    make the format fail). Replication factors are 1 because there is one node;
    thread counts are low because the demo machine has 2 cores.

    ``__consumer_offsets`` gets 1 partition (:data:`OFFSETS_TOPIC_PARTITIONS`), not
    Kafka's 50: see there for the figures.

    With ``security`` the client listener on ``port`` is secured, and the
    broker's own traffic moves to a PLAINTEXT listener on 127.0.0.1 and
    ``internal_port`` (:func:`secured_listener_properties`); ``keystore`` is the
    PEM file holding the listener's key and certificate chain (TLS only).
    """
    bind, advertised = listener_hosts(host)
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": join_host_port(advertised, controller_port),
        "listeners": (
            f"PLAINTEXT://{join_host_port(bind, port)},"
            f"CONTROLLER://{join_host_port(bind, controller_port)}"
        ),
        "advertised.listeners": (
            f"PLAINTEXT://{join_host_port(advertised, port)},"
            f"CONTROLLER://{join_host_port(advertised, controller_port)}"
        ),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": str(num_partitions),
        "num.network.threads": "2",
        "num.io.threads": "4",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": str(OFFSETS_TOPIC_PARTITIONS),
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
    }
    if security is not None:
        if internal_port is None:
            raise ValueError("a secured client listener needs an internal_port")
        props |= secured_listener_properties(
            bind, advertised, port, controller_port, internal_port, security, keystore
        )
    lines = ["# Generated by marketstream.broker; rewritten on every start."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def secured_listener_properties(
    bind: str,
    advertised: str,
    port: int,
    controller_port: int,
    internal_port: int,
    security: ListenerSecurity,
    keystore: Path | None = None,
) -> dict[str, str]:
    """The listener lines of a broker whose client listener is secured.

    Three listeners: ``CLIENT`` (the secured one, on the bootstrap port),
    ``INTERNAL`` (PLAINTEXT on 127.0.0.1, the inter-broker listener) and
    ``CONTROLLER`` (PLAINTEXT, as before). The broker thus never needs client
    credentials for itself; its requests arrive as ``User:ANONYMOUS``, which is
    why the authorizer lists that principal as a super user. The INTERNAL
    listener is loopback-only so that this open door is not on the network.
    Per-listener options (``listener.name.client.*``) leave the other two alone.
    """
    client, internal = CLIENT_LISTENER, INTERNAL_LISTENER
    loopback = join_host_port("127.0.0.1", internal_port)
    props = {
        "listeners": (
            f"{client}://{join_host_port(bind, port)},{internal}://{loopback},"
            f"CONTROLLER://{join_host_port(bind, controller_port)}"
        ),
        "advertised.listeners": (
            f"{client}://{join_host_port(advertised, port)},{internal}://{loopback},"
            f"CONTROLLER://{join_host_port(advertised, controller_port)}"
        ),
        "inter.broker.listener.name": internal,
        "listener.security.protocol.map": (
            f"CONTROLLER:PLAINTEXT,{internal}:PLAINTEXT,{client}:{security.protocol}"
        ),
    }
    prefix = f"listener.name.{client.lower()}."
    if security.sasl:
        props[prefix + "sasl.enabled.mechanisms"] = ",".join(security.sasl_mechanisms)
        for mechanism in security.sasl_mechanisms:
            props[f"{prefix}{mechanism.lower()}.sasl.jaas.config"] = _jaas_line(mechanism, security)
    if security.ssl:
        if keystore is None:
            raise ValueError(f"a {security.protocol} listener needs its keystore file")
        props[prefix + "ssl.keystore.type"] = "PEM"
        props[prefix + "ssl.keystore.location"] = str(keystore)
        if security.key_password:
            props[prefix + "ssl.key.password"] = security.key_password
        if security.cafile is not None:
            props[prefix + "ssl.truststore.type"] = "PEM"
            props[prefix + "ssl.truststore.location"] = str(security.cafile)
        props[prefix + "ssl.client.auth"] = security.client_auth
    if security.authorizer:
        props["authorizer.class.name"] = STANDARD_AUTHORIZER
        props["super.users"] = ";".join(security.super_principals)
        props["allow.everyone.if.no.acl.found"] = "false"
    return props


def _jaas_line(mechanism: str, security: ListenerSecurity) -> str:
    """The listener's JAAS line for one mechanism: PLAIN lists its users, SCRAM reads
    them from the cluster metadata."""
    if mechanism == "PLAIN":
        users = " ".join(f'user_{n}="{p}"' for n, p in sorted(security.users.items()))
        return f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
    return "org.apache.kafka.common.security.scram.ScramLoginModule required;"


def parse_properties(text: str) -> dict[str, str]:
    """A minimal Java ``.properties`` reader (``key=value`` / ``key: value``, ``#`` comments)."""
    result: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        match = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if match:
            result[match.group(1)] = match.group(2).strip()
        else:
            result[line] = ""
    return result


# --------------------------------------------------------------------------- logging


def render_log4j2_config(log_file: Path) -> str:
    """log4j2 config: Kafka's INFO lines to ``log_file`` (rolled at 20 MB, 2 kept).

    The shutdown hook is disabled so log4j stays alive until Kafka's own
    shutdown hook has logged the clean shutdown.
    """
    pattern = str(log_file.with_name(log_file.name + ".%i"))
    return "\n".join(
        [
            "# Generated by marketstream.broker.",
            "status = warn",
            "name = marketstream-kafka",
            "shutdownHook = disable",
            "appender.file.type = RollingFile",
            "appender.file.name = FILE",
            f"appender.file.fileName = {log_file}",
            f"appender.file.filePattern = {pattern}",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "appender.file.policies.type = Policies",
            "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
            "appender.file.policies.size.size = 20MB",
            "appender.file.strategy.type = DefaultRolloverStrategy",
            "appender.file.strategy.max = 2",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.file.ref = FILE",
            "logger.request.name = kafka.request.logger",
            "logger.request.level = WARN",
            "",
        ]
    )


def excerpt(text: str, lines: int = 4, width: int = 240) -> str:
    """The lines of a log that explain a failure, squeezed onto one line.

    Prefers ERROR/FATAL log lines and lines naming an exception (the cause),
    else the last lines; stack frames are dropped.
    """
    rows = [strip_ansi(r).strip() for r in text.splitlines()]
    rows = [r for r in rows if r and not r.startswith("at ") and "[Help 1]" not in r]
    causes = [r for r in rows if _CAUSE.search(r)]
    chosen = (causes or rows)[-lines:]
    return " | ".join(r if len(r) <= width else r[: width - 3] + "..." for r in chosen)
