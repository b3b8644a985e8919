"""Unit tests of the producer's delivery reporting and topic handling, through its seams.

Fake kafka-python classes go in through ``KafkaClients``; what is checked is
what a user reads: how many ticks were acknowledged, which failed and why,
which CSV rows were skipped, and one line when Kafka itself fails.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from kafka.errors import KafkaTimeoutError, NotLeaderForPartitionError, TopicAlreadyExistsError

from marketstream.clients import KafkaClients, SpreadPartitioner
from marketstream.errors import ProduceError
from marketstream.produce import (
    csv_symbols,
    delete_topic,
    ensure_topic,
    produce_csv,
    produce_ticks,
    spread_over,
)
from marketstream.settings import Settings
from marketstream.ticks import CsvProblem, Tick, generate_ticks


class Future:
    """kafka-python's FutureRecordMetadata, as far as the producer uses it."""

    def __init__(self, error: Exception | None):
        self.error = error

    def add_errback(self, callback: Any) -> Future:
        if self.error is not None:
            callback(self.error)
        return self


class FakeProducer:
    """Acknowledges every send, except those whose value matches ``refuse``."""

    refuse: ClassVar[bytes | None] = None
    fail_flush: ClassVar[Exception | None] = None

    def __init__(self, **config: Any):
        self.config = config
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.closed = False

    def send(self, topic: str, key: bytes, value: bytes) -> Future:
        self.sent.append((topic, key, value))
        refused = self.refuse is not None and self.refuse in value
        return Future(NotLeaderForPartitionError("leader moved") if refused else None)

    def flush(self, timeout: float | None = None) -> None:
        if self.fail_flush is not None:
            raise self.fail_flush

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class FakeAdmin:
    """Topics in a dict on a cluster of three brokers; records what was created.

    (Replication on clusters of other sizes: tests/unit/test_replication.py.)
    """

    topics: ClassVar[dict[str, int]] = {}
    created: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __init__(self, **config: Any):
        self.config = config

    def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"broker_id": i, "is_fenced": False} for i in (1, 2, 3)]}

    def list_topics(self) -> list[str]:
        return list(self.topics)

    def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"name": n, "partitions": [{"replica_nodes": [1, 2, 3]}]} for n in names]

    def describe_configs(self, resources: list[Any], **_options: Any) -> dict[str, Any]:
        return {"topic": {r.name: {"min.insync.replicas": {"value": "2"}} for r in resources}}

    def create_topics(self, new: dict[str, dict[str, Any]]) -> None:
        for name, spec in new.items():
            if name in self.topics:
                raise TopicAlreadyExistsError()
            self.topics[name] = spec["num_partitions"]
            self.created.append((name, spec))

    def delete_topics(self, names: list[str]) -> None:
        for name in names:
            self.topics.pop(name, None)

    def close(self) -> None:
        pass


@pytest.fixture
def clients() -> KafkaClients:
    FakeAdmin.topics, FakeAdmin.created = {}, []
    FakeProducer.refuse, FakeProducer.fail_flush = None, None
    return KafkaClients(producer_class=FakeProducer, admin_class=FakeAdmin)


SETTINGS = Settings().with_(topic="ticks", partitions=4)


def test_every_tick_is_sent_keyed_by_symbol_and_counted(clients):
    ticks = generate_ticks(("SP500", "DAX"), 10, seed=1)
    producer = clients.producer(SETTINGS)
    summary = produce_ticks(ticks, SETTINGS, progress=False, producer=producer, clients=clients)
    assert (summary.sent, summary.failed, summary.rejected) == (20, 0, 0)
    assert [(t, k) for t, k, _ in producer.sent] == [("ticks", t.key) for t in ticks]
    assert [v for _, _, v in producer.sent] == [t.to_message() for t in ticks]
    assert summary.rate > 0 and "sent 20 ticks" in summary.describe()


def test_refused_sends_are_failures_with_their_reason(clients):
    ticks = generate_ticks(("SP500", "DAX"), 5, seed=1)
    FakeProducer.refuse = b'"DAX"'
    summary = produce_ticks(ticks, SETTINGS, progress=False, clients=clients)
    assert (summary.sent, summary.failed) == (5, 5)
    assert summary.problems[0].startswith("NotLeaderForPartitionError")
    assert "leader moved" in summary.problems[0]


def test_csv_problems_are_rejected_rows_and_the_good_rows_still_go(clients):
    good = generate_ticks(("SP500",), 3, seed=1)
    items: list[Tick | CsvProblem] = [
        good[0],
        CsvProblem(3, "price 'x' is not a number"),
        *good[1:],
    ]
    summary = produce_ticks(items, SETTINGS, progress=False, clients=clients)
    assert (summary.sent, summary.rejected) == (3, 1)
    assert summary.problems == ["line 3: price 'x' is not a number"]


def test_a_kafka_failure_is_one_line_saying_what_is_safe(clients):
    FakeProducer.fail_flush = KafkaTimeoutError()
    with pytest.raises(ProduceError) as caught:
        produce_ticks(generate_ticks(("SP500",), 3), SETTINGS, progress=False, clients=clients)
    text = str(caught.value)
    assert "\n" not in text and "stopped answering" in text and "KafkaTimeoutError" in text
    assert "does not duplicate them" in text


def test_topic_is_created_once_with_the_configured_partitions(clients):
    assert ensure_topic(SETTINGS, clients) is True
    assert ensure_topic(SETTINGS, clients) is False
    [(name, spec)] = FakeAdmin.created
    assert (name, spec["num_partitions"]) == ("ticks", 4)
    # three brokers: the configured 3 replicas and min.insync.replicas 2, nothing capped
    assert spec["replication_factor"] == 3
    assert spec["configs"] == {"min.insync.replicas": "2"}
    assert delete_topic(SETTINGS, clients) is True
    assert delete_topic(SETTINGS, clients) is False


def test_a_missing_csv_says_how_to_make_one(clients, tmp_path):
    with pytest.raises(ProduceError, match="marketstream generate"):
        produce_csv(tmp_path / "none.csv", SETTINGS, progress=False, clients=clients)


def test_own_symbols_spread_over_the_partitions_in_name_order(tmp_path):
    """Symbols not in MARKET_SYMBOLS fell back to murmur2: AAPL and MSFT both on
    partition 0 of 3, so one worker did all the work."""
    csv = tmp_path / "own.csv"
    rows = [f"2025-01-01T00:00:0{i}Z,{s},1.5,1" for i, s in enumerate(["MSFT", "GOOG", "AAPL"])]
    csv.write_text("timestamp,symbol,price,volume\n" + "\n".join(rows) + "\n")
    assert sorted(csv_symbols(csv)) == ["AAPL", "GOOG", "MSFT"]
    own = spread_over(Settings().with_(symbols="X"), csv_symbols(csv))
    assert own.symbols == ("X", "AAPL", "GOOG", "MSFT")  # configured first, then by name
    placed = SpreadPartitioner(own.symbols)
    assert {s: placed.place(s.encode(), {0, 1, 2}) for s in ("AAPL", "GOOG", "MSFT")} == {
        "AAPL": 1,
        "GOOG": 2,
        "MSFT": 0,
    }
    murmur = Settings().with_(partitioner="murmur2")
    assert spread_over(murmur, ["AAPL"]) is murmur  # Kafka's default stays Kafka's
    assert csv_symbols(tmp_path / "missing.csv") == []
