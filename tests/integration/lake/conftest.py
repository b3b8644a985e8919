"""A real PostgreSQL server for the session, and a fresh DuckLake (own database) per test."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketstream.postgres import PostgresServer, start_postgres, temporary_postgres
from marketstream.settings import Settings
from marketstream.store import lake


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The kit's own PostgreSQL, started once for these tests and stopped after them.

    Not under pytest's tmp folder: run as root, the kit runs PostgreSQL as ``nobody``,
    who cannot enter ``/tmp/pytest-of-root`` (0700).
    """
    folder = Path(tempfile.mkdtemp(prefix="marketstream-pg-"))
    folder.chmod(0o711)
    try:
        with temporary_postgres(folder) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
