"""The Makefile: ``make help`` lists every target, and ``clean``/``distclean`` say what they
delete (dry runs only: ``make -n`` prints the commands without running them)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from marketstream.settings import PROJECT_ROOT

MAKEFILE = PROJECT_ROOT / "Makefile"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def phony_targets() -> list[str]:
    text = MAKEFILE.read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith(".PHONY:")]
    return line.removeprefix(".PHONY:").split()


def make(*args: str) -> str:
    result = subprocess.run(
        ["make", "-s", "-C", str(PROJECT_ROOT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_help_lists_every_phony_target():
    listed = re.findall(r"^make (\S+)", make("help"), flags=re.MULTILINE)
    targets = phony_targets()
    assert len(targets) > 10
    assert [t for t in targets if t not in listed] == []
    assert sorted(listed) == sorted(set(listed))  # once each


def test_every_phony_target_is_defined():
    defined = set(re.findall(r"^([a-z][a-z-]*):", MAKEFILE.read_text(), flags=re.MULTILINE))
    assert set(phony_targets()) <= defined


def test_clean_deletes_what_the_kit_made_and_keeps_the_caches():
    commands = make("-n", "clean")
    for made in (
        "output",
        "logs",
        "data/*.duckdb",
        "data/*.csv",
        "bench/latest.json",
        "test-artifacts",
        "data/lake",
        ".cache/postgres",  # the lake's catalog goes with its Parquet files
        ".cache/objectstore/data",  # and so do its files in the kit's object store
    ):
        assert made in commands
    assert "postgres down" in commands and "broker down" in commands
    assert "objectstore down" in commands
    kept = commands.replace(".cache/postgres", "").replace(".cache/objectstore/data", "")
    assert ".cache" not in kept and ".venv" not in commands.replace(".venv/bin", "")


def test_distclean_says_it_drops_the_jars_and_the_broker_data():
    commands = make("-n", "distclean")
    assert "rm -rf .cache/kafka" in commands
    assert re.search(r"echo .*deleting .cache/kafka", commands)


def _installs(target: str, tmp_path) -> list[str]:
    """What ``make -n <target>`` would install into a fresh .venv (pip's ``-e`` arguments)."""
    commands = make("-n", target, f"VENV={tmp_path / 'venv'}")
    return re.findall(r"pip install --quiet -e (\S+)", commands)


@pytest.mark.parametrize(
    ("target", "extras"),
    [
        ("demo", "dev,api,voila,lake"),
        ("test", "dev,api,voila,lake"),
        ("live", "dev,api,voila,lake"),
        ("setup", "dev,api,voila,lake"),
        ("lab", "dev,api,voila,lake,lab"),
    ],
)
def test_each_target_installs_the_kit_then_its_extras_on_a_fresh_clone(target, extras, tmp_path):
    """What make demo and make test need, for every target (pytest --nbval notebooks/ works
    after a demo); JupyterLab only once make lab asks for it."""
    assert _installs(target, tmp_path) == [".", f'".[{extras}]"']
