"""The kit on a real 3-node cluster: topics get 3 replicas and ``min.insync.replicas=2``
(and a cap is said when more are asked for), an existing under-replicated topic is
used with a warning, the papermill pipeline runs end to end, and ``marketstream broker
up --nodes 3`` / ``status --json`` / ``down`` work through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from marketstream.broker import cluster, fetch_kafka
from marketstream.clients import DEFAULT_CLIENTS
from marketstream.logs import read_log
from marketstream.pipeline import run_pipeline
from marketstream.produce import ensure_topic, produce_ticks, replication_plan
from marketstream.settings import Settings
from marketstream.ticks import generate_ticks
from support.stored import store_counts
from support.waiting import wait_until


def _asked(settings: Settings) -> tuple[list[int], str] | None:
    """(replicas of each partition, min.insync.replicas), or None while the broker asked
    does not know the topic's partitions or config yet (CI once read its config beside
    an empty partition list)."""
    admin = DEFAULT_CLIENTS.admin(settings)
    try:
        [topic] = admin.describe_topics([settings.topic])
        replicas = [len(p["replica_nodes"]) for p in topic["partitions"]]
        resource = ConfigResource(
            ConfigResourceType.TOPIC, settings.topic, configs={"min.insync.replicas": None}
        )
        configs = admin.describe_configs([resource], config_filter="all")
    finally:
        admin.close()
    found = configs["topic"].get(settings.topic, {}).get("min.insync.replicas")
    return (replicas, found["value"]) if found and len(replicas) == settings.partitions else None


def replication(settings: Settings) -> tuple[list[int], str]:
    """(replicas of each partition, min.insync.replicas) of the settings' topic, from Kafka.

    A new topic's config reaches each broker a moment after its creation, and each
    admin client may ask a different broker: one answering is no promise for the next
    (CI read it, then missed it on the next call). So this asks until one answers.
    """
    return wait_until(lambda: _asked(settings), 30, f"{settings.topic}'s config from a broker")


def create_by_hand(settings: Settings, replicas: int, min_insync: int) -> None:
    """A topic made by someone else, the way they chose."""
    admin = DEFAULT_CLIENTS.admin(settings)
    try:
        admin.create_topics(
            {
                settings.topic: {
                    "num_partitions": settings.partitions,
                    "replication_factor": replicas,
                    "configs": {"min.insync.replicas": str(min_insync)},
                }
            },
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    # as a pre-existing topic would be, its config known to the brokers: five asks in a
    # row answered (each admin client may ask another of the three)
    wait_until(lambda: all(_asked(settings) for _ in range(5)), 30, "the topic's config")


# --------------------------------------------------------------------------- replication


def test_topics_get_three_replicas_and_min_insync_two(on_cluster: Settings) -> None:
    heard: list[str] = []
    assert ensure_topic(on_cluster, say=heard.append) is True
    assert heard == []
    # a new topic's configs reach every broker's metadata a moment after its creation
    wait_until(lambda: _asked(on_cluster) == ([3, 3, 3], "2"), 30, "the topic's replication")
    assert ensure_topic(on_cluster, say=heard.append) is False
    assert heard == []  # fully replicated: nothing to warn about


def test_more_than_the_cluster_holds_is_capped_and_said(on_cluster: Settings) -> None:
    wide = on_cluster.with_(replication_factor=5, min_insync_replicas=4)
    heard: list[str] = []
    assert ensure_topic(wide, say=heard.append) is True
    assert replication(wide) == ([3, 3, 3], "3")
    assert heard == [replication_plan(wide, 3).capped]
    assert "replication factor 3, not KAFKA_REPLICATION_FACTOR=5: the cluster has 3" in heard[0]
    [event] = [e for e in read_log(wide.log_path) if e["event"] == "topic_replication_capped"]
    assert (event["brokers"], event["replication_factor"], event["min_insync_replicas"]) == (
        3,
        3,
        3,
    )


@pytest.mark.parametrize(
    ("replicas", "min_insync", "warned"),
    [(1, 1, "has 1 replica on a cluster of 3 brokers"), (3, 1, "has min.insync.replicas=1")],
)
def test_an_under_replicated_topic_is_used_with_a_warning(
    on_cluster: Settings, replicas: int, min_insync: int, warned: str
) -> None:
    create_by_hand(on_cluster, replicas, min_insync)
    ticks = generate_ticks(("SP500", "DAX"), 20, seed=3)
    summary = produce_ticks(ticks, on_cluster, progress=False)
    assert (summary.sent, summary.failed) == (40, 0)
    [line] = summary.problems
    assert line.startswith(f"topic {on_cluster.topic} {warned}")
    assert replication(on_cluster) == ([replicas] * 3, str(min_insync))  # left as it was


# --------------------------------------------------------------------------- pipeline


def test_the_pipeline_runs_on_the_cluster(on_cluster: Settings) -> None:
    summary = run_pipeline(on_cluster, progress=False)
    assert summary.rows == 150
    assert summary.broker_started is False  # the cluster answered: nothing started
    assert replication(on_cluster) == ([3, 3, 3], "2")
    assert store_counts(on_cluster.db_path) == (150, 150, 150)
    again = run_pipeline(on_cluster, progress=False)  # same seed, same ticks: stored once
    assert again.rows == 150


# --------------------------------------------------------------------------- CLI


def _jvms_mentioning(path: Path) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline", "status"])
        if p.info.get("status") != psutil.STATUS_ZOMBIE
        and "java" in " ".join(p.info.get("cmdline") or [])
        and str(path) in " ".join(p.info.get("cmdline") or [])
    ]


def test_broker_up_status_down_through_the_cli(tmp_path: Path) -> None:
    """As a user runs it, in child processes: the nodes outlive ``broker up`` and are
    stopped by a later ``broker down`` that is not told how many there are."""
    real = Settings.from_env()
    fetch_kafka(real)
    home = tmp_path / "home"
    home.mkdir()
    # the jars are shared with the rest of the tests; the run dirs are this test's own
    (home / real.kafka_version).symlink_to(real.kafka_home / real.kafka_version)
    port = cluster.free_base_port(3)
    env = {
        **os.environ,
        "MARKETSTREAM_KAFKA_HOME": str(home),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
    }
    cluster_dir = home / "run" / f"cluster-{port}"

    def broker(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "marketstream.cli", "broker", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    try:
        started = time.monotonic()
        up = broker("up", "--nodes", "3")
        took = time.monotonic() - started
        assert up.returncode == 0, up.stderr + up.stdout
        servers = ",".join(f"127.0.0.1:{port + i}" for i in range(3))
        assert f"export KAFKA_BOOTSTRAP_SERVERS={servers}" in up.stdout
        assert "3 of 3 nodes up" in up.stdout
        assert "starting Kafka nodes 1, 2, 3 of 3" in up.stderr

        status = broker("status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["bootstrap_servers"] == servers
        nodes = data["nodes"]
        assert [(n["node_id"], n["port"], n["reachable"]) for n in nodes] == [
            (1, port, True),
            (2, port + 1, True),
            (3, port + 2, True),
        ]
        leaders = [n["node_id"] for n in nodes if n["active_controller"]]
        assert leaders == [data["controller_id"]]
        assert all(psutil.pid_exists(n["pid"]) for n in nodes)
        rss = [psutil.Process(n["pid"]).memory_info().rss / 2**20 for n in nodes]
        print(
            f"\nbroker up --nodes 3: {took:.1f} s (CLI start included); RSS per node "
            f"{', '.join(f'{r:.0f}' for r in rss)} MiB; active controller {leaders[0]}"
        )

        text = broker("status")
        assert "3 of 3 nodes up" in text.stdout and ", active controller" in text.stdout
        again = broker("up", "--nodes", "3")  # all up: nothing is started twice
        assert again.returncode == 0 and "starting" not in again.stderr
        assert json.loads(broker("status", "--json").stdout)["nodes"] == nodes
    finally:
        down = broker("down")
    assert down.returncode == 0, down.stderr
    assert "cluster stopped (nodes 1, 2, 3)" in down.stdout
    assert _jvms_mentioning(cluster_dir) == []
    after = json.loads(broker("status", "--nodes", "3", "--json").stdout)
    assert [(n["pid"], n["reachable"]) for n in after["nodes"]] == [(None, False)] * 3
    assert "no broker started by marketstream was running" in broker("down").stdout
