"""A store that fails mid-run is named in one line, and the next run resumes exactly.

For real, on a real broker: a full disk (a small tmpfs), a read-only folder, and a
DuckDB file another program holds (the lake's catalog stopped mid-run is in
``lake/test_lake_failures.py``). Each failure must be one line on stderr naming the
cause and its fix, exit 2, with no Kafka offset committed past what the store holds;
once the cause is gone, a plain rerun ends with every tick stored once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from marketstream import store
from marketstream.clients import DEFAULT_CLIENTS
from marketstream.errors import StoreUnavailable
from marketstream.produce import produce_ticks
from marketstream.settings import Settings
from marketstream.store.files import FileWriter
from marketstream.ticks import Tick, generate_ticks
from support.processes import cli
from support.stored import committed_offsets, store_counts, store_difference

pytestmark = pytest.mark.usefixtures("no_stray_children")

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")
ROOT = os.geteuid() == 0


def assert_named_failure(done: subprocess.CompletedProcess[str], *says: str) -> str:
    """Exit 2 and one line on stderr saying each of ``says``: no traceback."""
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("marketstream: error: "), done.stderr
    for words in says:
        assert words in lines[0], lines[0]
    print(lines[0])  # the line a user sees (shown with -s)
    return lines[0]


def assert_nothing_committed_past_the_store(settings: Settings) -> None:
    """The group's committed offsets are at or below the store's positions."""
    positions = {p: o for (t, p), (o, _) in store.partition_positions(settings.db_path).items()}
    admin = DEFAULT_CLIENTS.admin(settings)
    try:
        committed = committed_offsets(admin, settings)
    finally:
        admin.close()
    assert all(o <= (positions.get(p) or 0) for p, o in committed.items()), (committed, positions)


def assert_everything_stored_once(settings: Settings, ticks: list[Tick]) -> None:
    done = cli(settings, "consume", "-q")
    assert done.returncode == 0, done.stderr
    n = len(ticks)
    assert store_counts(settings.db_path) == (n, n, n)
    assert store_difference(settings.db_path, ticks) == (0, 0)


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small file system of its own at ``folder`` (root only), unmounted after."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


@pytest.mark.skipif(not ROOT, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_full_disk_is_named_and_the_run_after_more_space_is_exact(fresh, tmp_path) -> None:
    first = generate_ticks(SYMBOLS, 1_000, seed=1)
    more = generate_ticks(SYMBOLS, 40_000, seed=2, start=first[-1].timestamp)[3:]
    with tmpfs(tmp_path / "disk", "3m") as disk:
        settings = fresh.with_(db_path=disk / "ticks.duckdb")
        produce_ticks(first, settings, progress=False)
        assert cli(settings, "consume", "-q").returncode == 0
        produce_ticks(more, settings, progress=False)  # ~6 MiB of DuckDB: more than fits

        done = cli(settings, "consume", "-q", check=False)
        line = assert_named_failure(
            done, f"the disk holding {settings.db_path} is full", "free space"
        )
        assert "resumes there" in line  # mid-run: what the run left, and what to do next
        assert_nothing_committed_past_the_store(settings)

        remount(disk, "size=64m")
        assert_everything_stored_once(settings, first + more)


def test_a_read_only_folder_is_named_and_the_run_after_is_exact(fresh, tmp_path) -> None:
    """Root writes through any mode bits, so as root the folder is a tmpfs remounted
    read-only; as another user, the folder and file lose their write bits."""
    first = generate_ticks(SYMBOLS, 300, seed=3)
    more = generate_ticks(SYMBOLS, 300, seed=4, start=first[-1].timestamp)[3:]
    with contextmanager(_writable_folder)(tmp_path / "store") as (folder, lock, unlock):
        settings = fresh.with_(db_path=folder / "ticks.duckdb")
        produce_ticks(first, settings, progress=False)
        assert cli(settings, "consume", "-q").returncode == 0
        produce_ticks(more, settings, progress=False)

        lock()
        done = cli(settings, "consume", "-q", check=False)
        says = "read-only file system" if ROOT else "may not write"
        assert_named_failure(done, str(settings.db_path), says)
        unlock()
        assert_nothing_committed_past_the_store(settings)
        assert_everything_stored_once(settings, first + more)


def _writable_folder(folder: Path) -> Iterator[tuple[Path, object, object]]:
    """A folder, and how to make it read-only and writable again for this user."""
    if ROOT:
        with tmpfs(folder, "64m"):
            yield folder, lambda: remount(folder, "ro"), lambda: remount(folder, "rw")
        return
    folder.mkdir()

    def modes(folder_mode: int, file_mode: int) -> None:
        for path in folder.iterdir():
            path.chmod(file_mode)
        folder.chmod(folder_mode)

    try:
        yield folder, lambda: modes(0o555, 0o444), lambda: modes(0o755, 0o644)
    finally:
        modes(0o755, 0o644)


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_file_held_by_another_program_names_it_and_the_run_after_is_exact(fresh) -> None:
    ticks = generate_ticks(SYMBOLS, 200, seed=5)
    produce_ticks(ticks, fresh, progress=False)
    store.init_db(fresh.db_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(fresh.db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        with pytest.raises(StoreUnavailable) as caught:
            FileWriter(fresh.db_path, lock_timeout_s=0.5)  # the kit's own wait is 30 s
        line = str(caught.value)
        assert f"{fresh.db_path} is held by another program" in line
        assert f"PID {holder.pid}" in line and "python" in line
    finally:
        holder.communicate("", timeout=30)
    assert_everything_stored_once(fresh, ticks)
