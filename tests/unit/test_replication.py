"""Replication of the topics the kit creates, without a broker: the capping rule, the
warning about an existing under-replicated topic, and a user without admin rights.

A fake cluster goes in through the one client seam (``KafkaClients(admin_class=...,
consumer_class=...)``); nothing is patched. What is checked is what Kafka would be
asked (replicas, ``min.insync.replicas``) and what the user reads and the JSON log keeps.
The same rule on a real 3-node cluster: tests/integration/cluster/test_failover.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidReplicationFactorError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from marketstream.clients import KafkaClients
from marketstream.errors import ProduceError
from marketstream.logs import read_log
from marketstream.produce import (
    ensure_topic,
    produce_ticks,
    replication_plan,
    replication_warning,
)
from marketstream.settings import Settings
from marketstream.ticks import generate_ticks


@dataclass
class FakeCluster:
    """What the fake admin and consumer see: brokers, topics, and which requests are refused.

    ``topics`` maps a name to (partitions, replicas, min.insync.replicas); ``refuse``
    names admin methods that fail with ``refusal``; ``create_error`` is raised by create.
    """

    brokers: int = 3
    topics: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)
    refusal: type[Exception] = TopicAuthorizationFailedError
    create_error: Exception | None = None
    created: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def clients(self) -> KafkaClients:
        return KafkaClients(
            producer_class=lambda **config: FakeProducer(self),
            consumer_class=lambda **config: FakeConsumer(self),
            admin_class=lambda **config: FakeAdmin(self),
        )


class FakeAdmin:
    """KafkaAdminClient, as far as ensure_topic uses it."""

    def __init__(self, cluster: FakeCluster):
        self.cluster = cluster

    def _check(self, method: str) -> None:
        if method in self.cluster.refuse:
            raise self.cluster.refusal()

    def describe_cluster(self) -> dict[str, Any]:
        self._check("describe_cluster")
        brokers = [{"broker_id": i + 1, "is_fenced": False} for i in range(self.cluster.brokers)]
        return {"controller_id": 1, "brokers": brokers}

    def list_topics(self) -> list[str]:
        self._check("list_topics")
        return list(self.cluster.topics)

    def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        self._check("describe_topics")
        out = []
        for name in names:
            partitions, replicas, _ = self.cluster.topics[name]
            parts = [
                {"partition_index": p, "replica_nodes": list(range(replicas))}
                for p in range(partitions)
            ]
            out.append({"name": name, "partitions": parts})
        return out

    def describe_configs(self, resources: list[Any], **_options: Any) -> dict[str, Any]:
        self._check("describe_configs")
        return {
            "topic": {
                r.name: {"min.insync.replicas": {"value": str(self.cluster.topics[r.name][2])}}
                for r in resources
            }
        }

    def create_topics(self, new: dict[str, dict[str, Any]]) -> None:
        self._check("create_topics")
        if self.cluster.create_error is not None:
            raise self.cluster.create_error
        for name, spec in new.items():
            if name in self.cluster.topics:
                raise TopicAlreadyExistsError()
            isr = int(spec["configs"]["min.insync.replicas"])
            self.cluster.topics[name] = (spec["num_partitions"], spec["replication_factor"], isr)
            self.cluster.created.append((name, spec))

    def close(self) -> None:
        pass


class FakeConsumer:
    """The metadata a consumer sees (also for a user who may not use the admin API)."""

    def __init__(self, cluster: FakeCluster):
        self.cluster = cluster

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        found = self.cluster.topics.get(topic)
        return set(range(found[0])) if found else None

    def close(self) -> None:
        pass


class FakeProducer:
    """Acknowledges every send."""

    def __init__(self, cluster: FakeCluster):
        self.cluster = cluster

    def send(self, topic: str, key: bytes, value: bytes) -> Any:
        class Acked:
            def add_errback(self, _callback: Any) -> Acked:
                return self

        return Acked()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings().with_(topic="ticks", partitions=3, log_path=tmp_path / "pipeline.log")


def _events(settings: Settings) -> list[dict[str, Any]]:
    return [e for e in read_log(settings.log_path) if e["event"].startswith("topic_")]


# --------------------------------------------------------------------------- the rule, pure


@pytest.mark.parametrize(
    ("rf", "isr", "brokers", "expected"),
    [
        (3, 2, 3, (3, 2)),  # the defaults on a 3-node cluster: nothing capped
        (3, 2, 5, (3, 2)),  # more brokers than replicas asked for
        (3, 2, 1, (1, 1)),  # the single local broker
        (3, 2, 2, (2, 2)),
        (2, 3, 3, (2, 2)),  # min ISR can never exceed the replicas
        (5, 2, None, (5, 2)),  # cluster size unknown (not allowed to describe it)
    ],
)
def test_replication_plan_caps_to_the_cluster(
    settings: Settings, rf: int, isr: int, brokers: int | None, expected: tuple[int, int]
) -> None:
    plan = replication_plan(settings.with_(replication_factor=rf, min_insync_replicas=isr), brokers)
    assert (plan.replication_factor, plan.min_insync_replicas) == expected
    assert bool(plan.capped) == (expected != (rf, isr))


def test_the_cap_says_which_setting_and_why(settings: Settings) -> None:
    plan = replication_plan(settings, 1)
    assert plan.capped == (
        "topic ticks: replication factor 1, not KAFKA_REPLICATION_FACTOR=3: the cluster has "
        "1 broker; min.insync.replicas 1, not KAFKA_MIN_INSYNC_REPLICAS=2: it cannot exceed "
        "the replication factor"
    )
    assert "\n" not in plan.capped


@pytest.mark.parametrize(
    ("replicas", "isr", "brokers", "warned"),
    [
        (1, 1, 3, "has 1 replica on a cluster of 3 brokers"),
        (3, 1, 3, "min.insync.replicas=1"),
        (2, 1, 2, "min.insync.replicas=1"),
        (3, 2, 3, ""),
        (2, 2, 3, ""),  # keeps the guarantee; stops writes while a broker is down (by choice)
        (1, 1, 1, ""),  # a single broker cannot do better
        (1, None, 3, "has 1 replica"),  # min.insync.replicas not readable
        (None, None, 3, ""),  # nothing readable: nothing claimed
        (1, 1, None, ""),
    ],
)
def test_warning_about_an_existing_topic(
    replicas: int | None, isr: int | None, brokers: int | None, warned: str
) -> None:
    line = replication_warning("ticks", replicas, isr, brokers)
    assert (warned in line) if warned else line == ""
    assert "\n" not in line


# --------------------------------------------------------------------------- ensure_topic


def test_three_brokers_get_three_replicas_and_min_isr_two_silently(settings: Settings) -> None:
    cluster = FakeCluster(brokers=3)
    heard: list[str] = []
    assert ensure_topic(settings, cluster.clients(), say=heard.append) is True
    [(name, spec)] = cluster.created
    assert name == "ticks"
    assert spec == {
        "num_partitions": 3,
        "replication_factor": 3,
        "configs": {"min.insync.replicas": "2"},
    }
    assert heard == [] and _events(settings) == []
    assert ensure_topic(settings, cluster.clients(), say=heard.append) is False
    assert len(cluster.created) == 1 and heard == []


def test_a_single_broker_caps_both_and_says_so(settings: Settings) -> None:
    cluster = FakeCluster(brokers=1)
    heard: list[str] = []
    assert ensure_topic(settings, cluster.clients(), say=heard.append) is True
    [(_, spec)] = cluster.created
    assert (spec["replication_factor"], spec["configs"]) == (1, {"min.insync.replicas": "1"})
    assert heard == [replication_plan(settings, 1).capped]
    [event] = _events(settings)
    assert event["event"] == "topic_replication_capped" and event["level"] == "warning"
    assert (event["brokers"], event["replication_factor"], event["min_insync_replicas"]) == (
        1,
        1,
        1,
    )
    assert event["topic"] == "ticks" and event["detail"] == heard[0]


def test_a_larger_setting_is_capped_to_the_cluster(settings: Settings) -> None:
    cluster = FakeCluster(brokers=3)
    heard: list[str] = []
    wide = settings.with_(replication_factor=5, min_insync_replicas=4)
    ensure_topic(wide, cluster.clients(), say=heard.append)
    [(_, spec)] = cluster.created
    assert (spec["replication_factor"], spec["configs"]) == (3, {"min.insync.replicas": "3"})
    [line] = heard
    assert "replication factor 3, not KAFKA_REPLICATION_FACTOR=5: the cluster has 3 brokers" in line
    assert "min.insync.replicas 3, not KAFKA_MIN_INSYNC_REPLICAS=4" in line


def test_the_cap_reaches_the_produce_summary(settings: Settings) -> None:
    cluster = FakeCluster(brokers=1)
    ticks = generate_ticks(("SP500",), 5)
    summary = produce_ticks(ticks, settings, progress=False, clients=cluster.clients())
    assert summary.sent == 5 and summary.failed == 0
    assert summary.problems == [replication_plan(settings, 1).capped]


@pytest.mark.parametrize(
    ("existing", "warned"),
    [((3, 1, 1), "has 1 replica"), ((3, 3, 1), "min.insync.replicas=1"), ((3, 3, 2), "")],
)
def test_an_existing_topic_is_used_as_it_is(
    settings: Settings, existing: tuple[int, int, int], warned: str
) -> None:
    cluster = FakeCluster(brokers=3, topics={"ticks": existing})
    heard: list[str] = []
    assert ensure_topic(settings, cluster.clients(), say=heard.append) is False
    assert cluster.created == [] and cluster.topics["ticks"] == existing
    if warned:
        [line] = heard
        assert warned in line and line.startswith("topic ticks ")
        [event] = _events(settings)
        assert event["event"] == "topic_under_replicated" and event["brokers"] == 3
    else:
        assert heard == [] and _events(settings) == []


def test_an_existing_topic_whose_configs_may_not_be_read(settings: Settings) -> None:
    cluster = FakeCluster(
        brokers=3, topics={"ticks": (3, 3, 1)}, refuse={"describe_configs", "describe_topics"}
    )
    heard: list[str] = []
    assert ensure_topic(settings, cluster.clients(), say=heard.append) is False
    assert heard == []  # nothing known, nothing claimed


@pytest.mark.parametrize(
    "refusal", [TopicAuthorizationFailedError, ClusterAuthorizationFailedError]
)
def test_no_right_to_create_but_the_topic_exists(
    settings: Settings, refusal: type[Exception]
) -> None:
    """The user may neither describe the cluster, list topics nor create one; a consumer's
    metadata shows the pre-created topic, so the kit goes on with it."""
    cluster = FakeCluster(
        topics={"ticks": (3, 3, 2)},
        refuse={"describe_cluster", "list_topics", "create_topics"},
        refusal=refusal,
    )
    heard: list[str] = []
    assert ensure_topic(settings, cluster.clients(), say=heard.append) is False
    [line] = heard
    assert line.startswith("topic ticks: not allowed to create or describe it (")
    assert line.endswith("but it exists; using it as it is")
    assert [e["event"] for e in _events(settings)] == ["topic_not_checked"]
    summary = produce_ticks(
        generate_ticks(("SP500",), 3), settings, progress=False, clients=cluster.clients()
    )
    assert summary.sent == 3


def test_no_right_to_create_and_no_topic_is_one_line(settings: Settings) -> None:
    cluster = FakeCluster(refuse={"create_topics"})
    with pytest.raises(ProduceError) as caught:
        ensure_topic(settings, cluster.clients())
    message = str(caught.value)
    assert message.startswith("creating topic ticks failed: user ANONYMOUS")
    assert "is not allowed to create topic ticks: ask the cluster admin for CREATE" in message
    assert "3 partitions, replication factor 3, min.insync.replicas 2" in message
    assert "\n" not in message


def test_cluster_size_unknown_asks_for_the_settings(settings: Settings) -> None:
    cluster = FakeCluster(brokers=3, refuse={"describe_cluster"})
    heard: list[str] = []
    assert ensure_topic(settings, cluster.clients(), say=heard.append) is True
    [(_, spec)] = cluster.created
    assert spec["replication_factor"] == 3 and heard == []


def test_too_few_brokers_up_is_one_line(settings: Settings) -> None:
    cluster = FakeCluster(
        brokers=3, create_error=InvalidReplicationFactorError("only 2 brokers registered")
    )
    with pytest.raises(ProduceError) as caught:
        ensure_topic(settings, cluster.clients())
    message = str(caught.value)
    assert "cannot create topic ticks with 3 replicas" in message
    assert "lower KAFKA_REPLICATION_FACTOR" in message and "\n" not in message
