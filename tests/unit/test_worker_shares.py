"""Each worker's share of a group run (issue 18, friction 3): what ``consume --workers N``
and the pipeline's summary print, the group settling only on this run's assignments, and
the pipeline's consume rate over all of its runs (the last run alone was 0: "n/a")."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from kafka import TopicPartition

from marketstream import workers
from marketstream.consume import PartitionLog
from marketstream.logs import get_logger
from marketstream.pipeline import PipelineSummary, consume_rate, run_shares
from marketstream.settings import Settings
from marketstream.workers import (
    WorkerShare,
    describe_shares,
    holdings,
    open_gate_when_settled,
    settled,
    shares,
)


def tps(*numbers: int) -> set[TopicPartition]:
    return {TopicPartition("ticks", n) for n in numbers}


@pytest.fixture
def log(tmp_path: Path):
    path = tmp_path / "pipeline.log"
    logger = get_logger(path)
    yield logger, path
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == str(path):
            logger.removeHandler(handler)
            handler.close()


def test_an_earlier_run_of_the_same_group_does_not_count_towards_settling(log) -> None:
    """The pipeline reuses its group: yesterday's three workers are still in the log."""
    logger, path = log
    for i, p in enumerate((0, 1, 2)):
        PartitionLog(logger, f"old-{i}", "g").on_partitions_assigned(tps(p))
    time.sleep(0.01)
    since = datetime.now(UTC)
    assert settled(path, "g", 3, 3) and not settled(path, "g", 3, 3, since)
    first = PartitionLog(logger, "new-1", "g")
    first.on_partitions_assigned(tps(0, 1, 2))
    assert holdings(path, "g", since) == {"new-1": [0, 1, 2]}
    first.on_partitions_assigned(tps(0))
    for run, p in (("new-2", 1), ("new-3", 2)):
        PartitionLog(logger, run, "g").on_partitions_assigned(tps(p))
    assert settled(path, "g", 3, 3, since)


class FakeChild:
    def __init__(self, alive: bool = True) -> None:
        self._alive = alive

    def alive(self) -> bool:
        return self._alive


def test_the_gate_opens_once_settled_or_when_a_worker_ended_or_at_the_timeout(
    log, tmp_path, monkeypatch
) -> None:
    logger, path = log
    monkeypatch.setattr(workers, "topic_partitions", lambda settings: 2)
    settings = Settings().with_(log_path=str(path), consumer_group="g")
    since = datetime.now(UTC) - timedelta(seconds=1)
    PartitionLog(logger, "a", "g").on_partitions_assigned(tps(0))
    PartitionLog(logger, "b", "g").on_partitions_assigned(tps(1))
    gate = tmp_path / "gate"
    assert open_gate_when_settled(settings, [FakeChild(), FakeChild()], gate, since)
    assert gate.exists()
    gate.unlink()
    three = [FakeChild(), FakeChild(), FakeChild()]  # a third never joins: the timeout
    assert not open_gate_when_settled(settings, three, gate, since, timeout_s=0.3)
    assert gate.exists()
    gate.unlink()
    gone = [FakeChild(), FakeChild(alive=False), FakeChild()]
    started = time.monotonic()
    assert not open_gate_when_settled(settings, gone, gate, since, timeout_s=30)
    assert gate.exists() and time.monotonic() - started < 5


def test_each_workers_share_names_its_partitions_messages_and_rate(log) -> None:
    logger, path = log
    PartitionLog(logger, "r1", "g").on_partitions_assigned(tps(2))
    PartitionLog(logger, "r2", "g").on_partitions_assigned(tps(0, 1))
    found = shares([("consumer-1", "r1", 50, 86.4), ("consumer-2", "r2", 100, 90.0)], path, "g")
    assert found == [
        WorkerShare("consumer-1", (2,), 50, 86.4),
        WorkerShare("consumer-2", (0, 1), 100, 90.0),
    ]
    assert describe_shares(found) == [
        "  consumer-1: partitions [2], 50 messages, 86 msg/s",
        "  consumer-2: partitions [0, 1], 100 messages, 90 msg/s",
    ]
    assert describe_shares(found[:1]) == []  # one consumer: its share is the whole
    idle = shares([("consumer-3", "r3", 0, 0.0)], path, "g")
    assert idle[0].describe() == "consumer-3: partitions [], 0 messages, 0 msg/s"


def _runs(*rows: tuple[str, int, float, float, float]) -> pd.DataFrame:
    """pipeline_metrics rows: (run_id, messages, throughput, start s, end s), newest first."""
    base = datetime(2026, 12, 2, 10, 0, 0)
    frame = pd.DataFrame(
        [
            {
                "run_id": run_id,
                "messages_processed": messages,
                "throughput_per_s": rate,
                "started_at": base + timedelta(seconds=start),
                "ended_at": base + timedelta(seconds=end),
            }
            for run_id, messages, rate, start, end in rows
        ]
    )
    return frame.sort_values("started_at", ascending=False)


def test_the_pipelines_rate_covers_every_run_of_it_and_each_worker_is_shown(log) -> None:
    """Three workers, one of which found nothing: the last run's 0 made the summary n/a."""
    logger, path = log
    for run_id, p in (("w1", 0), ("w2", 1), ("w3", 2)):
        PartitionLog(logger, run_id, "g").on_partitions_assigned(tps(p))
    runs = _runs(("w1", 75, 75.0, 0, 1.0), ("w2", 75, 75.0, 0, 1.5), ("w3", 0, 0.0, 0.2, 2.0))
    assert consume_rate(runs) == pytest.approx(150 / 2.0)
    assert consume_rate(runs.iloc[0:0]) is None
    settings = Settings().with_(log_path=str(path), consumer_group="g")
    found = run_shares(runs, settings)
    assert [(s.name, s.partitions, s.messages) for s in found] == [
        ("worker 1", (0,), 75),
        ("worker 2", (1,), 75),
        ("worker 3", (2,), 0),
    ]
    summary = PipelineSummary(
        rows=150,
        elapsed_s=20.0,
        throughput_per_s=consume_rate(runs),
        location="data/market_data.duckdb",
        outputs=[Path("output/01_generate.ipynb")],
        shares=found,
    )
    text = summary.describe()
    assert "consume rate     : 75 ticks/s (3 workers together)" in text
    assert "    - worker 3: partitions [2], 0 messages, 0 msg/s" in text
    alone = PipelineSummary(150, 10.0, 198.0, "x", [], shares=found[:1]).describe()
    assert "198 ticks/s (this run)" in alone and "worker 1" not in alone
