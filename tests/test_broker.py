"""The local Kafka runner: pure parts (properties, ids, parsing, messages) without Java,
and one integration test that starts a real KRaft broker, round-trips a message and
proves that no JVM is left behind."""

from __future__ import annotations

import base64
import shutil
import socket
import time
import uuid
from pathlib import Path

import psutil
import pytest

# isort: split
from marketstream import broker
from marketstream.broker import BrokerError, BrokerStatus
from marketstream.settings import Settings

needs_java_and_maven = pytest.mark.skipif(
    shutil.which("java") is None or shutil.which("mvn") is None,
    reason="needs Java 17+ and Maven to fetch and run Kafka",
)


# --------------------------------------------------------------------------- pure parts


def test_cluster_id_has_kafkas_shape() -> None:
    ids = {broker.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for value in ids:
        assert len(value) == 22
        assert not value.startswith("-")
        assert len(base64.urlsafe_b64decode(value + "==")) == 16
        assert broker.is_valid_cluster_id(value)


@pytest.mark.parametrize("value", ["", "short", "x" * 23, "abc!defghijklmnopqrstu"])
def test_invalid_cluster_ids_are_rejected(value: str) -> None:
    assert not broker.is_valid_cluster_id(value)


def test_server_properties_are_kraft_combined_mode(tmp_path: Path) -> None:
    text = broker.render_server_properties(
        "localhost", 9092, 9093, tmp_path / "data", num_partitions=3
    )
    props = broker.parse_properties(text)
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["listeners"] == "PLAINTEXT://localhost:9092,CONTROLLER://localhost:9093"
    assert props["advertised.listeners"].startswith("PLAINTEXT://localhost:9092")
    assert props["controller.listener.names"] == "CONTROLLER"
    # --standalone formatting needs a dynamic quorum: bootstrap servers, not static voters
    assert props["controller.quorum.bootstrap.servers"] == "localhost:9093"
    assert "controller.quorum.voters" not in props
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["num.partitions"] == "3"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_wildcard_host_is_advertised_as_localhost(tmp_path: Path) -> None:
    text = broker.render_server_properties("0.0.0.0", 9092, 9093, tmp_path)
    props = broker.parse_properties(text)
    assert props["listeners"].startswith("PLAINTEXT://0.0.0.0:9092")
    assert props["advertised.listeners"].startswith("PLAINTEXT://localhost:9092")
    assert props["controller.quorum.bootstrap.servers"] == "localhost:9093"


def test_ipv6_hosts_are_bracketed(tmp_path: Path) -> None:
    props = broker.parse_properties(broker.render_server_properties("::1", 9092, 9093, tmp_path))
    assert props["listeners"] == "PLAINTEXT://[::1]:9092,CONTROLLER://[::1]:9093"


def test_parse_properties_handles_comments_and_separators() -> None:
    text = "# comment\n! also\n\na=1\nb : two words \nc 3\nflag\n"
    assert broker.parse_properties(text) == {"a": "1", "b": "two words", "c": "3", "flag": ""}


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("localhost:9092", ("localhost", 9092)),
        (" 127.0.0.1:19092 ", ("127.0.0.1", 19092)),
        ("[::1]:9093", ("::1", 9093)),
        ("kafka", ("kafka", 9092)),
        (":9094", ("localhost", 9094)),
    ],
)
def test_split_host_port(server: str, expected: tuple[str, int]) -> None:
    assert broker.split_host_port(server) == expected


def test_split_host_port_rejects_a_bad_port() -> None:
    with pytest.raises(BrokerError, match="host:port"):
        broker.split_host_port("localhost:kafka")


MAVEN_LIST = """
The following files have been resolved:
   org.slf4j:slf4j-api:jar:1.7.36:runtime
   org.apache.logging.log4j:log4j-api:jar:2.25.5:runtime
   org.apache.logging.log4j:log4j-core:jar:2.25.5:runtime
"""


def test_dependency_list_is_parsed() -> None:
    assert broker.parse_dependency_list(MAVEN_LIST) == {
        "org.slf4j:slf4j-api": "1.7.36",
        "org.apache.logging.log4j:log4j-api": "2.25.5",
        "org.apache.logging.log4j:log4j-core": "2.25.5",
    }


def test_log_binding_matches_the_slf4j_generation() -> None:
    deps = broker.parse_dependency_list(MAVEN_LIST)
    assert broker.choose_log_binding(deps) == ("log4j-slf4j-impl", "2.25.5")
    deps["org.slf4j:slf4j-api"] = "2.0.17"
    assert broker.choose_log_binding(deps) == ("log4j-slf4j2-impl", "2.25.5")
    assert broker.choose_log_binding({}) == ("log4j-slf4j2-impl", broker.FALLBACK_LOG4J_VERSION)


def test_log4j2_config_writes_to_the_given_file(tmp_path: Path) -> None:
    text = broker.render_log4j2_config(tmp_path / "server.log")
    assert f"appender.file.fileName = {tmp_path / 'server.log'}" in text
    assert "rootLogger.level = INFO" in text
    assert "shutdownHook = disable" in text


def test_java_command_leaves_the_wildcard_to_the_jvm(tmp_path: Path) -> None:
    cmd = broker.java_command("java", tmp_path, "kafka.Kafka", ["s.properties"], extra=["-Xmx1m"])
    assert cmd == ["java", "-Xmx1m", "-cp", f"{tmp_path}/*", "kafka.Kafka", "s.properties"]


def test_excerpt_prefers_error_lines_and_is_one_line() -> None:
    log = "\n".join(
        [
            "[t] INFO starting",
            "[t] INFO event unable to start because of RejectedExecutionException. Exception: x",
            "[t] ERROR Exiting Kafka due to fatal exception (kafka.Kafka)",
            "java.lang.IllegalArgumentException: bad listener",
            "    at kafka.Kafka.main(Kafka.scala:1)",
            "[t] INFO shutting down",
        ]
    )
    text = broker.excerpt(log)
    assert "\n" not in text
    assert "ERROR Exiting Kafka" in text
    assert "bad listener" in text
    assert "at kafka.Kafka.main" not in text
    assert "RejectedExecutionException" not in text
    assert broker.excerpt("one\ntwo") == "one | two"


MAVEN_FAILURE = """\x1b[0m[ERROR] Failed to execute goal on project kafka-runtime: Could not \
resolve dependencies: org.apache.kafka:kafka_2.13:jar:4.99.0 was not found
[ERROR]
[ERROR] To see the full stack trace of the errors, re-run Maven with the -e switch.
[ERROR] [Help 1] http://cwiki.apache.org/confluence/display/MAVEN/DependencyResolutionException
"""


def test_maven_excerpt_keeps_the_cause_only() -> None:
    text = broker.maven_excerpt(MAVEN_FAILURE)
    assert text.startswith("Could not resolve dependencies")
    assert "kafka_2.13:jar:4.99.0 was not found" in text
    assert "-e switch" not in text and "Help 1" not in text
    assert broker.maven_excerpt("no error lines\nstill none") == "no error lines | still none"


def test_status_lines() -> None:
    up = BrokerStatus("localhost:9092", True, True, 42, Path("/r"), Path("/r/server.log"))
    assert "pid 42" in up.describe() and "/r/server.log" in up.describe()
    assert up.port == 9092
    foreign = BrokerStatus("localhost:9092", True, False, None, None, None)
    assert "not started by marketstream" in foreign.describe()
    down = BrokerStatus("localhost:9092", False, False, None, None, None)
    assert down.describe().startswith("no Kafka broker answers at localhost:9092")
    stuck = BrokerStatus("localhost:9092", False, True, 7, Path("/r"), Path("/r/server.log"))
    assert "does not answer" in stuck.describe()


def test_free_port_is_bindable() -> None:
    port = broker.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_nothing_listening_is_not_reachable() -> None:
    assert not broker.is_reachable(f"127.0.0.1:{broker.free_port()}", timeout_s=1)


# --------------------------------------------------------------------------- failures


def test_missing_java_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.shutil, "which", lambda _name: None)
    with pytest.raises(BrokerError, match="openjdk-17-jre-headless"):
        broker.find_java()


def test_missing_maven_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(broker.shutil, "which", lambda _name: None)
    settings = Settings().with_(kafka_home=tmp_path)
    with pytest.raises(BrokerError, match="install Maven"):
        broker.fetch_kafka(settings)


def test_a_bad_version_string_never_reaches_maven(tmp_path: Path) -> None:
    settings = Settings().with_(kafka_home=tmp_path, kafka_version="latest</version>")
    with pytest.raises(BrokerError, match="MARKETSTREAM_KAFKA_VERSION"):
        broker.fetch_kafka(settings)


def test_port_taken_by_something_else(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = Settings().with_(bootstrap_servers=f"127.0.0.1:{port}", kafka_home=tmp_path)
        with pytest.raises(BrokerError) as caught:
            broker.start_broker(settings, run_dir=tmp_path / "run")
    message = str(caught.value)
    assert f"port {port} is in use by another program that does not speak Kafka" in message
    assert "KAFKA_BOOTSTRAP_SERVERS=localhost:" in message
    assert "\n" not in message


def test_stop_without_a_broker_is_a_no_op(tmp_path: Path) -> None:
    settings = Settings().with_(bootstrap_servers=f"127.0.0.1:{broker.free_port()}")
    assert broker.stop_broker(settings, run_dir=tmp_path) is False
    status = broker.broker_status(settings, run_dir=tmp_path / "nowhere")
    assert (status.reachable, status.managed, status.run_dir) == (False, False, None)


@pytest.mark.integration
@needs_java_and_maven
def test_maven_failure_is_one_line(tmp_path: Path) -> None:
    settings = Settings().with_(kafka_home=tmp_path, kafka_version="4.99.0")
    with pytest.raises(BrokerError) as caught:
        broker.fetch_kafka(settings)
    message = str(caught.value)
    assert message.startswith("Maven could not fetch Kafka 4.99.0")
    assert "\n" not in message


# --------------------------------------------------------------------------- real broker


def _jvms_mentioning(path: Path) -> list[int]:
    """Pids of java processes whose command line mentions path (like ``pgrep -f``)."""
    pids = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        alive = proc.info.get("status") != psutil.STATUS_ZOMBIE
        if alive and "java" in cmdline and str(path) in cmdline:
            pids.append(proc.pid)
    return pids


@pytest.mark.integration
@needs_java_and_maven
def test_temporary_broker_round_trip_and_clean_stop(tmp_path: Path) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    topic = f"broker-test-{uuid.uuid4().hex[:8]}"
    with broker.temporary_broker(Settings.from_env(), tmp_path) as settings:
        host, port = settings.bootstrap_host_port
        run_dir = (tmp_path / f"kafka-{port}").resolve()
        status = broker.broker_status(settings, run_dir=run_dir)
        assert status.reachable and status.managed and status.pid
        assert status.log_file is not None and " INFO " in status.log_file.read_text()
        assert broker.running_broker_pids(run_dir) == [status.pid]
        # a second start finds the running broker instead of starting another JVM
        assert broker.start_broker(settings, run_dir=run_dir).pid == status.pid

        servers = settings.bootstrap_servers
        admin = KafkaAdminClient(bootstrap_servers=servers)
        try:
            admin.create_topics(
                {topic: {"num_partitions": 3, "replication_factor": 1}}, wait_for_metadata=True
            )
        finally:
            admin.close()
        producer = KafkaProducer(bootstrap_servers=servers)
        producer.send(topic, key=b"SP500", value=b'{"price": 1.0}').get(timeout=30)
        producer.close()
        consumer = KafkaConsumer(topic, bootstrap_servers=servers, auto_offset_reset="earliest")
        received: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 30
        try:
            while not received and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=1000).values():
                    received += [(r.key, r.value) for r in records]
        finally:
            consumer.close()
        assert received == [(b"SP500", b'{"price": 1.0}')]

    assert not broker.is_reachable(f"{host}:{port}", timeout_s=1)
    assert broker.running_broker_pids(run_dir) == []
    assert _jvms_mentioning(run_dir) == []
    assert not (run_dir / "broker.pid").exists()
