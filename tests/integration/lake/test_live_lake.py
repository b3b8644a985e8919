"""``marketstream live --consumers 2`` on DuckLake: two worker processes share the stream."""

from __future__ import annotations

import re
import signal

import pytest

from marketstream import store
from support.live import live_cli, wait_for_workers_to_store, worker_logs

pytestmark = pytest.mark.usefixtures("no_stray_children")


def test_live_mode_with_two_consumer_workers_on_the_lake(lake_settings) -> None:
    with live_cli(lake_settings, "--no-api", "--no-voila", "--consumers", "2") as live:
        wait_for_workers_to_store(live, workers=2, partitions=lake_settings.partitions)
        live.proc.send_signal(signal.SIGINT)
        assert live.proc.wait(timeout=90) == 0, live.output()
    assert not live.leftovers
    produced = int(re.findall(r"produced (\d+)", live.output())[-1])
    at = store.locate(lake_settings)
    report = store.stats(at)
    assert 0 < report["ticks"] <= produced
    assert report["distinct_ticks"] == report["ticks"]  # nothing stored twice
    assert len(report["partitions"]) == 3
    runs = store.pipeline_runs(at)
    assert list(runs["mode"]) == ["live", "live"]  # one row per worker process
    assert all(runs["rows_inserted"] > 0), worker_logs(lake_settings)  # both stored
    assert int(runs["rows_inserted"].sum()) == report["ticks"], worker_logs(lake_settings)
