"""Connecting to a secured cluster: SASL/SSL settings reach every Kafka client the kit
creates (producer, consumer, admin, the broker probe), and the password never shows
up in a repr, a log record, the JSON log or the CLI's output.

No broker is needed: the kafka-python classes are replaced by recorders, handed to
the code through its one client seam (:class:`marketstream.clients.KafkaClients`),
and their keyword arguments are checked against kafka-python's own list of known
options, so a misspelt option would fail here and not on a customer's cluster.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import ClassVar

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from marketstream import broker, cli, consume, produce
from marketstream.clients import KafkaClients, connection_config
from marketstream.errors import KafkaUnavailable
from marketstream.logs import read_log
from marketstream.settings import Settings
from support.fakes import PASSWORD, SECURITY, Recorder, recorder

ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka-1.example.internal:9094,kafka-2.example.internal:9094",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "marketstream-svc",
    "KAFKA_SASL_PASSWORD": PASSWORD,
    "KAFKA_SSL_CAFILE": "/etc/ssl/certs/cluster-ca.pem",
}


@pytest.fixture
def secured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Settings for a SASL_SSL cluster, read from the environment like a user's would be."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MARKET_DB_PATH", str(tmp_path / "market.duckdb"))
    monkeypatch.setenv("MARKET_LOG_PATH", str(tmp_path / "pipeline.log"))
    monkeypatch.setenv("MARKET_CSV_PATH", str(tmp_path / "missing.csv"))
    return Settings.from_env()


SERVERS = ["kafka-1.example.internal:9094", "kafka-2.example.internal:9094"]


def assert_secured(
    config: dict[str, object], known: dict[str, object], servers: list[str] = SERVERS
) -> None:
    """The security options are there, with their values, and every option is one the
    real kafka-python class knows."""
    for key, value in SECURITY.items():
        assert config[key] == value, key
    assert config["bootstrap_servers"] == servers
    unknown = set(config) - set(known)
    assert not unknown, f"options kafka-python does not know: {unknown}"


# --------------------------------------------------------------------------- pass-through


def test_settings_from_env_carry_sasl_and_ssl(secured: Settings) -> None:
    assert_secured(connection_config(secured), KafkaAdminClient.DEFAULT_CONFIG)


def test_plaintext_default_adds_no_security_options() -> None:
    config = connection_config(Settings())
    assert config["security_protocol"] == "PLAINTEXT"
    assert not {"sasl_mechanism", "sasl_plain_username", "sasl_plain_password"} & set(config)


def test_producer_gets_security_and_delivery_settings(secured: Settings) -> None:
    fake = recorder()
    KafkaClients(producer_class=fake).producer(secured)
    [config] = fake.calls
    assert_secured(config, KafkaProducer.DEFAULT_CONFIG)
    # the delivery guarantee's producer half: every replica acknowledges, no duplicates
    # from retries (idempotence), and retries are kafka-python's default (unbounded
    # within delivery_timeout_ms)
    assert config["acks"] == "all"
    assert config["enable_idempotence"] is True
    assert "retries" not in config or config["retries"] > 0
    assert KafkaProducer.DEFAULT_CONFIG["retries"] > 0


def test_consumer_gets_security_and_manual_commits(secured: Settings) -> None:
    fake = recorder()
    KafkaClients(consumer_class=fake).consumer(secured)
    [config] = fake.calls
    assert_secured(config, KafkaConsumer.DEFAULT_CONFIG)
    # the consumer half: offsets are committed by the kit after DuckDB commits, never
    # automatically, and a poll returns at most one batch (bounded memory)
    assert config["enable_auto_commit"] is False
    assert config["max_poll_records"] == secured.batch_size
    assert config["group_id"] == secured.consumer_group


@pytest.mark.parametrize("action", [produce.ensure_topic, produce.delete_topic])
def test_admin_clients_get_security(secured: Settings, action) -> None:
    fake = recorder()
    action(secured, clients=KafkaClients(admin_class=fake))
    [config] = fake.calls
    assert_secured(config, KafkaAdminClient.DEFAULT_CONFIG)


def test_broker_probe_with_settings_gets_security(secured: Settings, listener: int) -> None:
    """``marketstream broker status`` and start-up checks probe with the settings' security.
    ``listener`` accepts TCP (the probe's TCP check passes); the recorder is the Kafka half."""
    fake = recorder()
    server = f"127.0.0.1:{listener}"
    local = secured.with_(bootstrap_servers=f"{server},{server}")
    status = broker.broker_status(
        local, run_dir=Path("/nonexistent/run"), clients=KafkaClients(admin_class=fake)
    )
    assert status.reachable
    [config] = fake.calls
    assert_secured(config, KafkaAdminClient.DEFAULT_CONFIG, [server, server])


# --------------------------------------------------------------------------- secrets


def test_password_is_not_in_repr_or_str(secured: Settings) -> None:
    assert secured.sasl_password == PASSWORD
    assert PASSWORD not in repr(secured)
    assert PASSWORD not in str(secured)
    assert "marketstream-svc" in repr(secured)  # the user name is not a secret


def test_password_is_not_in_the_json_log(secured: Settings) -> None:
    """A consumer run logs start, settings-derived fields and end; never the password."""

    class Empty(Recorder):
        calls: ClassVar[list[dict[str, object]]] = []

        def poll(self, **kwargs: object) -> dict:
            return {}

        def assignment(self) -> set:
            return set()

        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0}

        def assign(self, partitions: list) -> None:
            pass

        def seek_to_beginning(self, *partitions: object) -> None:
            pass

        def end_offsets(self, partitions: list) -> dict:
            return dict.fromkeys(partitions, 0)  # an empty topic: caught up at once

    clients = KafkaClients(consumer_class=Empty)
    run = consume.consume(secured, progress=False, clients=clients)
    assert run.messages_processed == 0
    assert Empty.calls[0]["sasl_plain_password"] == PASSWORD  # it did reach the client
    text = secured.log_path.read_text(encoding="utf-8")
    events = [e["event"] for e in read_log(secured.log_path)]
    assert events == ["consume_start", "resume_from_store", "partitions_assigned", "consume_end"]
    assert PASSWORD not in text


def test_password_is_not_in_cli_output(
    secured: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cluster's hosts do not resolve here, so nothing answers: the lines name the
    servers and the missing CSV, never the password."""
    for argv in (["broker", "status"], ["produce", "-q"]):
        cli.main(argv)
    out, err = capsys.readouterr()
    assert "no Kafka broker answers at kafka-1.example.internal:9094" in out
    assert "no CSV at" in err
    assert PASSWORD not in out + err


def test_connection_errors_do_not_echo_the_password(secured: Settings) -> None:
    """The one-line errors for an unreachable cluster name the servers, not the secret."""
    from kafka.errors import KafkaTimeoutError

    def unreachable(**config: object) -> None:
        raise KafkaTimeoutError("bootstrap timed out")

    clients = KafkaClients(unreachable, unreachable, unreachable)
    for call in (
        clients.producer,
        clients.consumer,
        functools.partial(produce.ensure_topic, clients=clients),
    ):
        with pytest.raises(KafkaUnavailable) as caught:
            call(secured)
        assert "kafka-1.example.internal:9094" in str(caught.value)
        assert PASSWORD not in str(caught.value)


def test_password_is_not_logged_even_at_debug(
    secured: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """With every logger at DEBUG (a user chasing a connection problem), creating the
    kit's real admin client against an unreachable cluster logs no password."""
    unreachable = secured.with_(bootstrap_servers="127.0.0.1:1")
    clients = KafkaClients(
        admin_class=functools.partial(KafkaAdminClient, bootstrap_timeout_ms=300)
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(KafkaUnavailable):
        produce.ensure_topic(unreachable, clients=clients)
    assert caplog.records, "DEBUG logging was not captured"
    leaked = [r.name for r in caplog.records if PASSWORD in r.getMessage()]
    assert not leaked, f"password logged by {leaked}"
