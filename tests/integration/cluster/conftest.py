"""The real 3-node cluster the cluster integration tests share: started once per session
(``temporary_cluster``: free consecutive ports, storage in a temporary folder) and
stopped at the end, with the few operations a failover test needs."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from marketstream.broker import cluster
from marketstream.broker.cluster import ClusterStatus
from marketstream.settings import Settings


@dataclass(frozen=True)
class LocalCluster:
    """A running local cluster: settings naming all its nodes, and its cluster dir."""

    settings: Settings
    cluster_dir: Path

    def status(self) -> ClusterStatus:
        """Every node: pid, reachable, which one is the active controller."""
        return cluster.cluster_status(self.settings, cluster_dir=self.cluster_dir)

    def kill(self, node_id: int) -> int:
        """SIGKILL one node's JVM and reap it (it is our child); its pid."""
        pid = cluster.node_pids(self.settings, cluster_dir=self.cluster_dir)[node_id]
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(timeout=30)
        return pid

    def restart(self) -> ClusterStatus:
        """Start whichever nodes are not running, and wait until all answer."""
        return cluster.start_cluster(self.settings, cluster_dir=self.cluster_dir)


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three KRaft nodes for the whole session."""
    tmp = tmp_path_factory.mktemp("cluster")
    with cluster.temporary_cluster(Settings.from_env(), tmp) as settings:
        yield LocalCluster(settings, tmp / f"cluster-{settings.bootstrap_host_port[1]}")


@pytest.fixture
def on_cluster(kafka_cluster: LocalCluster, tmp_path: Path) -> Settings:
    """Per-test settings on the cluster: own topic, group, DuckDB file, CSV, log, output."""
    name = f"ticks-{uuid.uuid4().hex[:8]}"
    return kafka_cluster.settings.with_(
        topic=name,
        consumer_group=f"g-{name}",
        db_path=tmp_path / "market.duckdb",
        csv_path=tmp_path / "ticks.csv",
        log_path=tmp_path / "pipeline.log",
        output_dir=tmp_path / "output",
        idle_timeout_s=10.0,
    )
