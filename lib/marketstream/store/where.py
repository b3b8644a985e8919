"""Which store the settings name, and the operations every caller uses whichever it is.

A store is a :data:`Where`: a :class:`~pathlib.Path` (the DuckDB file) or a
:class:`~marketstream.store.lake.Lake`. Callers get one from
:func:`locate` and hand it to the store's functions; only this package
looks inside it. :func:`owned_store` is the lake's counterpart of
:func:`marketstream.broker.owned_broker`: with no catalog configured, the kit
starts its own PostgreSQL server for the block of work and stops it after;
with the data on ``s3://`` and no ``MARKET_S3_ENDPOINT``, it does the same with
its own object store (:mod:`marketstream.objectstore`), and the settings it
hands back name that store's endpoint and keys, so child processes and
notebook kernels reach the same one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from marketstream.errors import StoreUnavailable
from marketstream.settings import Settings
from marketstream.store import files, lake
from marketstream.store.backend import Backend, Signature, Writer
from marketstream.store.failures import named
from marketstream.store.lake import Lake, S3Access
from marketstream.store.positions import Positions

#: A store: the DuckDB file's path, or a lake.
Where = Path | Lake


def locate(settings: Settings) -> Where:
    """The store the settings name (for a lake without a catalog: the kit's running server)."""
    if settings.store == "duckdb":
        return settings.db_path
    catalog = settings.ducklake_catalog or _local_catalog(settings)
    return Lake(
        lake.catalog_spec(catalog), settings.lake_data, lake.extension_dir(), _s3_access(settings)
    )


def _s3_access(settings: Settings) -> S3Access | None:
    """How the lake's data is reached on ``s3://``: the settings' endpoint, or the kit's
    running object store; None for data in a folder."""
    if not settings.lake_on_s3:
        return None
    if settings.s3_endpoint:
        return _access(settings)
    from marketstream.objectstore import objectstore_status

    server = objectstore_status(settings.objectstore_home)
    if server is None:
        raise StoreUnavailable(
            f"MARKET_DUCKLAKE_DATA={settings.ducklake_data} without MARKET_S3_ENDPOINT uses "
            f"the kit's own object store ({settings.objectstore_home}), and it is not "
            "running (the pipeline and live mode start it themselves); or set "
            "MARKET_S3_ENDPOINT and the keys for your own"
        )
    return _access(settings.with_(**_own_settings(server)))


def _own_settings(server: Any) -> dict[str, object]:
    """The settings that name the kit's own object store (path-style, plain HTTP)."""
    return {
        "s3_endpoint": server.endpoint,
        "s3_region": server.region,
        "s3_key_id": server.key_id,
        "s3_secret": server.secret,
        "s3_url_style": "path",
        "s3_use_ssl": False,
    }


def _access(settings: Settings) -> S3Access:
    """The settings' S3 endpoint, region, keys and URL style, as DuckDB's secret takes them."""
    return S3Access(
        settings.s3_endpoint,
        settings.s3_region,
        settings.s3_key_id,
        settings.s3_secret,
        settings.s3_url_style,
        settings.s3_use_ssl,
    )


def _local_catalog(settings: Settings) -> str:
    from marketstream.postgres import postgres_status

    server = postgres_status(settings.postgres_home)
    if server is None:
        raise StoreUnavailable(
            "MARKET_STORE=ducklake without MARKET_DUCKLAKE_CATALOG uses the kit's own "
            f"PostgreSQL ({settings.postgres_home}), and it is not running: "
            "`marketstream postgres up` starts it (the pipeline and live mode start it "
            "themselves)"
        )
    return server.dsn()


@contextmanager
def owned_store(settings: Settings, *, keep: bool = False) -> Iterator[Settings]:
    """The settings to use for a block of work, with the store ready (created if new).

    For a lake without a catalog the kit's PostgreSQL is started unless it runs,
    and the settings handed back name it (``ducklake_catalog``), so child
    processes get it through :func:`marketstream.processes.child_env`; it is
    stopped at the end if it was started here and ``keep`` is false. A lake on
    ``s3://`` without ``MARKET_S3_ENDPOINT`` gets the kit's object store the same
    way (its bucket created), named by the ``s3_*`` settings handed back.
    """
    started = False
    started_objects = False
    try:
        if settings.store == "ducklake" and settings.lake_on_s3 and not settings.s3_endpoint:
            from marketstream.objectstore import (
                bucket_of,
                ensure_bucket,
                objectstore_status,
                start_objectstore,
            )

            bucket = bucket_of(settings.ducklake_data.strip())
            objects = objectstore_status(settings.objectstore_home)
            if objects is None:
                objects = start_objectstore(settings.objectstore_home)
                started_objects = True
            ensure_bucket(objects, bucket)
            settings = settings.with_(**_own_settings(objects))
        if settings.store == "ducklake" and not settings.ducklake_catalog:
            from marketstream.postgres import postgres_status, start_postgres

            server = postgres_status(settings.postgres_home)
            if server is None:
                server = start_postgres(settings.postgres_home, settings.postgres_port or None)
                started = True
            settings = settings.with_(ducklake_catalog=server.dsn())
        init_store(locate(settings))
        yield settings
    finally:
        if (started or started_objects) and not keep:
            lake.forget_connections()
        if started and not keep:
            from marketstream.postgres import stop_postgres

            stop_postgres(settings.postgres_home)
        if started_objects and not keep:
            from marketstream.objectstore import stop_objectstore

            stop_objectstore(settings.objectstore_home)


#: Each kind of :data:`Where` and the backend that handles it: the one place that looks
#: at a store's type (a third backend is one module and one line here).
BACKENDS: tuple[tuple[type, Backend], ...] = ((Path, files.BACKEND), (Lake, lake.BACKEND))


def backend(at: Where) -> Backend:
    """The backend for this store."""
    for kind, implementation in BACKENDS:
        if isinstance(at, kind):
            return implementation
    raise StoreUnavailable(f"no store backend for {at!r}")


def describe(at: Where) -> str:
    """The store for a person: the file's path, or the lake (no password)."""
    return backend(at).describe(at)


@contextmanager
def _named(at: Where) -> Iterator[None]:
    """The machine's failures as one line (:mod:`.failures`): a read-only folder, a full
    disk, a file another program holds, a catalog that does not answer."""
    try:
        yield
    except (duckdb.Error, OSError) as exc:
        found = named(exc, at)
        if found is None:
            raise
        raise found from None


def init_store(at: Where) -> None:
    """Create the tables and views if missing (idempotent)."""
    with _named(at):
        backend(at).init(at)


def exists(at: Where) -> bool:
    """Whether anything has been stored there yet (a lake: whether its tables exist)."""
    return backend(at).exists(at)


@contextmanager
def read_connection(at: Where, timeout_s: float = 5.0) -> Iterator[Any]:
    """A connection for reading: never a half-written batch, never a writer kept waiting."""
    with backend(at).read_connection(at, timeout_s) as con:
        yield con


def signature(at: Where) -> Signature:
    """Equal signatures mean equal data (a file: stat of it and its WAL; a lake: its snapshot)."""
    return backend(at).signature(at)


def open_writer(at: Where, *, hold: bool = True) -> Writer:
    """A writer for this process (``hold``: keep the file open; a lake always keeps it).

    A consumer worker among several on one DuckDB file finds the writer process
    they share in its environment (set by :func:`marketstream.workers.start_workers`)
    and writes through it (:mod:`marketstream.store.relay`).
    """
    with _named(at):
        return backend(at).open_writer(at, hold=hold)


def set_positions(at: Where, positions: Positions) -> None:
    """Move the store's positions to exactly these offsets (to replay or skip a range)."""
    with _named(at):
        backend(at).set_positions(at, positions)


def remove_store(at: Where) -> None:
    """Delete everything stored (for a fresh run): the file, or the lake's tables and files."""
    backend(at).remove(at)
