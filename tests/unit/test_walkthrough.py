"""The walkthrough's pure parts: the progress line, the reconciliation of a store with
Kafka, the crash points, the scale-out group's holdings, and the committed notebooks."""

from __future__ import annotations

import json

import nbformat
import pytest

from marketstream import crash, progress, reconcile, scale_out
from marketstream.notebook_runs import NOTEBOOKS, WITH_OUTPUTS, sandbox_env
from marketstream.settings import PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


def test_the_progress_line_ends_at_100_percent():
    assert progress.render("produce", 0, 150, "rows") == (
        "produce [..............................] 0/150 rows (0 %)"
    )
    assert progress.render("produce", 150, 150, "rows").endswith("] 150/150 rows (100 %)")
    assert progress.render("consume", 0, 0, "messages").endswith("(100 %)")  # nothing to do
    bar = progress.Progress("consume", 10, "messages")  # outside IPython: printed at the end
    bar.update(4)
    bar.finish()
    assert bar.done == 10


def test_the_progress_line_is_printed_once_outside_a_notebook(capsys):
    with progress.Progress("produce", 3, "rows") as bar:
        for _ in progress.counted(range(3), bar):
            pass
        bar.finish()
    assert capsys.readouterr().out == "produce [" + "#" * 30 + "] 3/3 rows (100 %)\n"


def test_reconcile_counts_expected_stored_missing_and_duplicated_per_partition():
    ranges = {0: (0, 3), 1: (2, 5), 2: (0, 0)}
    stored = [(0, 0), (0, 1), (0, 2), (1, 2), (1, 3), (1, 3)]  # p1: offset 3 twice, 4 missing
    table = reconcile.reconcile(ranges, stored)
    assert table.to_dict("index") == {
        0: {"expected": 3, "stored": 3, "missing": 0, "duplicated": 0},
        1: {"expected": 3, "stored": 2, "missing": 1, "duplicated": 1},
        2: {"expected": 0, "stored": 0, "missing": 0, "duplicated": 0},
    }
    with pytest.raises(reconcile.NotExactlyOnce, match="partition 1: 1 missing, 1 duplicated"):
        reconcile.check(table)


def test_reconcile_passes_a_store_that_holds_every_message_once():
    table = reconcile.reconcile({0: (0, 2), 1: (0, 1)}, [(1, 0), (0, 1), (0, 0)])
    assert reconcile.check(table) == (
        "exactly once: all 3 messages of 2 partitions stored, none missing, none duplicated"
    )


def test_reconcile_names_a_partition_only_the_store_knows():
    table = reconcile.reconcile({0: (0, 1)}, [(0, 0), (3, 7)])
    assert table.loc[3, "duplicated"] == 0 and table.loc[3, "expected"] == 0


def test_crash_points_are_a_step_and_a_batch_number():
    assert crash.parse("store-commit:4") == ("store-commit", 4)
    assert crash.parse("kafka-commit:1") == ("kafka-commit", 1)
    for bad in ("store-commit", "store-commit:0", "elsewhere:2", "kafka-commit:x"):
        with pytest.raises(ValueError, match="crash point"):
            crash.parse(bad)
    hooks = crash.hooks("kafka-commit:3")
    assert hooks.before_kafka_commit is not None and hooks.before_store_commit is None


def test_a_worker_holds_what_its_last_assignment_said(tmp_path):
    log = tmp_path / "worker.jsonl"
    assert scale_out.held(log) == []
    lines = [
        {"event": "partitions_assigned", "partitions": [0, 1]},
        {"event": "partitions_revoked", "partitions": [0, 1]},
        {"event": "partitions_assigned", "partitions": [2]},
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert scale_out.held(log) == [2]
    assert scale_out.covers_once([[2], [0, 1]], 3)
    assert not scale_out.covers_once([[2], [1]], 3)
    assert not scale_out.covers_once([[2], [1, 2], [0]], 3)


def test_the_sandbox_starts_every_setting_at_its_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MARKET_TICKS_PER_SYMBOL", "7")
    monkeypatch.setenv("KAFKA_TOPIC", "mine")
    env = sandbox_env("127.0.0.1:1234", tmp_path, tmp_path / "kafka")
    assert "MARKET_TICKS_PER_SYMBOL" not in env
    assert env["KAFKA_TOPIC"].startswith("market_ticks-") and env["KAFKA_TOPIC"] != "mine"
    assert env["MARKETSTREAM_HOME"] == str(tmp_path)


def test_the_notebooks_are_committed_executed_and_small():
    """A reader sees the tables and charts without running anything; plotly.js is not
    embedded (it would be 3.5 MB); 05, the live page, has no outputs (nbval runs it
    without comparing)."""
    for name in NOTEBOOKS:
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        if name not in WITH_OUTPUTS:
            assert all(c.execution_count is None and not c.outputs for c in code), name
            continue
        assert all(c.execution_count is not None for c in code), name
        assert path.stat().st_size < 200_000, (name, path.stat().st_size)


def test_no_committed_output_shows_a_progress_bar_short_of_100_percent():
    for name in WITH_OUTPUTS:
        text = (NOTEBOOK_DIR / f"{name}.ipynb").read_text()
        assert "0%|" not in text, name  # tqdm's frozen widget text
        for line in text.split("\\n"):
            if "] " in line and " %)" in line:
                assert "(100 %)" in line, (name, line)


def test_the_groups_committed_offsets_wait_out_a_coordinator_still_loading():
    """A 3-node cluster just started answered an offset fetch with "coordinator load in
    progress" (CI, notebook 03): a retriable state, asked again, not a failed notebook."""
    from kafka import TopicPartition
    from kafka.errors import CoordinatorLoadInProgressError
    from kafka.structs import OffsetAndMetadata

    from marketstream import inspect
    from marketstream.clients import KafkaClients
    from marketstream.settings import Settings

    settings = Settings().with_(topic="t", consumer_group="g")
    answers: list[object] = [
        CoordinatorLoadInProgressError("loading"),
        {"g": {TopicPartition("t", 0): OffsetAndMetadata(7, "", -1)}},
    ]

    class LoadingAdmin:
        def __init__(self, **config: object) -> None:
            pass

        def list_group_offsets(self, groups: dict) -> dict:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer  # type: ignore[return-value]

        def close(self) -> None:
            pass

    assert inspect.committed(settings, KafkaClients(admin_class=LoadingAdmin)) == {0: 7}
    assert answers == []
