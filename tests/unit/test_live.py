"""Live mode (:mod:`marketstream.live`) without a broker: the paced producer's schedule,
and the one Voila configuration every way of serving the page uses.
``marketstream live`` end to end on a real broker: tests/integration/test_live.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from marketstream.live import VOILA_CONFIG, tick_schedule, voila_command
from marketstream.pacing import MAX_BACKLOG_S
from marketstream.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.usefixtures("no_stray_children")


def test_schedule_is_anchored_so_jitter_never_accumulates():
    start, interval = 100.0, 1 / 12
    due, anchor = tick_schedule(start, 1200, interval, now=start + 99.9)
    assert anchor == start and due == pytest.approx(start + 100.0)
    due, anchor = tick_schedule(start, 1200, interval, now=start + 100.5)  # a little late
    assert anchor == start and due == pytest.approx(start + 100.0)


def test_schedule_skips_a_long_backlog_instead_of_bursting():
    start, interval = 100.0, 1 / 12
    now = start + 100.0 + MAX_BACKLOG_S + 5  # e.g. a suspended laptop
    due, anchor = tick_schedule(start, 1200, interval, now=now)
    assert due == now
    assert anchor + 1201 * interval == pytest.approx(now + interval)  # next one on time


# --------------------------------------------------------------------------- Voila's configuration

CONFIG_FLAG = "--Voila.config_file_paths="


def _config_dirs(command: Sequence[str], cwd: Path) -> list[Path]:
    """The folders a Voila command line makes Voila read ``voila.json`` from."""
    return [
        (cwd / arg.removeprefix(CONFIG_FLAG)).resolve()
        for arg in command
        if arg.startswith(CONFIG_FLAG)
    ]


def _readme_voila_commands() -> list[list[str]]:
    """Every ``voila ...`` command line the README gives, split into arguments."""
    text = (PROJECT_ROOT / "README.md").read_text()
    return [m.group(0).split() for m in re.finditer(r"\S*voila notebooks/\S+[^`\n]*", text)]


def test_one_voila_config_file_holds_the_cull_settings_for_every_way_to_serve_the_page():
    """Live mode, the compose service and the README's stand-alone command all point Voila
    at notebooks/voila.json, which holds the kernel culling; none sets it on its own."""
    cull = json.loads(VOILA_CONFIG.read_text())["MappingKernelManager"]
    assert cull["cull_idle_timeout"] > 0 and cull["cull_interval"] > 0

    live = voila_command(Settings())
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["voila"]["command"]
    # The image's working directory is the repository (Dockerfile: COPY . /app, WORKDIR /app).
    assert re.search(r"^WORKDIR /app$", (PROJECT_ROOT / "Dockerfile").read_text(), re.M)
    readme = _readme_voila_commands()
    assert readme, "the README should show how to serve the page alone"
    for name, command in [("live mode", live), ("compose", service)] + [
        ("README", c) for c in readme
    ]:
        assert _config_dirs(command, PROJECT_ROOT) == [VOILA_CONFIG.parent.resolve()], name
        assert not [a for a in command if "MappingKernelManager" in a], f"{name} sets its own"


def test_voila_applies_the_config_to_its_kernel_manager():
    """Voila 0.5.13 itself, given live mode's arguments: the kernel manager it builds culls
    as the file says (without the file its timeout is 0, never), and keeps one kernel
    pre-heated, refilled 10 s after a page takes it."""
    config = json.loads(VOILA_CONFIG.read_text())
    expected = {
        **config["MappingKernelManager"],
        **config["VoilaConfiguration"],
        **config["VoilaKernelManager"],
    }
    args = [a for a in voila_command(Settings())[3:] if not a.startswith("--port")]
    probe = (
        "import json, sys\n"
        "from voila.app import Voila\n"
        "app = Voila()\n"
        "app.initialize(sys.argv[1:])\n"
        "app.init_settings()\n"
        "km = app.kernel_manager\n"
        "vc = app.voila_configuration\n"
        "print(json.dumps({'cull_idle_timeout': km.cull_idle_timeout,"
        " 'cull_interval': km.cull_interval, 'preheat_kernel': vc.preheat_kernel,"
        " 'default_pool_size': vc.default_pool_size, 'fill_delay': km.fill_delay}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *args, "--port=0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",  # not the repository: the path in the arguments must be enough
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_live_mode_says_when_its_store_already_holds_older_ticks(tmp_path) -> None:
    """The demo's ticks (2025) and live ones share the store: live mode says so at its
    start, with the command that keeps them apart, instead of mixing them silently
    (issue 18, friction 5); a store of recent ticks, or none yet, gets no note."""
    from marketstream.live import SEPARATE_LIVE, older_ticks_note
    from marketstream.ticks import generate_ticks
    from support.factories import recent_ticks, write_store

    settings = Settings().with_(db_path=str(tmp_path / "store.duckdb"))
    assert older_ticks_note(settings) is None  # no store yet
    write_store(settings.db_path, recent_ticks(settings.symbols, 5))
    assert older_ticks_note(settings) is None  # only live ticks
    write_store(settings.db_path, generate_ticks(settings.symbols, 50, seed=42))
    note = older_ticks_note(settings)
    assert note is not None and note.startswith("note: ")
    assert "already holds 150 older ticks" in note and "2025-01-06" in note
    assert SEPARATE_LIVE in note and "/candles" in note
