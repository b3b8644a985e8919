"""A topic, consumer group, DuckDB file, CSV and log of its own, for a demonstration.

The guarantees and scale-out notebooks produce, kill and reconcile; on the pipeline's
topic and store they would change what the pipeline shows, and the same seed's ticks
already in its store would count as stored. So each works beside them, on names
derived from the configured ones, and starts from nothing every time.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from marketstream.settings import Settings


def own_topic(settings: Settings, name: str) -> Settings:
    """``settings`` with a topic, group, DuckDB file, CSV and log named after ``name``
    beside the configured ones (``market_ticks-<name>``, ``data/<name>.duckdb``...)."""
    data = settings.db_path.parent
    return settings.with_(
        topic=f"{settings.topic}-{name}",
        consumer_group=f"{settings.consumer_group}-{name}",
        store="duckdb",
        db_path=data / f"{name}.duckdb",
        csv_path=data / f"{name}.csv",
        log_path=settings.log_path.with_name(f"{name}.log"),
        consumers=1,
    )


def own_lake(settings: Settings, name: str) -> tuple[Settings, Callable[[], None]]:
    """:func:`own_topic` on a DuckLake of its own, and what stops its catalog's server.

    Its Parquet files go under ``data/<name>-lake``; its catalog is a database named
    after ``name`` in the kit's PostgreSQL (``marketstream postgres``), started unless it
    runs. A lake the user configured, and its catalog, are never touched. The function
    handed back stops that server if it was started here (a kernel that ends stops it
    too: the server is its child).
    """
    from marketstream.postgres import postgres_status, start_postgres, stop_postgres
    from marketstream.store import lake as lake_store

    running = postgres_status(settings.postgres_home) is not None
    database = re.sub(r"\W", "_", name)
    server = start_postgres(
        settings.postgres_home, settings.postgres_port or None, database=database
    )

    def stop() -> None:
        if not running:
            lake_store.forget_connections()
            stop_postgres(settings.postgres_home)

    lake = own_topic(settings, name).with_(
        store="ducklake",
        ducklake_data=str(settings.db_path.parent / f"{name}-lake"),
        ducklake_catalog=server.dsn(database),
    )
    return lake, stop


def start_afresh(settings: Settings) -> None:
    """Delete the settings' topic, store and log, and make an empty store."""
    from marketstream import store
    from marketstream.produce import delete_topic

    delete_topic(settings)
    at = store.locate(settings)
    store.remove_store(at)
    store.init_store(at)
    settings.log_path.unlink(missing_ok=True)
