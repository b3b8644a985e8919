"""A real PostgreSQL server for the session, and a fresh DuckLake (own database) per test."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketstream.postgres import (
    PostgresServer,
    prune_shared,
    start_postgres,
    temporary_postgres,
)
from marketstream.settings import Settings
from marketstream.store import lake


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The kit's own PostgreSQL, started once for these tests and stopped after them.

    In a folder of its own (``mkdtemp``: 0700) deleted at the end, not in pytest's, which
    pytest keeps. Run as root, the kit runs PostgreSQL as ``nobody``, who cannot enter
    that folder: the data dir is then kept in root's shared home, as in a checkout under
    ``/root``, and :func:`prune_shared` deletes it once the folder (its link) is gone.
    """
    folder = Path(tempfile.mkdtemp(prefix="marketstream-pg-"))
    try:
        with temporary_postgres(folder) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        prune_shared()


@pytest.fixture
def lake_settings(fresh: Settings, postgres: PostgresServer, tmp_path) -> Iterator[Settings]:
    """``fresh`` on DuckLake: its own catalog database and data folder."""
    database = f"lake_{uuid.uuid4().hex[:8]}"
    start_postgres(postgres.data_dir, postgres.port, database=database)  # running: creates the db
    yield fresh.with_(
        store="ducklake",
        ducklake_catalog=postgres.dsn(database),
        ducklake_data=str(tmp_path / "lake"),
    )
    lake.forget_connections()
