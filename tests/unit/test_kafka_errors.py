"""Kafka errors become one line naming the broker, what is safe and what to do."""

from __future__ import annotations

from kafka.errors import KafkaConnectionError, KafkaTimeoutError, UnknownTopicOrPartitionError

from marketstream.kafka_errors import describe, explain
from marketstream.settings import Settings


def test_describe_leaves_out_empty_and_none_messages():
    assert describe(KafkaTimeoutError()) == "KafkaTimeoutError"
    assert describe(KafkaTimeoutError(None)) == "KafkaTimeoutError"
    assert describe(KafkaTimeoutError("None")) == "KafkaTimeoutError"
    assert describe(KafkaTimeoutError("Failed to get offsets")) == (
        "KafkaTimeoutError: Failed to get offsets"
    )


def test_an_unreachable_broker_is_named_with_the_fix():
    settings = Settings().with_(bootstrap_servers="kafka.example:9093")
    for exc in (KafkaTimeoutError(None), KafkaConnectionError("connection refused")):
        line = explain(exc, settings, "consuming ticks", "nothing is lost")
        assert line.startswith("consuming ticks failed: the Kafka broker at kafka.example:9093")
        assert "None" not in line
        assert "nothing is lost" in line
        assert "marketstream broker up" in line and "KAFKA_BOOTSTRAP_SERVERS" in line
        assert "\n" not in line


def test_other_errors_keep_their_name_and_message():
    line = explain(UnknownTopicOrPartitionError("t"), Settings(), "producing to t", "safe")
    assert line == "producing to t failed: UnknownTopicOrPartitionError: t; safe"
