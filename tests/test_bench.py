"""The benchmark and the fast paths it measures.

* A smoke run of ``run_bench`` with a small N on the session broker: every
  required figure is there and positive, the chart exists, and nothing is left
  behind (topics, worker processes). No timing is asserted: figures depend on
  the machine; only that the benchmark runs is tested, so it cannot rot.
* The consumer's batch decoder must accept exactly what the per-message
  decoder accepts, with the same values, and give the same dead-letter
  reasons: checked on hand-picked edge cases and on thousands of random
  mutations of valid messages.
* The producer's fast timestamp format and key-caching partitioner must give
  exactly the text and partitions of the plain path.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import namedtuple
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from marketstream.bench import REQUIRED_KEYS, Plan, percentile, run_bench
from marketstream.clients import DEFAULT_CLIENTS, KeyCachingPartitioner
from marketstream.decode import MAX_MESSAGE_BYTES, decode_records
from marketstream.ticks import TickError, format_timestamp, generate_ticks, tick_from_message

Record = namedtuple("Record", "topic partition offset key value")

# --------------------------------------------------------------------------- smoke


@pytest.mark.integration
@pytest.mark.parametrize("generator", ["wrk", "python"])
def test_bench_smoke_writes_every_figure_and_the_chart(kafka, tmp_path, generator):
    """Both API load generators: wrk when installed (.ci/run installs it), and Python's."""
    if generator == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    output = tmp_path / "bench" / "latest.json"
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    assert run_bench(kafka, 5_000, str(output), progress=False, load_generator=generator) == 0

    result = json.loads(output.read_text())
    for key in REQUIRED_KEYS:
        value = result[key]
        assert isinstance(value, int | float) and value > 0, (key, value)
    assert result["n_ticks"] == 5_000
    assert result["api_load_generator"] == generator
    assert result["api_errors"] == 0
    assert result["consume_vs_ceiling"] > 0 and result["speedup_vs_baseline"] > 0
    assert result["phases"]["freshness"]["never_seen"] == 0
    assert set(result["targets"]) == {
        "consume_vs_ceiling",
        "speedup_vs_baseline",
        "freshness_p99_s",
        "api_p99_ms",
    }
    assert (tmp_path / "bench" / "latest.html").stat().st_size > 0
    assert result["chart"]["html"] == str(tmp_path / "bench" / "latest.html")

    # nothing left behind: the bench's topics and worker processes are gone
    admin = DEFAULT_CLIENTS.admin(kafka)
    try:
        assert not [t for t in admin.list_topics() if t.startswith("marketstream-bench-")]
    finally:
        admin.close()
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left


def test_plan_scales_phases_down_for_a_smoke_run():
    small, big = Plan.for_ticks(5_000), Plan.for_ticks(1_000_000)
    assert small.baseline_n == 1_000 and big.baseline_n == 20_000
    assert small.repeats == 1 and big.repeats == 2
    assert small.live_s < big.live_s


def test_percentile_interpolates_between_ranks():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


# --------------------------------------------------------------------------- consumer fast path


def per_message(records: list[Record]) -> tuple[list[tuple], list[tuple]]:
    """What the consumer did before the batch decoder: tick_from_message, one by one."""
    good, dead = [], []
    for r in records:
        try:
            if r.value is None:
                raise TickError("empty message (null value)")
            if len(r.value) > MAX_MESSAGE_BYTES:
                raise TickError(f"message of {len(r.value)} bytes exceeds {MAX_MESSAGE_BYTES}")
            tick = tick_from_message(r.value)
        except TickError as exc:
            dead.append((r.offset, str(exc)))
            continue
        event_time = tick.timestamp.replace(tzinfo=None)
        good.append((tick.symbol, event_time, tick.price, tick.volume, r.offset))
    return good, dead


def batch_decoded(records: list[Record]) -> tuple[list[tuple], list[tuple]]:
    batch = decode_records(records, datetime.now(UTC))
    columns = ("symbol", "event_time", "price", "volume", "offset")
    good = list(zip(*(batch.ticks.column(c).to_pylist() for c in columns), strict=True))
    dead = list(
        zip(batch.dead["offset"].to_pylist(), batch.dead["reason"].to_pylist(), strict=True)
    )
    return good, dead


GOOD = b'{"timestamp":"2025-01-06T14:30:00.000000Z","symbol":"SP500","price":5900.5,"volume":7}'
EDGE_CASES = [
    GOOD,
    GOOD.replace(b"5900.5", b"5900"),  # integer price
    GOOD.replace(b"5900.5", b"5.9005e3"),
    GOOD.replace(b"5900.5", b"-0.0"),
    GOOD.replace(b"5900.5", b"NaN"),
    GOOD.replace(b"5900.5", b"1e999"),
    GOOD.replace(b"5900.5", b'"5900.5"'),
    GOOD.replace(b"5900.5", b"true"),
    GOOD.replace(b":7}", b":7.0}"),  # integral float volume: valid, per-message path
    GOOD.replace(b":7}", b":7.5}"),
    GOOD.replace(b":7}", b":-7}"),
    GOOD.replace(b":7}", b":null}"),
    GOOD.replace(b":7}", b':7,"extra":{"a":1}}'),
    GOOD.replace(b'"volume":7', b'"price":-1,"volume":7'),  # duplicate key
    GOOD.replace(b"SP500", b"sp500"),
    GOOD.replace(b"SP500", b"SP\\u0035"),  # an escape: per-message path
    GOOD.replace(b"SP500", b"S\xffP"),
    GOOD.replace(b"SP500", b"{}"),
    GOOD.replace(b"SP500", b"X" * 33),
    GOOD.replace(b"000000Z", b"000000+00:00"),  # other ISO forms: per-message path
    GOOD.replace(b".000000Z", b"Z"),
    GOOD.replace(b"2025-01-06", b"2025-02-30"),
    GOOD.replace(b"14:30", b"24:30"),
    GOOD.replace(b"2025", b"1969"),
    GOOD.replace(b"2025", b"2201"),
    GOOD.replace(b"2025", b"2200"),
    GOOD + b"{}",
    GOOD + GOOD,
    GOOD + b"\n",
    b" " + GOOD,
    GOOD[:-1],
    b"null",
    b"{}null",
    b"{}",
    b"[]",
    b"5",
    b"",
    b"\xff\xfe",
    None,
    GOOD.replace(b"SP500", b"P" * 30).replace(b"7}", b"7" + b" " * (MAX_MESSAGE_BYTES + 1) + b"}"),
]


@pytest.mark.parametrize("value", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_batch_decoder_matches_per_message_on_edge_cases(value):
    # each case between good ticks, so a bad one cannot hide in an all-bad batch
    ticks = generate_ticks(("A", "B"), 3, seed=1)
    values = [t.to_message() for t in ticks[:3]] + [value] + [t.to_message() for t in ticks[3:]]
    records = [Record("t", i % 2, i, b"k", v) for i, v in enumerate(values)]
    assert batch_decoded(records) == per_message(records)


def test_batch_decoder_matches_per_message_on_random_mutations():
    rng = random.Random(20250106)
    base = [t.to_message() for t in generate_ticks(("SP500", "A.B-C_9", "X"), 100, seed=3)]
    alphabet = [*b'{}[]",:0123456789.eE+- \t\\nulltrfsZT', 0xFF, 0xC3, 0x00, 0x0A]
    snippets = [b"null", b"true", b"1e999", b"NaN", b"-0", b'"x"', b"{}", b",", b'"a":1,']

    def mutate(value: bytes) -> bytes:
        out = bytearray(value)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(out) + 1)
            roll = rng.random()
            if roll < 0.3 and out:
                out[min(pos, len(out) - 1)] = rng.choice(alphabet)
            elif roll < 0.5 and out:
                del out[min(pos, len(out) - 1)]
            elif roll < 0.75:
                out[pos:pos] = bytes([rng.choice(alphabet)])
            else:
                out[pos:pos] = rng.choice(snippets)
        return bytes(out)

    for _ in range(1_500):
        records = []
        for offset in range(rng.randint(1, 40)):
            roll = rng.random()
            value = rng.choice(base) if roll < 0.5 else mutate(rng.choice(base))
            records.append(Record("t", rng.randrange(3), offset, b"k", value))
        assert batch_decoded(records) == per_message(records), [r.value for r in records]


def test_batch_decoder_keeps_record_order_and_offsets_per_partition():
    ticks = generate_ticks(("A", "B", "C"), 50, seed=2)
    records = [Record("t", i % 3, 100 + i, t.key, t.to_message()) for i, t in enumerate(ticks)]
    records.insert(7, Record("t", 1, 99, None, b"junk"))  # a slow-path row amid fast ones
    batch = decode_records(records, datetime.now(UTC))
    assert batch.ticks["offset"].to_pylist() == [r.offset for r in records if r.value != b"junk"]
    # the offset committed per partition is the next one to read: highest seen + 1
    assert {tp.partition: o for tp, o in batch.offsets.items()} == {0: 248, 1: 249, 2: 250}


# --------------------------------------------------------------------------- producer fast paths


timestamps = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
) | st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), ZoneInfo("UTC")]),
)


@settings(max_examples=300, deadline=None)
@given(ts=timestamps)
def test_format_timestamp_fast_path_is_exactly_the_strftime_text(ts):
    """``isoformat`` for UTC and naive times from year 1000 on, strftime's text always."""
    aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)  # naive: taken as UTC
    assert format_timestamp(ts) == aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
