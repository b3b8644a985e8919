"""Unit tests of how a group of workers is seen to settle, and of the start gate.

The consumer's :class:`PartitionLog` writes the real JSON log that
:func:`workers.settled` reads; the start gate is driven with a small stand-in
consumer that pauses and resumes like kafka-python's (the real broker's
version is in tests/integration/test_workers.py).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from kafka import TopicPartition

from marketstream.consume import PartitionLog, wait_at_gate
from marketstream.errors import ConsumeError
from marketstream.logs import get_logger
from marketstream.workers import holdings, settled


def tps(*numbers: int) -> set[TopicPartition]:
    return {TopicPartition("ticks", n) for n in numbers}


@pytest.fixture
def log(tmp_path: Path):
    logger = get_logger(tmp_path / "pipeline.log")
    yield logger, tmp_path / "pipeline.log"
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(
            str(tmp_path)
        ):
            logger.removeHandler(handler)
            handler.close()


def test_a_group_is_settled_once_its_workers_hold_every_partition_once(log) -> None:
    logger, path = log
    one, two = PartitionLog(logger, "run-1", "g"), PartitionLog(logger, "run-2", "g")
    other = PartitionLog(logger, "run-9", "another-group")
    one.on_partitions_assigned(tps(0, 1, 2))  # alone at first
    other.on_partitions_assigned(tps(0, 1, 2))
    assert not settled(path, "g", 2, 3)
    two.on_partitions_assigned(tps(2))  # the rebalance: run-1 has not given 2 back yet
    assert holdings(path, "g") == {"run-1": [0, 1, 2], "run-2": [2]}
    assert not settled(path, "g", 2, 3)
    one.on_partitions_revoked(tps(0, 1, 2))
    one.on_partitions_assigned(tps(0, 1))
    assert settled(path, "g", 2, 3)
    assert not settled(path, "g", 3, 3)  # a third worker has not joined
    assert settled(path, "another-group", 1, 3)


class PausingConsumer:
    """Polls like kafka-python: a rebalance calls the listener inside ``poll``, and
    paused partitions return nothing."""

    def __init__(self, listener: PartitionLog, records: dict[int, list[str]]) -> None:
        self.listener = listener
        self.records = records
        self.assigned: set[TopicPartition] = set()
        self.paused: set[TopicPartition] = set()
        self.polls = 0

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused -= set(partitions)

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[str]]:
        self.polls += 1
        if self.polls == 2:  # the group's assignment arrives during the second poll
            self.assigned = tps(*self.records)
            self.listener.on_partitions_assigned(self.assigned)
        return {tp: self.records[tp.partition] for tp in self.assigned if tp not in self.paused}


def test_the_gate_keeps_new_partitions_paused_until_it_opens(log) -> None:
    logger, _ = log
    listener = PartitionLog(logger, "run-1", "g")
    consumer = PausingConsumer(listener, {0: ["a"], 1: ["b"]})
    wait_at_gate(consumer, listener, lambda: consumer.polls >= 5, threading.Event())
    assert consumer.polls == 5 and consumer.assigned == tps(0, 1)
    assert consumer.paused == set()  # resumed at the gate's opening
    assert consumer.poll(100) == {
        TopicPartition("ticks", 0): ["a"],
        TopicPartition("ticks", 1): ["b"],
    }


def test_stop_ends_the_wait_and_a_record_at_the_gate_is_an_error(log) -> None:
    logger, _ = log
    listener = PartitionLog(logger, "run-1", "g")
    stopped = threading.Event()
    stopped.set()
    consumer = PausingConsumer(listener, {0: ["a"]})
    wait_at_gate(consumer, listener, lambda: False, stopped)
    assert consumer.polls == 0

    class Leaky(PausingConsumer):
        def pause(self, *partitions: TopicPartition) -> None:  # pauses nothing
            pass

    leaky = Leaky(listener, {0: ["a"]})
    with pytest.raises(ConsumeError, match="paused partition at the start gate"):
        wait_at_gate(leaky, listener, lambda: False, threading.Event())
