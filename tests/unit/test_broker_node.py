"""The local broker's process handling (:mod:`marketstream.broker.node`) where no JVM
is needed: status lines, a port taken by something else, stopping nothing."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from marketstream import broker
from marketstream.broker import BrokerError, BrokerStatus
from marketstream.processes import free_port
from support.fakes import plain_settings


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


def test_port_taken_by_something_else(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = plain_settings(port, kafka_home=tmp_path)
        with pytest.raises(BrokerError) as caught:
            broker.start_broker(settings, run_dir=tmp_path / "run")
    message = str(caught.value)
    # the kit's one address rule (marketstream.servers.claim_address), with Kafka's fix
    assert f"port {port} on 127.0.0.1 is taken by another program" in message
    assert "KAFKA_BOOTSTRAP_SERVERS=localhost:" in message
    assert "\n" not in message


def test_stop_without_a_broker_is_a_no_op(tmp_path: Path) -> None:
    settings = plain_settings(free_port())
    assert broker.stop_broker(settings, run_dir=tmp_path) is False
    status = broker.broker_status(settings, run_dir=tmp_path / "nowhere")
    assert (status.reachable, status.managed, status.run_dir) == (False, False, None)
