"""The local Kafka runner: pure parts (properties, ids, parsing, messages) without Java,
the jar fetch with stand-in ``java``/``mvn`` scripts, the decisions of
:func:`owned_broker` (when the kit may start a broker, when it stops it), and
integration tests that start real KRaft brokers, round-trip a message and prove
that no JVM is left behind."""

from __future__ import annotations

import base64
import logging
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

# isort: split
from marketstream import broker
from marketstream.addresses import split_host_port
from marketstream.broker import BrokerError, BrokerStatus, jars
from marketstream.clients import DEFAULT_CLIENTS, KafkaClients
from marketstream.errors import KafkaUnavailable, SettingsError
from marketstream.processes import free_port
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
    assert split_host_port(server) == expected


def test_split_host_port_rejects_a_bad_port() -> None:
    with pytest.raises(SettingsError, match="host:port"):
        split_host_port("localhost:kafka")


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
    assert broker.choose_log_binding({}) == ("log4j-slf4j2-impl", jars.FALLBACK_LOG4J_VERSION)


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
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def _plain(port: int, **overrides: Any) -> Settings:
    return Settings().with_(bootstrap_servers=f"127.0.0.1:{port}", **overrides)


def test_nothing_listening_is_not_reachable() -> None:
    assert not DEFAULT_CLIENTS.reachable(_plain(free_port()), timeout_s=1)


# --------------------------------------------------------------------------- failures


def test_missing_java_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="openjdk-17-jre-headless"):
        broker.find_java(search_path=str(tmp_path))  # an empty dir as PATH


def test_missing_maven_names_the_fix(tmp_path: Path) -> None:
    settings = Settings().with_(kafka_home=tmp_path / "home")
    with pytest.raises(BrokerError, match="install Maven"):
        broker.fetch_kafka(settings, search_path=str(tmp_path))
    assert not broker.libs_dir(settings).exists()


def test_a_bad_version_string_never_reaches_maven(tmp_path: Path) -> None:
    settings = Settings().with_(kafka_home=tmp_path, kafka_version="latest</version>")
    with pytest.raises(BrokerError, match="MARKETSTREAM_KAFKA_VERSION"):
        broker.fetch_kafka(settings)


def test_port_taken_by_something_else(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = _plain(port, kafka_home=tmp_path)
        with pytest.raises(BrokerError) as caught:
            broker.start_broker(settings, run_dir=tmp_path / "run")
    message = str(caught.value)
    assert f"port {port} is in use by another program that does not speak Kafka" in message
    assert "KAFKA_BOOTSTRAP_SERVERS=localhost:" in message
    assert "\n" not in message


def test_stop_without_a_broker_is_a_no_op(tmp_path: Path) -> None:
    settings = _plain(free_port())
    assert broker.stop_broker(settings, run_dir=tmp_path) is False
    status = broker.broker_status(settings, run_dir=tmp_path / "nowhere")
    assert (status.reachable, status.managed, status.run_dir) == (False, False, None)


# --------------------------------------------------------------------------- jar fetch


def _script(path: Path, text: str) -> None:
    path.write_text("#!/bin/sh\n" + text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


#: Stands in for ``mvn``: answers the two goals fetch_kafka runs, as Maven would.
FAKE_MVN = """
for a in "$@"; do
  case "$a" in
    dependency:*) goal=$a ;;
    -DoutputFile=*) out=${a#-DoutputFile=} ;;
    -DoutputDirectory=*) dir=${a#-DoutputDirectory=} ;;
    -Dkafka.version=*) version=${a#-Dkafka.version=} ;;
  esac
done
case "$goal" in
  dependency:list) printf '   org.slf4j:slf4j-api:jar:2.0.17:runtime\n' > "$out" ;;
  dependency:copy-dependencies)
    mkdir -p "$dir" && head -c 3000000 /dev/zero > "$dir/kafka_2.13-$version.jar" ;;
esac
"""


def _fake_tools(tmp_path: Path, java_version: str = "17.0.15") -> str:
    """A directory with stand-in ``java`` and ``mvn``; returned as a search path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "java", f"echo 'openjdk version \"{java_version}\" 2025-04-15' >&2\n")
    _script(bin_dir / "mvn", FAKE_MVN)
    return str(bin_dir)


def test_an_old_java_names_the_version_needed(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="is Java 11 but Kafka 4 needs Java 17"):
        broker.find_java(search_path=_fake_tools(tmp_path, "11.0.2"))


def test_fetch_reports_progress_through_say_and_runs_once(tmp_path: Path) -> None:
    settings = Settings().with_(kafka_home=tmp_path / "home")
    tools = _fake_tools(tmp_path)
    heard: list[str] = []
    libs = broker.fetch_kafka(settings, say=heard.append, search_path=tools)
    assert libs == broker.libs_dir(settings)
    version = settings.kafka_version
    assert (libs / f"kafka_2.13-{version}.jar").is_file()
    marker = (libs / jars.MARKER).read_text(encoding="utf-8")
    assert marker == f"kafka {version}\nlog4j-slf4j2-impl {jars.FALLBACK_LOG4J_VERSION}\n"
    assert heard[0] == f"fetching Kafka {version} jars with Maven (once)..."
    assert heard[1].startswith(f"fetched Kafka {version} jars in ")
    assert heard[1].endswith(f" s (3 MB) into {libs}")
    assert len(heard) == 2
    # the marker says the copy is complete: no second download, no second line
    assert broker.fetch_kafka(settings, say=heard.append, search_path=tools) == libs
    assert len(heard) == 2


def test_fetch_without_say_logs_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings().with_(kafka_home=tmp_path / "home")
    with caplog.at_level(logging.INFO, logger="marketstream.broker"):
        broker.fetch_kafka(settings, search_path=_fake_tools(tmp_path))
    lines = [r.getMessage() for r in caplog.records if r.name == "marketstream.broker.jars"]
    assert lines[0].startswith("fetching Kafka") and lines[1].startswith("fetched Kafka")
    assert all(r.levelno == logging.INFO for r in caplog.records)


# --------------------------------------------------------------------------- owned_broker


class _AnsweringAdmin:
    """Stands in for KafkaAdminClient: a broker that answers every metadata request."""

    def __init__(self, **_config: object) -> None:
        pass

    def describe_cluster(self) -> dict[str, object]:
        return {"brokers": [{"node_id": 1}]}

    def close(self) -> None:
        pass


@pytest.fixture
def squatter() -> Iterator[int]:
    """A port on 127.0.0.1 where a plain TCP server accepts connections but speaks no Kafka."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_free_local_port_may_get_a_broker() -> None:
    assert broker.local_start_refusal(_plain(free_port())) is None


def test_secured_settings_never_get_a_local_broker(tmp_path: Path) -> None:
    settings = _plain(
        free_port(),
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        sasl_password="s3cret",
    )
    run_dir = tmp_path / "run"
    with (
        pytest.raises(KafkaUnavailable, match="only when no security is configured") as caught,
        broker.owned_broker(settings, run_dir=run_dir),
    ):
        pytest.fail("owned_broker must not run the block")
    assert f"no Kafka broker answers at {settings.bootstrap_servers}" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert not run_dir.exists()
    with pytest.raises(KafkaUnavailable, match="no security"):
        broker.ensure_broker(settings, run_dir=run_dir)
    assert not run_dir.exists()


def test_a_remote_host_never_gets_a_local_broker(tmp_path: Path) -> None:
    settings = Settings().with_(bootstrap_servers="kafka.invalid:9092")
    run_dir = tmp_path / "run"
    with pytest.raises(KafkaUnavailable) as caught, broker.owned_broker(settings, run_dir=run_dir):
        pytest.fail("owned_broker must not run the block")
    message = str(caught.value)
    assert "no Kafka broker answers at kafka.invalid:9092" in message
    assert "kafka.invalid is not this machine" in message
    assert not run_dir.exists()


def test_a_port_that_speaks_no_kafka_is_named(squatter: int, tmp_path: Path) -> None:
    settings = _plain(squatter)
    run_dir = tmp_path / "run"
    with pytest.raises(KafkaUnavailable) as caught, broker.owned_broker(settings, run_dir=run_dir):
        pytest.fail("owned_broker must not run the block")
    message = str(caught.value)
    assert message.startswith(
        f"something listens at 127.0.0.1:{squatter} but does not answer as a PLAINTEXT "
        "Kafka broker; set KAFKA_BOOTSTRAP_SERVERS=localhost:"
    )
    assert "\n" not in message
    assert not run_dir.exists()


def test_an_answering_broker_is_used_and_left_alone(squatter: int, tmp_path: Path) -> None:
    clients = KafkaClients(admin_class=_AnsweringAdmin)
    heard: list[str] = []
    run_dir = tmp_path / "run"
    settings = _plain(squatter)
    with broker.owned_broker(settings, say=heard.append, run_dir=run_dir, clients=clients) as got:
        assert got.started is False
        assert got.status.reachable and not got.status.managed
    assert heard == []
    assert not run_dir.exists()
    assert broker.ensure_broker(settings, run_dir=run_dir, clients=clients).reachable


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
        port = settings.bootstrap_host_port[1]
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

    assert not DEFAULT_CLIENTS.reachable(settings, timeout_s=1)
    assert broker.running_broker_pids(run_dir) == []
    assert _jvms_mentioning(run_dir) == []
    assert not (run_dir / "broker.pid").exists()


@pytest.mark.integration
@needs_java_and_maven
def test_owned_broker_leaves_a_running_broker_alone(kafka: Settings) -> None:
    heard: list[str] = []
    with broker.owned_broker(kafka, say=heard.append) as owned:
        assert owned.started is False
        assert owned.status.reachable
    assert heard == []
    assert DEFAULT_CLIENTS.reachable(kafka)


class _BlockFailed(Exception):
    pass


@pytest.mark.integration
@needs_java_and_maven
def test_owned_broker_starts_one_and_stops_it_after_the_block(tmp_path: Path) -> None:
    settings = Settings.from_env().with_(bootstrap_servers=f"127.0.0.1:{free_port()}")
    run_dir = (tmp_path / "run").resolve()
    heard: list[str] = []
    with (
        pytest.raises(_BlockFailed),
        broker.owned_broker(settings, say=heard.append, run_dir=run_dir) as owned,
    ):
        assert owned.started is True
        assert owned.status.reachable and owned.status.managed
        assert owned.status.run_dir == run_dir
        assert broker.running_broker_pids(run_dir) == [owned.status.pid]
        raise _BlockFailed  # a failing block still stops the broker it got
    assert heard[0] == f"no Kafka broker at {settings.bootstrap_servers}: starting a local one"
    assert broker.running_broker_pids(run_dir) == []
    assert _jvms_mentioning(run_dir) == []
    assert not DEFAULT_CLIENTS.reachable(settings, timeout_s=1)
