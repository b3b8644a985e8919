"""A real single-node Apache Kafka 4 broker (KRaft, no ZooKeeper), run without Docker.

Why this exists: the demo must show ticks going through a *real* Kafka topic,
but laptops and CI machines often have no Docker engine. Kafka is just a Java
program, so this package

1. fetches Kafka's jars once with Maven (``mvn dependency:copy-dependencies`` on
   a tiny generated pom) into ``<kafka_home>/<version>/libs`` (:mod:`.jars`),
2. writes a KRaft ``server.properties`` (broker and controller in one process)
   and a log4j2 config into a *run dir* (rendered by :mod:`.config`), formats
   the storage there with Kafka's own ``StorageTool``, and
3. starts ``kafka.Kafka`` as a detached JVM with a pid file, waits until it
   answers the Kafka protocol, and stops it with SIGTERM (then SIGKILL)
   (:mod:`.node`);

and :mod:`.owned` holds the one rule for when the kit may start a broker on
its own and when it stops it again (:func:`owned_broker`).

Files in a run dir (default ``<kafka_home>/run/<port>``): ``server.properties``,
``log4j2.properties``, ``data/`` (topic and metadata logs), ``server.log``
(Kafka's own log), ``broker.out`` (JVM stdout/stderr), ``broker.pid``.

Every JVM started here carries ``-Dmarketstream.run_dir=<run dir>`` on its
command line, so a broker can always be found (and stopped) by its run dir
even if the pid file is lost. Expected failures raise :class:`BrokerError`
(or :class:`KafkaUnavailable` where the kit must not start a broker) with one
line naming the cause and the fix. Progress lines go to a ``say`` callback or
the ``logging`` logger, never to stdout/stderr.
"""

from __future__ import annotations

from marketstream.broker.config import (
    excerpt,
    is_valid_cluster_id,
    listener_hosts,
    new_cluster_id,
    parse_properties,
    render_log4j2_config,
    render_server_properties,
)
from marketstream.broker.jars import (
    FALLBACK_LOG4J_VERSION,
    choose_log_binding,
    fetch_kafka,
    find_java,
    find_maven,
    java_command,
    libs_dir,
    maven_excerpt,
    parse_dependency_list,
)
from marketstream.broker.node import (
    BrokerStatus,
    broker_status,
    default_run_dir,
    running_broker_pids,
    start_broker,
    stop_broker,
    temporary_broker,
)
from marketstream.broker.owned import (
    OwnedBroker,
    ensure_broker,
    local_start_refusal,
    owned_broker,
)
from marketstream.errors import BrokerError, KafkaUnavailable

__all__ = [
    "FALLBACK_LOG4J_VERSION",
    "BrokerError",
    "BrokerStatus",
    "KafkaUnavailable",
    "OwnedBroker",
    "broker_status",
    "choose_log_binding",
    "default_run_dir",
    "ensure_broker",
    "excerpt",
    "fetch_kafka",
    "find_java",
    "find_maven",
    "is_valid_cluster_id",
    "java_command",
    "libs_dir",
    "listener_hosts",
    "local_start_refusal",
    "maven_excerpt",
    "new_cluster_id",
    "owned_broker",
    "parse_dependency_list",
    "parse_properties",
    "render_log4j2_config",
    "render_server_properties",
    "running_broker_pids",
    "start_broker",
    "stop_broker",
    "temporary_broker",
]
