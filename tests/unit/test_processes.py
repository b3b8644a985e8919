"""Child processes (:mod:`marketstream.processes`): free ports, the environment a child
gets, and stopping a whole process tree, even when its parent is killed."""

from __future__ import annotations

import socket
import subprocess
import sys

import psutil
import pytest

from marketstream.processes import child_env, free_port, process_family, stop_process_tree
from marketstream.settings import Settings
from support.processes import GRACE_S
from support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("no_stray_children")


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_child_env_rebuilds_the_same_settings(monkeypatch, tmp_path):
    """Subprocesses (API, Voila) must see exactly the settings live mode runs with."""
    settings = Settings().with_(
        bootstrap_servers="127.0.0.1:19092",
        topic="t-live",
        db_path=tmp_path / "x.duckdb",
        symbols=("AAA", "BBB"),
        live_rate=7.5,
        api_port=18080,
        voila_port=18866,
        sasl_password="s3cret",
    )
    for name, value in child_env(settings, base={}).items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == settings


def test_stop_process_tree_ends_grandchildren_too(tmp_path):
    """Voila's kernels are its children: stopping Voila must not orphan them."""
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    wait_until(lambda: len(process_family(proc)) == 3, 30, "the shell's two children")
    family = process_family(proc)
    stop_process_tree(proc, grace_s=5)
    _, alive = psutil.wait_procs(family, timeout=GRACE_S)
    assert not alive


def test_servers_die_with_a_killed_parent(tmp_path):
    """Even ``kill -9`` of live mode leaves no server: children carry a parent-death signal."""
    script = (
        "import sys; from pathlib import Path; from marketstream.processes import start_child; "
        "c = start_child('sleeper', ['sleep', '60'], {}, Path(sys.argv[1]), 'x'); "
        "print(c.proc.pid, flush=True); import time; time.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "sleeper.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    parent.stdout.close()
    _, alive = psutil.wait_procs([child], timeout=GRACE_S)
    assert not alive
