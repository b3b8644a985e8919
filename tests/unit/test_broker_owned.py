"""The decisions of :func:`marketstream.broker.owned_broker` (:mod:`.owned`): when the kit
may start a broker of its own and when it must not, without starting one."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketstream import broker
from marketstream.clients import KafkaClients
from marketstream.errors import KafkaUnavailable
from marketstream.processes import free_port
from marketstream.settings import Settings
from support.fakes import plain_settings, recorder


def test_a_free_local_port_may_get_a_broker() -> None:
    assert broker.local_start_refusal(plain_settings(free_port())) is None


def test_secured_settings_never_get_a_local_broker(tmp_path: Path) -> None:
    settings = plain_settings(
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


def test_a_port_that_speaks_no_kafka_is_named(listener: int, tmp_path: Path) -> None:
    settings = plain_settings(listener)
    run_dir = tmp_path / "run"
    with pytest.raises(KafkaUnavailable) as caught, broker.owned_broker(settings, run_dir=run_dir):
        pytest.fail("owned_broker must not run the block")
    message = str(caught.value)
    assert message.startswith(
        f"something listens at 127.0.0.1:{listener} but does not answer as a PLAINTEXT "
        "Kafka broker; set KAFKA_BOOTSTRAP_SERVERS=localhost:"
    )
    assert "\n" not in message
    assert not run_dir.exists()


def test_an_answering_broker_is_used_and_left_alone(listener: int, tmp_path: Path) -> None:
    clients = KafkaClients(admin_class=recorder())  # answers every metadata request
    heard: list[str] = []
    run_dir = tmp_path / "run"
    settings = plain_settings(listener)
    with broker.owned_broker(settings, say=heard.append, run_dir=run_dir, clients=clients) as got:
        assert got.started is False
        assert got.status.reachable and not got.status.managed
    assert heard == []
    assert not run_dir.exists()
    assert broker.ensure_broker(settings, run_dir=run_dir, clients=clients).reachable
