"""A topic, consumer group, DuckDB file, CSV and log of its own, for a demonstration.

The guarantees and scale-out notebooks produce, kill and reconcile; on the pipeline's
topic and store they would change what the pipeline shows, and the same seed's ticks
already in its store would count as stored. So each works beside them, on names
derived from the configured ones, and starts from nothing every time.
"""

from __future__ import annotations

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


def start_afresh(settings: Settings) -> None:
    """Delete the settings' topic, store and log, and make an empty store."""
    from marketstream import store
    from marketstream.produce import delete_topic

    delete_topic(settings)
    at = store.locate(settings)
    store.remove_store(at)
    store.init_store(at)
    settings.log_path.unlink(missing_ok=True)
