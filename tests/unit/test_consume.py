"""Unit tests of the consumer's commit order, through its own seams.

A fake consumer stands in for Kafka (handed over through ``KafkaClients``), the
store is a real DuckDB file, and :class:`ConsumeHooks` records or breaks the
steps. What must hold: a batch's offsets are committed to Kafka only after its
store transaction committed; a failure at any step leaves no offset committed
for a batch the store does not hold; and replaying a batch adds nothing.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import deque
from typing import Any, ClassVar

import pytest
from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaConnectionError

from marketstream import store
from marketstream.clients import KafkaClients
from marketstream.consume import BATCH, LIVE, ConsumeHooks, consume
from marketstream.errors import ConsumeError, StoreUnavailable
from marketstream.logs import read_log
from marketstream.settings import Settings
from marketstream.ticks import generate_ticks
from support.factories import records_for


class FakeConsumer:
    """Serves prepared polls from one topic's records; records every commit."""

    instances: ClassVar[list[FakeConsumer]] = []

    def __init__(self, **config: Any):
        self.config = config
        self.polls: deque[list] = deque()
        self.commits: list[dict[TopicPartition, int]] = []
        self.events: list[str] = []
        self.position_of: dict[TopicPartition, int] = {}
        self.ends: dict[TopicPartition, int] = {}
        self.fail_poll: Exception | None = None
        #: every poll's timeout, in order
        self.timeouts: list[int] = []
        #: this many commits are refused, as when the group has moved on
        self.refuse_commits = 0
        self.closed = False
        FakeConsumer.instances.append(self)

    # what the kit calls
    def subscribe(self, topics: list[str], listener: object = None) -> None:
        self.topics = topics

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.ends if tp.topic == topic}

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = set(partitions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.events.append(f"seek {tp.partition} {offset}")
        self.position_of[tp] = offset
        # the prepared polls start over from the sought offset, as a broker's would
        for batch in self.polls:
            batch[:] = [r for r in batch if r.partition != tp.partition or r.offset >= offset]

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.events.append(f"seek {tp.partition} beginning")
            self.position_of.setdefault(tp, 0)

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        self.timeouts.append(timeout_ms)
        if self.fail_poll is not None:
            raise self.fail_poll
        if not self.polls:
            return {}
        records = self.polls.popleft()[:max_records]
        by_tp: dict[TopicPartition, list] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            by_tp.setdefault(tp, []).append(r)
            self.position_of[tp] = max(self.position_of.get(tp, 0), r.offset + 1)
        return by_tp

    def assignment(self) -> set:
        return set(getattr(self, "assigned", ()))

    def end_offsets(self, tps: list) -> dict:
        return {tp: self.ends[tp] for tp in tps}

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        return self.position_of.get(tp, 0)

    def commit(self, offsets: dict) -> None:
        if self.refuse_commits:
            self.refuse_commits -= 1
            raise CommitFailedError("the group has rebalanced")
        self.events.append("kafka-commit")
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})

    def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None:
        self.closed = True


def fake_clients(polls: list[list], refuse_commits: int = 0) -> KafkaClients:
    """Clients whose consumer serves ``polls`` (each a list of records), then nothing,
    and refuses its first ``refuse_commits`` commits."""

    def build(**config: Any) -> FakeConsumer:
        consumer = FakeConsumer(**config)
        consumer.refuse_commits = refuse_commits
        consumer.polls.extend(polls)
        for batch in polls:
            for r in batch:
                tp = TopicPartition(r.topic, r.partition)
                consumer.ends[tp] = max(consumer.ends.get(tp, 0), r.offset + 1)
        return consumer

    return KafkaClients(consumer_class=build)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings().with_(
        topic="t",
        db_path=tmp_path / "m.duckdb",
        log_path=tmp_path / "p.log",
        batch_size=1000,
        idle_timeout_s=0.5,
    )


def polls_of(n_ticks: int, per_poll: int) -> list[list]:
    records = records_for(generate_ticks(("SP500", "DAX"), n_ticks // 2, seed=3), topic="t")
    return [records[i : i + per_poll] for i in range(0, len(records), per_poll)]


def test_each_batch_is_committed_to_kafka_only_after_the_store_commits(settings):
    FakeConsumer.instances.clear()
    polls = polls_of(300, 100)
    steps: list[str] = []

    def before_store_commit(con: Any, batch: Any) -> None:
        # inside the transaction: this batch's rows are visible here, not yet outside
        inside = con.execute("SELECT count(*) FROM market_ticks").fetchall()[0][0]
        outside = con.cursor().execute("SELECT count(*) FROM market_ticks").fetchall()[0][0]
        steps.append(f"store-commit {inside - outside}")

    hooks = ConsumeHooks(
        before_store_commit=before_store_commit,
        before_kafka_commit=lambda batch, added: steps.append(f"kafka-commit {added}"),
        after_kafka_commit=lambda batch, added: steps.append("done"),
    )
    run = consume(settings, progress=False, hooks=hooks, clients=fake_clients(polls))
    assert steps == ["store-commit 100", "kafka-commit 100", "done"] * 3
    [consumer] = FakeConsumer.instances
    # the committed offsets are each batch's highest offset + 1, per partition
    committed: dict[TopicPartition, int] = {}
    for commit in consumer.commits:
        for tp, offset in commit.items():
            assert offset > committed.get(tp, -1)
            committed[tp] = offset
    assert committed == consumer.ends
    assert (run.messages_processed, run.rows_inserted, run.status) == (300, 300, "ok")
    assert store.tick_count(settings.db_path) == 300
    assert consumer.config["enable_auto_commit"] is False
    assert consumer.closed


def test_a_batch_run_that_fetched_everything_does_not_wait_out_a_poll(settings):
    """Once every partition is fetched to its end offset, the poll after the last
    batch asks for what is there and does not block (it blocked 0.5 s, an eighth of a
    300,000-tick run, before the run could see it was done)."""
    FakeConsumer.instances.clear()
    run = consume(settings, progress=False, clients=fake_clients(polls_of(300, 100)))
    assert run.behind == 0
    [consumer] = FakeConsumer.instances
    fetching, after = consumer.timeouts[:3], consumer.timeouts[3:]
    assert all(t == BATCH.poll_ms for t in fetching), consumer.timeouts
    assert after and all(t == 0 for t in after), consumer.timeouts


def stored_keys(settings: Settings) -> set[tuple[int, int]]:
    """(partition, offset) of every stored tick."""
    frame = store.ticks(settings.db_path)
    return set(zip(frame["partition"], frame["offset"], strict=True))


def keys_of(records: list) -> set[tuple[int, int]]:
    return {(r.partition, r.offset) for r in records}


def test_a_store_failure_commits_no_offset_for_that_batch(settings):
    FakeConsumer.instances.clear()
    polls = polls_of(300, 100)
    calls = [0]

    def fail_second(con: Any, batch: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # named for a person: the cause, its fix, and what the failed run left
    with pytest.raises(StoreUnavailable, match=r"is full: free space there.*resumes there"):
        consume(
            settings,
            progress=False,
            hooks=ConsumeHooks(before_store_commit=fail_second),
            clients=fake_clients(polls),
        )
    [consumer] = FakeConsumer.instances
    # only the first batch's offsets are committed, and it is stored; the failed
    # transaction rolled back, and the third batch, already handed to the writer, is
    # not stored behind it (its positions would skip the second batch's records)
    assert len(consumer.commits) == 1
    assert keys_of(polls[0]) == stored_keys(settings)
    # the restart resumes at the store's positions: nothing lost, nothing doubled
    again = consume(settings, progress=False, clients=fake_clients(polls[1:]))
    assert again.messages_processed == 200
    assert stored_keys(settings) == keys_of([r for p in polls for r in p])
    assert store.tick_count(settings.db_path) == 300


def test_a_failure_before_the_kafka_commit_replays_without_duplicates(settings):
    FakeConsumer.instances.clear()
    polls = polls_of(200, 100)

    def die(batch: Any, added: int) -> None:
        raise RuntimeError("killed between the commits")

    with pytest.raises(RuntimeError):
        consume(
            settings,
            progress=False,
            hooks=ConsumeHooks(before_kafka_commit=die),
            clients=fake_clients(polls),
        )
    assert FakeConsumer.instances[0].commits == []
    stored = store.tick_count(settings.db_path)
    assert stored >= 100  # stored (one batch, or two: the writer runs ahead), none committed
    # the restarted consumer resumes at the store's positions, not at the group's
    # (nothing was committed to Kafka): it reads only what the store lacks
    again = consume(settings, progress=False, clients=fake_clients(polls))
    assert again.messages_processed == 200 - stored
    assert (again.rows_inserted, again.duplicates, again.behind) == (200 - stored, 0, 0)
    assert store.tick_count(settings.db_path) == 200


def test_kafka_failure_is_one_line_naming_the_broker_and_what_is_safe(settings):
    def build(**config: Any) -> FakeConsumer:
        consumer = FakeConsumer(**config)
        consumer.ends[TopicPartition("t", 0)] = 10
        consumer.fail_poll = KafkaConnectionError()
        return consumer

    with pytest.raises(ConsumeError) as caught:
        consume(settings, progress=False, clients=KafkaClients(consumer_class=build))
    text = str(caught.value)
    assert "\n" not in text
    assert settings.bootstrap_servers in text
    assert "every batch stored so far is committed" in text
    [run] = store.pipeline_runs(settings.db_path).to_dict("records")
    assert run["status"] == "failed"


def test_max_messages_is_a_budget_not_a_hint(settings):
    FakeConsumer.instances.clear()
    run = consume(
        settings, progress=False, max_messages=150, clients=fake_clients(polls_of(300, 100))
    )
    assert run.messages_processed == 150
    assert sum(FakeConsumer.instances[0].commits[-1].values()) <= 150


def test_live_policy_accumulates_polls_into_fewer_writes(settings):
    """Live mode writes at most once per write gap, so many small polls become one batch."""
    FakeConsumer.instances.clear()
    polls = polls_of(200, 5)  # 40 tiny polls, back to back
    stop = threading.Event()
    batches: list[int] = []

    def after(batch: Any, added: int) -> None:
        batches.append(added)
        if sum(batches) == 200:
            stop.set()

    run = consume(
        settings,
        live=True,
        stop=stop,
        progress=False,
        on_batch=after,
        clients=fake_clients(polls),
    )
    assert sum(batches) == 200 and run.status == "stopped"
    assert len(batches) < len(polls)
    assert run.mode == LIVE.mode and LIVE.write_gap_s and BATCH.write_gap_s is None


def test_a_refused_kafka_commit_is_logged_recorded_and_shown(settings):
    """The group moved on (a rebalance, a stall past the session): the batch is stored
    and its commit refused. That was counted and never read; now it is in the log, in
    the run's row and in ``stats``."""
    FakeConsumer.instances.clear()
    polls = polls_of(300, 100)
    run = consume(settings, progress=False, clients=fake_clients(polls, refuse_commits=2))
    assert (run.rows_inserted, run.lost_commits, run.conflicts) == (300, 2, 0)
    refused = [e for e in read_log(settings.log_path) if e["event"] == "kafka_commit_refused"]
    assert len(refused) == 2 and all(e["run_id"] == run.run_id for e in refused)
    [row] = store.pipeline_runs(settings.db_path).to_dict("records")
    assert (row["lost_commits"], row["conflicts"]) == (2, 0)
    report = store.stats(settings.db_path)
    assert (report["runs"], report["lost_commits"], report["conflicts"]) == (1, 2, 0)
    assert "2 Kafka commits refused" in store.render_stats(report)


def test_ticks_produced_twice_are_stored_once_by_the_careful_insert(settings):
    """Most batches take the plain ``INSERT``; a batch with a key already stored, or
    with the same tick twice, fails it and is stored again with ``INSERT OR IGNORE``
    in a new transaction: its new rows land once, its positions move, and the
    count of rows added is exact (store/files.py, ``FileWriter._transaction``)."""
    FakeConsumer.instances.clear()
    ticks = generate_ticks(("SP500", "DAX"), 100, seed=5)
    first = records_for(ticks[:150], topic="t")
    # re-produced: 20 ticks already stored, 10 new ones twice in the same poll
    again = records_for([*ticks[130:150], *ticks[150:160], *ticks[150:160]], offset0=150)
    rest = records_for(ticks[160:], offset0=190)
    run = consume(settings, progress=False, clients=fake_clients([first, again, rest]))
    assert (run.messages_processed, run.rows_inserted) == (150 + 40 + 40, 200)
    assert run.duplicates == 30 and run.behind == 0
    assert store.tick_count(settings.db_path) == 200
    [consumer] = FakeConsumer.instances
    stored = {key: at for key, (at, _) in store.partition_positions(settings.db_path).items()}
    assert stored == {(tp.topic, tp.partition): o for tp, o in consumer.ends.items()}


def test_the_run_is_recorded_before_the_consumer_closes(settings):
    """A client stuck with its group coordinator can wait in ``close`` past a stop's
    grace; the worker is then killed there, so its run's row must already be stored."""
    FakeConsumer.instances.clear()
    seen_at_close: list[int] = []

    class SlowToClose(FakeConsumer):
        def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None:
            seen_at_close.append(len(store.pipeline_runs(settings.db_path)))
            super().close(autocommit, timeout_ms)

    template = fake_clients(polls_of(200, 100))
    clients = KafkaClients(
        consumer_class=lambda **config: _filled(SlowToClose(**config), template, config)
    )
    consume(settings, progress=False, clients=clients)
    assert seen_at_close == [1]


def _filled(consumer: FakeConsumer, template: KafkaClients, config: dict) -> FakeConsumer:
    """``consumer`` given the polls and end offsets ``template``'s consumer would have."""
    model = template.consumer_class(**config)
    FakeConsumer.instances.remove(model)
    consumer.polls, consumer.ends = model.polls, model.ends
    return consumer
