"""The local broker's configuration (:mod:`marketstream.broker.config`): cluster ids,
KRaft ``server.properties``, the log4j2 config and log excerpts, without Java."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from marketstream import broker


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


def test_log4j2_config_writes_to_the_given_file(tmp_path: Path) -> None:
    text = broker.render_log4j2_config(tmp_path / "server.log")
    assert f"appender.file.fileName = {tmp_path / 'server.log'}" in text
    assert "rootLogger.level = INFO" in text
    assert "shutdownHook = disable" in text


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
