"""Real KRaft brokers (:mod:`marketstream.broker`): Maven fetching a version that does not
exist, a temporary broker round-tripping a message and stopping with no JVM left
behind, and :func:`owned_broker` leaving a running broker alone or starting and
stopping one of its own."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psutil
import pytest

from marketstream import broker
from marketstream.broker import BrokerError
from marketstream.clients import DEFAULT_CLIENTS
from marketstream.processes import free_port
from marketstream.settings import Settings
from support.waiting import wait_until

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None or shutil.which("mvn") is None,
    reason="needs Java 17+ and Maven to fetch and run Kafka",
)


def test_maven_failure_is_one_line(tmp_path: Path) -> None:
    settings = Settings().with_(kafka_home=tmp_path, kafka_version="4.99.0")
    with pytest.raises(BrokerError) as caught:
        broker.fetch_kafka(settings)
    message = str(caught.value)
    assert message.startswith("Maven could not fetch Kafka 4.99.0")
    assert "\n" not in message


def _jvms_mentioning(path: Path) -> list[int]:
    """Pids of java processes whose command line mentions path (like ``pgrep -f``)."""
    pids = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        alive = proc.info.get("status") != psutil.STATUS_ZOMBIE
        if alive and "java" in cmdline and str(path) in cmdline:
            pids.append(proc.pid)
    return pids


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

        def polled_something() -> bool:
            for records in consumer.poll(timeout_ms=1000).values():
                received.extend((r.key, r.value) for r in records)
            return bool(received)

        try:
            wait_until(polled_something, 60, "the message to come back", interval_s=0)
        finally:
            consumer.close()
        assert received == [(b"SP500", b'{"price": 1.0}')]

    assert not DEFAULT_CLIENTS.reachable(settings, timeout_s=1)
    assert broker.running_broker_pids(run_dir) == []
    assert _jvms_mentioning(run_dir) == []
    assert not (run_dir / "broker.pid").exists()


def test_owned_broker_leaves_a_running_broker_alone(kafka: Settings) -> None:
    heard: list[str] = []
    with broker.owned_broker(kafka, say=heard.append) as owned:
        assert owned.started is False
        assert owned.status.reachable
    assert heard == []
    assert DEFAULT_CLIENTS.reachable(kafka)


class _BlockFailed(Exception):
    pass


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
