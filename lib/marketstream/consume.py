"""Kafka topic into the store in micro-batches, committing offsets only after the store commits.

Delivery: each batch goes through a :class:`Checkpoint`, whose steps run in
one order: **poll → decode → store commit → Kafka commit**. A crash between
any two replays the batch, and the store skips ticks it already has, so the
effect is exactly-once: no tick lost, none duplicated (tests/integration/test_crash.py
kills the consumer at each step, through :class:`ConsumeHooks`). Messages
that are not valid ticks go to ``dead_letters`` with their raw bytes and the
reason (:mod:`marketstream.decode`).

Where a run resumes is the store's own position, written in each batch's
transaction (:mod:`marketstream.store.positions`): every partition a consumer
is given is sought there, never to a consumer group's committed offset. One
consumer takes every partition by manual assignment, so it never waits for a
group; workers (``MARKET_CONSUMERS`` > 1) share a group, and seek on each
assignment (:class:`PartitionLog`).

Pacing is a :class:`Policy`: :data:`BATCH` holds the store file and writes
every poll, overlapping the next poll, until the store has caught up with
the topic's end offsets as read at the start (:class:`Targets`); :data:`LIVE`
runs until stopped and leaves the file free between writes so readers get in.

Speed (bench/README.md has the profile): kafka-python parses every record in
pure Python on the calling thread, and that is the ceiling. So decoding and
the store transaction run on a writer thread (both release the GIL), while
the main thread polls; the main thread commits each batch's offsets only once
its store transaction has committed.

Tried and not kept (issue 20, bench/README.md "Consumer"): a writer process of
one consumer's own (the relay of :mod:`marketstream.store.relay`), fed the
records undecoded so that this process only parses. It freed the parser's GIL
(main-thread samples 5.2 s → ~2.5 s for 300,000 ticks) but cost ~1 s to start,
1-2 us more CPU a tick (a second interpreter, pickling both ways) and ~250 MB
more resident, and on 2 shared cores its rate was no better (interleaved in one
run: 0.37/0.60/0.50x the ceiling against 0.67/0.61/0.57x for this writer thread;
in another 0.35/0.47x against 0.65/0.88x once the store's insert was cheaper).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import duckdb
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
    TopicAuthorizationFailedError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata
from tqdm.auto import tqdm

from marketstream.clients import DEFAULT_CLIENTS, KafkaClients
from marketstream.decode import MAX_MESSAGE_BYTES, DecodedBatch, decode_records
from marketstream.errors import ConsumeError, StoreUnavailable
from marketstream.kafka_errors import explain
from marketstream.logs import get_logger
from marketstream.settings import Settings
from marketstream.store import RunMetrics, Where, Writer, backend, locate, open_writer
from marketstream.store.failures import mid_run
from marketstream.store.files import LIVE_WRITE_GAP_S
from marketstream.store.positions import as_key, behind

__all__ = [
    "BATCH",
    "GIL_SWITCH_INTERVAL_S",
    "LIVE",
    "MAX_MESSAGE_BYTES",
    "Checkpoint",
    "ConsumeError",
    "ConsumeHooks",
    "DecodedBatch",
    "PartitionLog",
    "Policy",
    "Targets",
    "consume",
    "decode_records",
    "gil_switch_interval",
    "join",
    "live_policy",
    "wait_at_gate",
]

#: Batches decoded/written ahead of their Kafka commit. Two keep the writer thread
#: busy while the main thread polls; more would only hold more memory.
MAX_IN_FLIGHT = 2

#: While consuming, threads hand over the GIL after 0.2 ms instead of Python's 5 ms.
#: The writer thread holds the GIL only briefly between Arrow and DuckDB calls (which
#: release it), but each time it wants it back it would wait up to the switch
#: interval behind kafka-python's parsing on the main thread; at 5 ms that made the
#: writer, not Kafka, the bottleneck (measured: +30% consume rate at 0.2 ms).
GIL_SWITCH_INTERVAL_S = 0.0002


#: A Kafka commit refused because the group has moved on: the partitions belong to
#: another member now, or are being handed out (kafka-python raises
#: ``RebalanceInProgressError`` for a commit during a rebalance: seen in the bench
#: with 3 workers, where it ended a worker until it was caught here).
MOVED_ON = (
    CommitFailedError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
)


# --------------------------------------------------------------------------- policy and hooks


@dataclass(frozen=True)
class Policy:
    """How a run paces its writes and when it ends (batch and live differ only here)."""

    #: ``mode`` column of the run's ``pipeline_metrics`` row.
    mode: str
    #: Longest wait in one poll.
    poll_ms: int
    #: Batches written but not yet committed to Kafka, at most.
    max_in_flight: int
    #: Keep the store file open for the whole run (nobody reads meanwhile).
    hold_store: bool
    #: ``None``: write every poll. Else wait this long after a write ends, letting
    #: polls accumulate, so readers can open the file in between.
    write_gap_s: float | None
    #: End once the store's positions have reached the topic's end offsets as read
    #: when the run started (:class:`Targets`), every partition's, whoever stores it.
    stop_at_end: bool


BATCH = Policy("batch", 500, MAX_IN_FLIGHT, True, None, stop_at_end=True)
#: Live mode; its write gap is the store's own (``Backend.live_write_gap_s``, :func:`live_policy`).
LIVE = Policy("live", 200, 1, False, LIVE_WRITE_GAP_S, stop_at_end=False)


def live_policy(at: Where) -> Policy:
    """:data:`LIVE` with the write gap of the store at ``at``."""
    return replace(LIVE, write_gap_s=backend(at).live_write_gap_s)


#: The longest an idle loop waits to learn a partition's position (see ``_Loop._position``).
POSITION_TIMEOUT_MS = 200

#: The longest a consumer's close may take (leaving the group; normally milliseconds).
CLOSE_TIMEOUT_MS = 10_000

#: A worker with no partitions says so this often (the group is rebalancing, or
#: waiting for members that died without leaving to time out).
GROUP_WAIT_NOTE_S = 10.0

#: A worker of a group that has held no partition (or been rebalancing) for a session
#: timeout and this much more rejoins with a new Kafka client. Seen here (2026-12-02,
#: kafka-python 3.0.12; 2 of ~40 group starts under load, and in 4 of 4 CI runs of the
#: live lake test): a worker's client waited for ever on a coordinator lookup that
#: never completed, in the rejoin right after a join, while the rest of the group
#: shared every partition; a new client joined at once. A dead member's partitions
#: come back within one session timeout, so this is never a normal wait.
STALLED_MARGIN_S = 15.0
#: At most one rejoin per this many seconds: a worker with no partition because the
#: group has more members than partitions would otherwise make the group rebalance.
REJOIN_EVERY_S = 600.0


@dataclass(frozen=True)
class ConsumeHooks:
    """Callbacks at the named steps of a :class:`Checkpoint`, in the order they run.

    The seam for fault injection (a test kills the process inside one) and for
    observers (live mode's counters). A hook that raises stops the run, and
    the batch it was handling is never committed to Kafka.
    """

    #: Inside the store transaction, rows inserted, just before its commit
    #: (gets the DuckDB connection; runs on the writer thread).
    before_store_commit: Callable[[Any, DecodedBatch], None] | None = None
    #: The store has committed the batch; its Kafka offsets are not yet committed.
    before_kafka_commit: Callable[[DecodedBatch, int], None] | None = None
    #: Both committed: the batch is done (gets the rows the store added).
    after_kafka_commit: Callable[[DecodedBatch, int], None] | None = None


class Checkpoint:
    """One batch's way through the commit order: decode → store commit → Kafka commit.

    Like quixstreams' ``Checkpoint``: the order is this object's, not the
    loop's, so it can be read, tested and hooked in one place.
    """

    def __init__(
        self,
        consumer: Any,
        writer: Writer,
        hooks: ConsumeHooks,
        on_refused: Callable[[dict], None] | None = None,
    ):
        self.consumer = consumer
        self.writer = writer
        self.hooks = hooks
        #: told of each Kafka commit refused (the offsets it held), to log it
        self.on_refused = on_refused
        #: Kafka commits refused because the partitions had moved (the batch is stored)
        self.lost_commits = 0
        #: what this run has committed to Kafka, per partition
        self.kafka_committed: dict[tuple[str, int], int] = {}

    def store(
        self, records: list, received_at: datetime, advance: dict | None = None
    ) -> tuple[DecodedBatch, int]:
        """Decode the records and commit them to the store; (batch, rows added).

        ``advance`` moves partitions' positions past offsets that hold no record for
        this consumer (a transaction's commit marker, an aborted transaction's ticks).
        """
        batch = decode_records(records, received_at)
        if advance:
            batch.offsets = {**advance, **batch.offsets}
        before = self.hooks.before_store_commit
        added = self.writer.write_batch(
            batch.ticks,
            batch.dead,
            offsets=batch.offsets,
            before_commit=None if before is None else (lambda con: before(con, batch)),
        )
        return batch, added

    def commit(self, batch: DecodedBatch, added: int) -> None:
        """Commit the batch's offsets to Kafka: only ever after :meth:`store` returned."""
        if self.hooks.before_kafka_commit is not None:
            self.hooks.before_kafka_commit(batch, added)
        if not self._commit_kafka(batch.offsets):
            return
        if self.hooks.after_kafka_commit is not None:
            self.hooks.after_kafka_commit(batch, added)

    def sync_kafka(self, stored: dict[tuple[str, int], int | None], assigned: Any) -> None:
        """Commit to Kafka the store's positions it does not have yet from this run: a
        partition the store had already caught up on before the run, or moved past a
        marker. Lag tools then see what is stored."""
        owned = {as_key(tp) for tp in assigned}
        behind = {
            TopicPartition(*tp): o
            for tp, o in stored.items()
            if o is not None and tp in owned and self.kafka_committed.get(tp) != o
        }
        if behind:
            self._commit_kafka(behind)

    def _commit_kafka(self, offsets: dict) -> bool:
        """Commit ``offsets`` to Kafka; False if the group had moved on (see below)."""
        try:
            self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except MOVED_ON:
            # The group moved these partitions to another worker while this batch was
            # being stored (a rebalance, or this worker stalled past its session
            # timeout). The batch is in the store; its new owner starts from the last
            # committed offset, and the store skips what it already has (the file's
            # keys, the lake's partition fences), so nothing is lost or doubled.
            self.lost_commits += 1
            if self.on_refused is not None:
                self.on_refused(offsets)
            return False
        for tp, o in offsets.items():
            self.kafka_committed[as_key(tp)] = o
        return True


# --------------------------------------------------------------------------- the run


@dataclass
class Targets:
    """Every partition of the topic and its end offset when the run started (with
    ``read_committed``, the last stable offset): what a batch run must store."""

    ends: dict[tuple[str, int], int]

    @classmethod
    def read(cls, consumer: Any, topic: str) -> Targets:
        partitions = topic_partitions(consumer, topic)
        ends = consumer.end_offsets(partitions)
        return cls({as_key(tp): int(end) for tp, end in ends.items()})

    def behind(self, writer: Writer) -> int:
        """Messages below the targets that the store has not reached."""
        return behind(self.ends, writer.positions(self.ends))


def topic_partitions(
    consumer: Any, topic: str, missing: Callable[[], None] | None = None
) -> list[TopicPartition]:
    """The topic's partitions (an error naming the topic if it does not exist).

    ``missing()`` is asked first when none are found: a user without the right to
    describe the topic sees none either, and it raises the broker's refusal.
    """
    numbers = consumer.partitions_for_topic(topic)
    if not numbers:
        if missing is not None:
            missing()
        raise ConsumeError(
            f"the topic {topic} does not exist on the cluster yet: produce to it first "
            "(marketstream produce, or make demo)"
        )
    return [TopicPartition(topic, n) for n in sorted(numbers)]


@contextmanager
def gil_switch_interval(seconds: float) -> Iterator[None]:
    """Shorten ``sys.setswitchinterval`` for a block, then put the old value back."""
    previous = sys.getswitchinterval()
    wanted = min(previous, seconds)
    sys.setswitchinterval(wanted)
    try:
        yield
    finally:
        if sys.getswitchinterval() == wanted:  # unless someone changed it meanwhile
            sys.setswitchinterval(previous)


@dataclass
class _InFlight:
    """A polled batch being decoded and stored on the writer thread."""

    size: int
    future: Future[tuple[DecodedBatch, int]]


@dataclass
class Tally:
    """What a run has committed so far (only batches whose Kafka commit is done)."""

    processed: int = 0
    valid: int = 0
    inserted: int = 0
    errors: int = 0
    max_event: datetime | None = None

    def add(self, size: int, batch: DecodedBatch, added: int) -> None:
        """Count one committed batch of ``size`` records."""
        self.processed += size
        self.valid += batch.ticks.num_rows
        self.inserted += added
        self.errors += batch.dead.num_rows
        newest = batch.max_event_time
        if newest is not None and (self.max_event is None or newest > self.max_event):
            self.max_event = newest


@dataclass
class _Loop:
    """The poll loop: polls on this thread, stores on one writer thread, commits in order."""

    settings: Settings
    policy: Policy
    consumer: Any
    checkpoint: Checkpoint
    bar: Any
    log: Any
    run_id: str
    listener: PartitionLog
    targets: Targets | None = None
    tally: Tally = field(default_factory=Tally)
    submitted: int = 0
    pending: list = field(default_factory=list)
    last_data: float = field(default_factory=time.monotonic)
    last_write_end: float = 0.0
    unassigned_since: float | None = None
    store_failed: bool = False
    #: when this worker last held no partition after holding some (or since it started)
    unassigned_from: float | None = None
    #: builds, joins and hands back a new consumer in place of a stalled one (groups only)
    rejoin: Callable[[], Any] | None = None
    rejoined_at: float | None = None

    def __post_init__(self) -> None:
        # One writer thread: store transactions stay strictly in poll order.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="marketstream-writer")
        self.in_flight: deque[_InFlight] = deque()

    def _store(
        self, records: list, received_at: datetime, advance: dict | None = None
    ) -> tuple[DecodedBatch, int]:
        # A batch queued behind one that failed must not be stored: its positions would
        # move past the failed batch's records, and no run would read them again.
        if self.store_failed:
            raise ConsumeError("an earlier batch was not stored; this one is left for a rerun")
        try:
            return self.checkpoint.store(records, received_at, advance)
        except BaseException:
            self.store_failed = True
            raise
        finally:
            self.last_write_end = time.monotonic()

    def settle(self) -> None:
        """Wait for the oldest batch's store commit, then (only then) commit its offsets."""
        job = self.in_flight.popleft()
        batch, added = job.future.result()
        self.listener.stored(batch.offsets)
        self.checkpoint.commit(batch, added)
        if batch.dead.num_rows:
            first = {
                "partition": batch.dead["partition"][0].as_py(),
                "offset": batch.dead["offset"][0].as_py(),
                "reason": batch.dead["reason"][0].as_py(),
            }
            extra = {"run_id": self.run_id, "count": batch.dead.num_rows, "first": first}
            self.log.warning("dead_letters", extra=extra)
        self.tally.add(job.size, batch, added)
        self.bar.update(job.size)

    def settle_done(self) -> None:
        while self.in_flight and self.in_flight[0].future.done():
            self.settle()

    def settle_all(self) -> None:
        while self.in_flight:
            self.settle()

    def submit(self) -> None:
        """Hand the pending records to the writer thread (received_at = now: all are read)."""
        while len(self.in_flight) >= self.policy.max_in_flight:  # back-pressure
            self.settle()
        records, self.pending = self.pending, []
        future = self.executor.submit(self._store, records, datetime.now(UTC))
        self.in_flight.append(_InFlight(len(records), future))
        self.submitted += len(records)

    def advance(self) -> bool:
        """Move the store's positions past offsets with no record for this consumer (a
        transaction's marker, an aborted transaction's ticks), so that the position
        can reach the end offset; True if a batch was submitted to do it."""
        ahead = {}
        for tp in self.consumer.assignment():
            position = self._position(tp)
            stored = self.listener.known.get(as_key(tp))
            if position is not None and (stored is None or position > stored):
                ahead[tp] = int(position)
        if not ahead:
            return False
        future = self.executor.submit(self._store, [], datetime.now(UTC), ahead)
        self.in_flight.append(_InFlight(0, future))
        return True

    def _position(self, tp: TopicPartition) -> int | None:
        """The consumer's position in ``tp``, or None if it cannot say at once.

        Bounded: kafka-python's ``position`` asks the group coordinator for a partition
        without a position, and without a timeout it waits as long as a rebalance
        takes (a live worker stopped beside another one waited past its 60 s grace).
        """
        try:
            return self.consumer.position(tp, timeout_ms=POSITION_TIMEOUT_MS)
        except (IllegalStateError, KafkaTimeoutError):  # moved away, or no answer yet
            return None

    def note_waiting(self) -> None:
        """Say, every :data:`GROUP_WAIT_NOTE_S`, that this worker has no partitions yet;
        rejoin with a new client once that has lasted a session timeout and
        :data:`STALLED_MARGIN_S` (:meth:`maybe_rejoin`)."""
        # mid-rebalance kafka-python still reports the revoked partitions as assigned
        if self.consumer.assignment() and not self.listener.rebalancing:
            self.unassigned_since = self.unassigned_from = None
            return
        now = time.monotonic()
        # no partition is not idle: the idle limit counts from when partitions came
        self.last_data = now
        if self.unassigned_from is None:
            self.unassigned_from = now
        self.maybe_rejoin(now)
        if self.unassigned_since is None:
            self.unassigned_since = now
        elif now - self.unassigned_since >= GROUP_WAIT_NOTE_S:
            waited = now - self.unassigned_since
            note = (
                f"waiting for the group {self.settings.consumer_group} to hand out partitions "
                f"({waited:.0f} s so far): a member that left without saying so holds its "
                f"partitions until its session expires, within "
                f"{self.settings.session_timeout_s:.0f} s (KAFKA_SESSION_TIMEOUT_S)"
            )
            self.log.warning("waiting_for_group", extra={"run_id": self.run_id, "note": note})
            print(note, file=sys.stderr, flush=True)
            self.unassigned_since = now

    def maybe_rejoin(self, now: float) -> bool:
        """Replace a consumer that has held no partition for too long (see
        :data:`STALLED_MARGIN_S`); True if it did. The old one is closed on a
        thread of its own: a stalled client may not finish leaving the group."""
        if self.rejoin is None or self.unassigned_from is None:
            return False
        if now - self.unassigned_from < self.settings.session_timeout_s + STALLED_MARGIN_S:
            return False
        if self.rejoined_at is not None and now - self.rejoined_at < REJOIN_EVERY_S:
            return False
        waited = now - self.unassigned_from
        note = (
            f"no partition of the group {self.settings.consumer_group} for {waited:.0f} s, "
            "more than a session timeout: joining again with a new Kafka client"
        )
        self.log.warning("group_rejoin", extra={"run_id": self.run_id, "note": note})
        print(note, file=sys.stderr, flush=True)
        old, self.consumer = self.consumer, self.rejoin()
        threading.Thread(
            target=old.close,
            kwargs={"autocommit": False, "timeout_ms": CLOSE_TIMEOUT_MS},
            name="stalled-consumer",
            daemon=True,
        ).start()
        self.rejoined_at = self.unassigned_from = now
        self.unassigned_since = None
        return True

    def poll(self, budget: int) -> list:
        timeout_ms = self.policy.poll_ms
        if self.settings.consumers == 1 and self.in_flight and self.fetched_all():
            # Nothing left to fetch: a blocking poll would only wait out its timeout
            # (0.5 s, an eighth of a 300,000-tick batch run) before the run could end.
            # Not in a group of workers: they wait for each other anyway, and a poll
            # that cannot wait may leave a rebalance half done until the next one.
            timeout_ms = 0
        gap = self.policy.write_gap_s
        if self.pending and gap is not None:  # come back in time to write what is waiting
            wait = gap - (time.monotonic() - self.last_write_end)
            timeout_ms = int(min(timeout_ms, max(10.0, wait * 1000)))
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=budget)
        return [r for batch in polled.values() for r in batch]

    def fetched_all(self) -> bool:
        """Has this consumer fetched every assigned partition up to its target (a
        batch run's end offsets)? Its own fetch positions, not the store's."""
        if self.targets is None:
            return False
        assigned = self.consumer.assignment()
        if not assigned:
            return False
        for tp in assigned:
            end = self.targets.ends.get(as_key(tp))
            position = self._position(tp)
            if end is None or position is None or position < end:
                return False
        return True

    def write_due(self, budget: int, polled: int) -> bool:
        gap = self.policy.write_gap_s
        if gap is None or budget <= polled:  # every poll, or full / message budget used up
            return True
        return not self.in_flight and time.monotonic() - self.last_write_end >= gap

    def run(self, stop: threading.Event, max_messages: int | None, idle_limit_s: float) -> None:
        """Poll and store until the policy's end, ``max_messages``, idle (``idle_limit_s``
        > 0: the user asked for it), or ``stop``."""
        while not stop.is_set():
            budget = self.settings.batch_size - len(self.pending)
            if max_messages is not None:
                budget = min(budget, max_messages - self.submitted - len(self.pending))
            records = self.poll(budget) if budget > 0 else []
            self.settle_done()
            if records:
                self.last_data = time.monotonic()
                self.pending.extend(records)
            if self.pending:
                if self.write_due(budget, len(records)):
                    self.submit()
                continue
            if budget <= 0:
                break
            self.settle_all()  # nothing to overlap with: commit what is written
            if self.advance():
                continue
            self.sync_kafka()
            if idle_limit_s > 0 and time.monotonic() - self.last_data > idle_limit_s:
                break
            if self.targets is not None and self.targets.behind(self.checkpoint.writer) == 0:
                break
            self.note_waiting()
        if self.pending:  # stop: finish the batch in hand
            self.submit()
        self.settle_all()
        self.sync_kafka()

    def sync_kafka(self) -> None:
        """Give Kafka the store's positions (``Checkpoint.sync_kafka``), unless the group
        is rebalancing: kafka-python still reports the revoked partitions as assigned
        then, each commit is refused, and an idle loop asked again every poll (50
        refused commits in 10 s, seen in a live worker that then never rejoined)."""
        if not self.listener.rebalancing:
            self.checkpoint.sync_kafka(self.listener.positions(), self.consumer.assignment())

    def close(self) -> None:
        """Cancel what was never committed (only after an error) and stop the writer."""
        for job in self.in_flight:
            job.future.cancel()
        self.executor.shutdown(wait=True)


class PartitionLog(ConsumerRebalanceListener):
    """Seeks each partition the consumer is given to the store's position, and logs
    ``partitions_assigned`` / ``partitions_revoked`` with the run's id and group;
    while :meth:`hold` is on, it pauses what is assigned (the start gate).

    Seeking here, inside the assignment, means the consumer never fetches from a
    group's committed offset: a partition with a store position starts there; one
    the store knows only by its rows, after the highest stored offset; one it
    does not know, where ``auto.offset.reset`` says. kafka-python may call this
    on its IO thread, so it uses only the consumer's non-blocking seek calls.

    With several workers in a group, which one holds which partition is what
    explains a worker that stored nothing (it joined after a short topic was read,
    or a rebalance was still under way when a short live run ended), and it is
    how a caller sees the group settle (:func:`marketstream.workers.settled`).
    """

    def __init__(
        self,
        log: Any,
        run_id: str,
        group: str,
        consumer: Any = None,
        writer: Writer | None = None,
    ) -> None:
        self.log = log
        self.run_id = run_id
        self.group = group
        self.held: Any = None  # the consumer whose new partitions are paused
        #: the consumer and writer to seek with (without them it only logs)
        self.consumer = consumer
        self.writer = writer
        #: each partition's position in the store, as far as this run knows
        self.known: dict[tuple[str, int], int | None] = {}
        #: between a revocation and the next assignment: the group is rebalancing
        self.rebalancing = False
        self._lock = threading.Lock()

    def positions(self) -> dict[tuple[str, int], int | None]:
        """A copy of :attr:`known`."""
        with self._lock:
            return dict(self.known)

    def stored(self, offsets: dict) -> None:
        """A batch moved these positions (the store has committed it)."""
        with self._lock:
            for tp, offset in offsets.items():
                key = as_key(tp)
                old = self.known.get(key)
                self.known[key] = offset if old is None else max(old, offset)

    def seek(self, assigned: Any) -> None:
        """Point each partition at where the store resumes it."""
        if not assigned or self.consumer is None or self.writer is None:
            return
        points = self.writer.positions(assigned)
        reset = str(getattr(self.consumer, "config", {}).get("auto_offset_reset", "earliest"))
        fresh = [tp for tp in assigned if points.get(as_key(tp)) is None]
        for tp in assigned:
            point = points.get(as_key(tp))
            if point is not None:
                self.consumer.seek(tp, point)
        if fresh:
            (self.consumer.seek_to_end if reset == "latest" else self.consumer.seek_to_beginning)(
                *fresh
            )
        with self._lock:
            self.known.update(points)
        extra = {
            "run_id": self.run_id,
            "positions": {f"{t}[{p}]": o for (t, p), o in sorted(points.items())},
        }
        self.log.info("resume_from_store", extra=extra)

    def hold(self, consumer: Any) -> None:
        self.held = consumer
        consumer.pause(*consumer.assignment())

    def release(self) -> None:
        consumer, self.held = self.held, None
        if consumer is not None:
            consumer.resume(*consumer.assignment())

    def _say(self, event: str, partitions: Any) -> None:
        numbers = sorted(tp.partition for tp in partitions)
        extra = {"run_id": self.run_id, "group": self.group, "partitions": numbers}
        self.log.info(event, extra=extra)

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.rebalancing = True
        self._say("partitions_revoked", revoked)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.held is not None:  # called inside poll, before it fetches
            self.held.pause(*assigned)
        self.seek(assigned)
        self.rebalancing = False
        self._say("partitions_assigned", assigned)


#: How long each poll at the start gate waits (it fetches nothing; it keeps the group going).
GATE_POLL_MS = 100


def wait_at_gate(
    consumer: Any, listener: PartitionLog, gate: Callable[[], bool], stop: threading.Event
) -> None:
    """Take part in the group, fetching nothing, until ``gate()`` says go (or ``stop``).

    The scaling bench starts N workers this way, so that each gets its share of a
    pre-filled topic: without it the first worker up read 300,000 ticks' worth
    before the third had joined, and the table showed a worker at 0 %.
    """
    listener.hold(consumer)
    try:
        while not gate() and not stop.is_set():
            asked = time.monotonic()
            if consumer.poll(timeout_ms=GATE_POLL_MS):  # every partition is paused
                raise ConsumeError("records arrived for a paused partition at the start gate")
            # with every partition paused kafka-python's poll returns at once: without
            # this wait, the first worker of a scaling row spun 35 s of CPU at the gate
            stop.wait(max(0.0, GATE_POLL_MS / 1000 - (time.monotonic() - asked)))
    finally:
        listener.release()


def consume(
    settings: Settings,
    *,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    live: bool = False,
    stop: threading.Event | None = None,
    progress: bool = True,
    on_batch: Callable[[DecodedBatch, int], None] | None = None,
    hooks: ConsumeHooks | None = None,
    clients: KafkaClients = DEFAULT_CLIENTS,
    policy: Policy | None = None,
    gate: Callable[[], bool] | None = None,
) -> RunMetrics:
    """Consume until caught up (batch mode), ``max_messages``, idle, or ``stop`` is set.

    Caught up means the store's positions have reached every partition's end offset
    as read when the run started; the run's ``behind`` says how far it was from that
    when it ended any other way.

    ``live=True`` uses the :data:`LIVE` policy (until ``stop``, the file free
    between writes); otherwise :data:`BATCH`; ``policy`` gives any other (the
    bench's end-to-end run reads a known count while the producer still
    writes: ``replace(BATCH, stop_at_end=False)``). ``on_batch`` sees each batch
    once it is committed (a shorthand for ``hooks.after_kafka_commit``).
    ``gate``: join the group but fetch nothing until it returns True
    (:func:`wait_at_gate`); the run's time starts there.
    Returns the run's metrics, which are also stored in ``pipeline_metrics``.
    """
    at = locate(settings)
    policy = policy or (live_policy(at) if live else BATCH)
    hooks = hooks or ConsumeHooks()
    if on_batch is not None:
        hooks = ConsumeHooks(hooks.before_store_commit, hooks.before_kafka_commit, on_batch)
    idle_limit = settings.idle_timeout_s if idle_timeout_s is None else idle_timeout_s
    stop = stop or threading.Event()
    log = get_logger(settings.log_path)
    run_id = uuid.uuid4().hex[:12]
    started_at = datetime.now(UTC)
    log.info(
        "consume_start", extra={"run_id": run_id, "topic": settings.topic, "mode": policy.mode}
    )
    # A consumer among several (without the writer process they normally share) must
    # let go of a DuckDB file between batches, or it would keep the file's lock for its
    # whole run while the others wait outside the group (the bench found that).
    hold = policy.hold_store and settings.consumers == 1
    try:
        writer = open_writer(at, hold=hold)
    except (duckdb.Error, OSError, StoreUnavailable) as exc:
        raise _store_failure(exc, at, log, run_id) from None
    try:
        consumer = clients.consumer(settings, subscribe=False)
    except BaseException:
        writer.close()
        raise
    listener = PartitionLog(log, run_id, settings.consumer_group, consumer, writer)
    bar = tqdm(total=max_messages, unit="tick", desc="consume", disable=not progress)

    def refused(offsets: dict) -> None:
        shown = {f"{t}[{p}]": o for (t, p), o in ((as_key(tp), o) for tp, o in offsets.items())}
        log.warning("kafka_commit_refused", extra={"run_id": run_id, "offsets": shown})

    checkpoint = Checkpoint(consumer, writer, hooks, on_refused=refused)
    loop = _Loop(settings, policy, consumer, checkpoint, bar, log, run_id, listener)

    def rejoin() -> Any:
        """A new consumer in the group, in place of a stalled one (``_Loop.maybe_rejoin``)."""
        fresh = clients.consumer(settings, subscribe=False)
        listener.consumer = checkpoint.consumer = fresh
        join(fresh, settings, listener)
        return fresh

    if settings.consumers > 1:
        loop.rejoin = rejoin
    status = "ok"
    try:
        join(consumer, settings, listener, refused_topic(settings, clients))
        if gate is not None:
            wait_at_gate(consumer, listener, gate, stop)
            started_at = datetime.now(UTC)
            loop.last_data = time.monotonic()
        loop.targets = Targets.read(consumer, settings.topic) if policy.stop_at_end else None
        with gil_switch_interval(GIL_SWITCH_INTERVAL_S):
            loop.run(stop, max_messages, idle_limit)
    except KafkaError as exc:
        status = "failed"
        log.error("consume_error", extra={"run_id": run_id, "error": str(exc)})
        raise ConsumeError(
            explain(
                exc,
                settings,
                f"consuming {settings.topic}",
                "every batch stored so far is committed; a new run resumes after it",
                operation="read",
            )
        ) from None
    except (duckdb.Error, OSError, StoreUnavailable) as exc:
        status = "failed"
        failure = _store_failure(exc, at, log, run_id)
        if failure is None:
            raise
        raise failure from None
    except BaseException:
        status = "failed"
        raise
    finally:
        loop.close()
        bar.close()
        if status == "ok" and stop.is_set():
            status = "stopped"
        run = _run_metrics(run_id, policy, settings, started_at, loop.tally, status)
        run.lost_commits = checkpoint.lost_commits
        run.conflicts = writer.conflicts
        try:
            _finish(run, loop, writer, at, log)
        finally:
            # After the run's row: a client stuck with its group coordinator waits in
            # close() up to its request timeout (305 s by kafka-python's default), longer
            # than a stop's grace, and a worker killed there never recorded its run (CI:
            # a live lake worker that had rejoined after a stall). Leaving takes ms.
            loop.consumer.close(autocommit=False, timeout_ms=CLOSE_TIMEOUT_MS)
    return run


def _store_failure(exc: BaseException, at: Any, log: Any, run_id: str) -> StoreUnavailable | None:
    """The store's failure named (:mod:`marketstream.store.failures`) and logged."""
    failure = mid_run(exc, at)
    if failure is not None:
        log.error("store_error", extra={"run_id": run_id, "error": str(failure)})
    return failure


def _finish(run: RunMetrics, loop: _Loop, writer: Writer, at: Any, log: Any) -> None:
    """Record the run's row and close the writer.

    After a failure the store may be what failed (a full disk, a stopped catalog):
    the row is then attempted, and a second failure only logged, so the first one,
    the cause, is what the user sees. After a good run a failure here is named.
    """
    failed = run.status == "failed"
    try:
        try:
            run.behind = loop.targets.behind(writer) if loop.targets and not failed else 0
            writer.record_run(run)
        finally:
            writer.close()
    except (duckdb.Error, OSError, StoreUnavailable) as exc:
        if not failed:
            raise _store_failure(exc, at, log, run.run_id) or exc from None
        log.warning("run_not_recorded", extra={"run_id": run.run_id, "error": str(exc)})
    if run.lost_commits or run.conflicts:
        log.warning(
            "commits_refused",
            extra={
                "run_id": run.run_id,
                "lost_commits": run.lost_commits,
                "conflicts": run.conflicts,
            },
        )
    log.info("consume_end", extra={"run_id": run.run_id, **_loggable(run)})


def refused_topic(settings: Settings, clients: KafkaClients) -> Callable[[], None]:
    """Raise ``TopicAuthorizationFailedError`` if the broker refuses to describe the topic
    (a consumer's metadata lists only the topics a user may see, so it cannot tell)."""

    def check() -> None:
        admin = clients.admin(settings)
        try:
            found = admin.describe_topics([settings.topic])
        finally:
            admin.close()
        for entry in found:
            if entry.get("error_code") == TopicAuthorizationFailedError.errno:
                raise TopicAuthorizationFailedError({settings.topic})

    return check


def join(
    consumer: Any,
    settings: Settings,
    listener: PartitionLog,
    missing: Callable[[], None] | None = None,
) -> None:
    """Take partitions: every one by manual assignment for a lone consumer, a share of
    them through the group for one of several workers.

    Why manual for one: it has no group to wait for. A consumer that was killed
    stays a member of its group until its session times out (45 s by default), and
    a new one subscribing sat in the rebalance for that long (36 s, measured after
    three SIGKILLs). Its Kafka commits still go to the group, for lag tools.
    """
    if settings.consumers == 1:
        partitions = topic_partitions(consumer, settings.topic, missing)
        consumer.assign(partitions)
        listener.on_partitions_assigned(set(partitions))
    else:
        # The topic's partitions known before joining. A first member that joins
        # without them leads the group and hands out nothing, then rejoins when they
        # arrive; in that rejoin, three times here under load (2026-12-02, kafka-python
        # 3.0.12), a worker waited for ever for its coordinator while the others took
        # every partition (see STALLED_MARGIN_S). Nothing is raised for a topic
        # that does not exist yet: live workers may start before its first tick.
        consumer.partitions_for_topic(settings.topic)
        consumer.subscribe([settings.topic], listener=listener)


def _run_metrics(
    run_id: str,
    policy: Policy,
    settings: Settings,
    started_at: datetime,
    tally: Tally,
    status: str,
) -> RunMetrics:
    ended_at = datetime.now(UTC)
    elapsed = (ended_at - started_at).total_seconds()
    return RunMetrics(
        run_id=run_id,
        mode=policy.mode,
        topic=settings.topic,
        started_at=started_at.replace(tzinfo=None),
        ended_at=ended_at.replace(tzinfo=None),
        elapsed_s=elapsed,
        messages_processed=tally.processed,
        rows_inserted=tally.inserted,
        duplicates=tally.valid - tally.inserted,
        errors=tally.errors,
        max_event_time=tally.max_event,
        throughput_per_s=tally.processed / elapsed if elapsed > 0 else 0.0,
        status=status,
    )


def _loggable(run: RunMetrics) -> dict[str, object]:
    return {k: v for k, v in run.__dict__.items() if k != "run_id"}
