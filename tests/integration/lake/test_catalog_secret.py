"""The catalog's connection string is a secret: its password appears nowhere the kit
writes or shows, on the real pipeline with two worker processes on a real PostgreSQL.

It used to be in ``Settings``' repr (so in every executed notebook, which display
their settings), in the papermill parameters and on the CLI's options, and a
malformed one was echoed whole in its error line.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from marketstream.pipeline import run_pipeline
from marketstream.store import lake
from support.processes import CommandLines, cli

pytestmark = pytest.mark.usefixtures("no_stray_children")

#: The kit's PostgreSQL trusts local connections, so any password is accepted: what
#: matters is where the kit carries it.
SECRET = f"pw-{secrets.token_urlsafe(12)}"


def _files(folder: Path, pattern: str) -> dict[str, str]:
    return {str(p): p.read_text(encoding="utf-8", errors="replace") for p in folder.glob(pattern)}


def test_the_catalog_password_reaches_no_notebook_log_line_or_command_line(lake_settings):
    settings = lake_settings.with_(
        ducklake_catalog=f"{lake_settings.ducklake_catalog} password={SECRET}", consumers=2
    )
    with CommandLines() as seen:
        summary = run_pipeline(settings, progress=False)
    lake.forget_connections()
    assert summary.rows == 150
    assert seen.seen, "no child process was seen (the kernels and workers should have been)"
    stats = cli(settings, "stats")
    texts = {
        "command lines": "\n".join(seen.seen),
        "summary": summary.describe(),
        "repr of the settings": repr(settings),
        "JSON log": settings.log_path.read_text(encoding="utf-8"),
        "stats": stats.stdout + stats.stderr,
        **_files(settings.output_dir, "*.ipynb"),
        **_files(settings.output_dir, "kernels.log"),
    }
    leaks = sorted(name for name, text in texts.items() if SECRET in text)
    assert not leaks, f"the catalog's password appears in {leaks}"
    assert "DuckLake" in stats.stdout  # stats did read the lake


def test_an_unreachable_catalogs_error_line_keeps_its_password(lake_settings):
    wrong = lake_settings.ducklake_catalog.replace("dbname=", "dbname=missing_") + (
        f" password={SECRET}"
    )
    done = cli(lake_settings.with_(ducklake_catalog=wrong), "stats", check=False)
    assert done.returncode == 2
    assert "its database does not exist" in done.stderr and SECRET not in done.stderr
