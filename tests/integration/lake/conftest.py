"""A real PostgreSQL server for the session, and a fresh DuckLake (own database) per test.

Every lake test runs twice: with the Parquet files in a folder, and on the kit's own S3
object store (s3proxy, :mod:`marketstream.objectstore`), started once for the tests
that use it and stopped after them.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketstream.objectstore import ObjectStore, ensure_bucket, temporary_objectstore
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


#: The bucket the lake tests write to on the object store.
BUCKET = "marketstream-tests"


@pytest.fixture(scope="session", params=["folder", "s3"])
def lake_place(request: pytest.FixtureRequest) -> Iterator[ObjectStore | None]:
    """Where the lakes keep their Parquet files: a folder (None), or the kit's own object
    store, started for the tests that use it (session-scoped, so pytest groups them and
    starts it before any test's ``no_stray_children`` looks) and always stopped after.

    Its data is in a ``mkdtemp`` folder deleted at the end; its jars in the kit's cache
    (``.cache/objectstore``), fetched once like the broker's.
    """
    if request.param == "folder":
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="marketstream-s3-"))
    try:
        with temporary_objectstore(folder, jars_home=Settings().objectstore_home) as server:
            ensure_bucket(server, BUCKET)
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def on_object_store(settings: Settings, server: ObjectStore, prefix: str) -> Settings:
    """``settings`` with the lake's data on ``server`` under ``s3://BUCKET/prefix/``."""
    return settings.with_(
        ducklake_data=f"s3://{BUCKET}/{prefix}/",
        s3_endpoint=server.endpoint,
        s3_region=server.region,
        s3_key_id=server.key_id,
        s3_secret=server.secret,
        s3_url_style="path",
        s3_use_ssl=False,
    )


@pytest.fixture
def lake_settings(
    fresh: Settings, postgres: PostgresServer, lake_place: ObjectStore | None, tmp_path
) -> Iterator[Settings]:
    """``fresh`` on DuckLake: its own catalog database, and its own data folder or prefix
    in the object store's bucket."""
    database = f"lake_{uuid.uuid4().hex[:8]}"
    start_postgres(postgres.data_dir, postgres.port, database=database)  # running: creates the db
    settings = fresh.with_(
        store="ducklake",
        ducklake_catalog=postgres.dsn(database),
        ducklake_data=str(tmp_path / "lake"),
    )
    if lake_place is not None:
        settings = on_object_store(settings, lake_place, database)
    yield settings
    lake.forget_connections()
