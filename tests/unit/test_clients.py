"""The one seam to kafka-python (:mod:`marketstream.clients`): the reachability probe
and the producer's key-caching partitioner. Security options: test_security.py."""

from __future__ import annotations

import pytest
from kafka.partitioner import DefaultPartitioner

from marketstream.clients import (
    DEFAULT_CLIENTS,
    KeyCachingPartitioner,
    SpreadPartitioner,
    partitioner_for,
)
from marketstream.processes import free_port
from marketstream.settings import DEFAULT_SYMBOLS, Settings
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


def test_murmur2_leaves_a_partition_empty_with_the_default_symbols() -> None:
    """Why the kit spreads: the default symbols hash to partitions {1, 1, 2} of 3."""
    default, cluster = DefaultPartitioner(), _Cluster(3)
    placed = sorted(
        default.partition("t", s.encode(), s.encode(), b"", b"", cluster) for s in DEFAULT_SYMBOLS
    )
    assert placed == [1, 1, 2]


@pytest.mark.parametrize("partitions", [1, 2, 3, 5])
def test_spread_partitioner_gives_each_symbol_one_partition_in_turn(partitions) -> None:
    symbols = ("SP500", "STOXX600", "NIKKEI225", "DAX")
    spread, default, cluster = (
        SpreadPartitioner(symbols),
        DefaultPartitioner(),
        _Cluster(partitions),
    )
    for i, symbol in enumerate(symbols * 2):  # the same symbol: the same partition, every time
        key = symbol.encode()
        assert spread.partition("t", key, key, b"", b"", cluster) == i % len(symbols) % partitions
    other = b"UNKNOWN"  # a key the settings do not list: Kafka's default placement
    assert spread.partition("t", other, other, b"", b"", cluster) == default.partition(
        "t", other, other, b"", b"", cluster
    )


def test_the_partitioner_setting_picks_the_partitioner() -> None:
    assert type(partitioner_for(Settings(partitioner="spread"))) is SpreadPartitioner
    assert type(partitioner_for(Settings(partitioner="murmur2"))) is KeyCachingPartitioner
