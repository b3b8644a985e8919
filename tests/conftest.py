"""Shared fixtures and the layout's rules.

* The Kafka broker is real: started once per test session on a free port with
  storage in a temporary folder, and stopped at the end (``kafka``); each test
  that needs it gets its own topic, group and files (``fresh``).
* The folder decides the marker: tests under ``integration/`` are marked
  ``integration``, those under ``browser/`` ``browser`` (and ``integration``: the
  page needs a broker too). ``pytest tests/unit`` or ``-m "not integration"`` runs
  the fast part alone; a unit test that asks for the broker is an error.
* ``support`` (shared test code) is importable: this folder is put on ``sys.path``.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from marketstream.settings import Settings  # noqa: E402
from support import fakes, processes  # noqa: E402

#: The session broker's fixtures: a test that uses one belongs under integration/.
BROKER_FIXTURES = {"kafka", "fresh"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(item.path).resolve()
        if TESTS not in path.parents:
            continue  # e.g. notebooks collected by nbval
        folder = path.relative_to(TESTS).parts[0]
        if folder == "integration":
            item.add_marker(pytest.mark.integration)
        elif folder == "browser":
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.integration)
        elif folder == "unit" and BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(
                f"{item.nodeid} uses the Kafka broker: it belongs under tests/integration/"
            )


@pytest.fixture(scope="session")
def kafka(tmp_path_factory) -> Iterator[Settings]:
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


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on 127.0.0.1 where a plain TCP server accepts connections but speaks no Kafka."""
    with fakes.listening_port() as port:
        yield port


@pytest.fixture
def no_stray_children() -> Iterator[None]:
    """The test must end with no child process of pytest left over (stragglers are killed).
    Opt in per module: ``pytestmark = pytest.mark.usefixtures("no_stray_children")``."""
    yield from processes.no_stray_children()
