"""Shared fixtures. The Kafka broker is real: started once per test session on a free
port with storage in a temporary folder, and stopped at the end."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from marketstream.settings import Settings


@pytest.fixture(scope="session")
def kafka(tmp_path_factory) -> Settings:
    """Settings pointing at a real broker that lives for the whole session."""
    from marketstream.broker import temporary_broker

    with temporary_broker(Settings.from_env(), tmp_path_factory.mktemp("kafka")) as settings:
        yield settings


@pytest.fixture
def fresh(kafka, tmp_path) -> Settings:
    """Per-test settings: own topic, consumer group, DuckDB file, CSV and log."""
    name = f"ticks-{uuid.uuid4().hex[:8]}"
    return kafka.with_(
        topic=name,
        consumer_group=f"g-{name}",
        db_path=tmp_path / "market.duckdb",
        csv_path=tmp_path / "ticks.csv",
        log_path=tmp_path / "pipeline.log",
        output_dir=tmp_path / "output",
        idle_timeout_s=10.0,
    )
