"""The one seam to kafka-python (:mod:`marketstream.clients`): the reachability probe
and the producer's key-caching partitioner. Security options: test_security.py."""

from __future__ import annotations

import pytest
from kafka.partitioner import DefaultPartitioner

from marketstream.clients import DEFAULT_CLIENTS, KeyCachingPartitioner
from marketstream.processes import free_port
from support.fakes import plain_settings


def test_nothing_listening_is_not_reachable() -> None:
    assert not DEFAULT_CLIENTS.reachable(plain_settings(free_port()), timeout_s=1)


class _Cluster:
    """Just enough of kafka-python's ClusterMetadata for a partitioner."""

    def __init__(self, partitions: int):
        self.n = partitions

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))


@pytest.mark.parametrize("partitions", [1, 3, 7])
def test_key_caching_partitioner_agrees_with_the_default(partitions):
    cached, default, cluster = KeyCachingPartitioner(), DefaultPartitioner(), _Cluster(partitions)
    keys = [s.encode() for s in ("SP500", "STOXX600", "NIKKEI225", "A", "")] * 3
    for key in keys:
        args = ("t", key, key, b"v", b"v", cluster)
        assert cached.partition(*args) == default.partition(*args)
    # a topic that grew: the cache is keyed by the partition count too
    cluster.n += 2
    for key in keys:
        args = ("t", key, key, b"v", b"v", cluster)
        assert cached.partition(*args) == default.partition(*args)
