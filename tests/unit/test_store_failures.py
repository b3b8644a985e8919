"""How a store's failure is named (:mod:`marketstream.store.failures`), from the words
DuckDB and the OS used on this machine (the integration tests cause each for real)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import duckdb
import pytest

from marketstream.errors import StoreUnavailable
from marketstream.store.failures import AFTER, catalog_address, mid_run, named
from marketstream.store.lake import Lake

FILE = Path("/data/ticks.duckdb")
LAKE = Lake("postgres:host=127.0.0.1 port=1 user=u password=pw-123 dbname=d", "/lake", Path("/x"))

SEEN = [
    (
        duckdb.TransactionException(
            'TransactionContext Error: Failed to commit: Could not write file "/data/ticks.'
            'duckdb.wal": No space left on device'
        ),
        "the disk holding /data/ticks.duckdb is full",
    ),
    (
        duckdb.IOException(
            'IO Error: Cannot open file "/data/ticks.duckdb": Read-only file system'
        ),
        "/data/ticks.duckdb is on a read-only file system",
    ),
    (OSError(errno.EACCES, os.strerror(errno.EACCES)), "may not write /data/ticks.duckdb"),
    (
        duckdb.IOException(
            'IO Error: Could not set lock on file "/data/ticks.duckdb": Conflicting lock is held '
            "in /usr/bin/python3.11 (PID 11816). See also https://duckdb.org/docs"
        ),
        "/data/ticks.duckdb is held by another program (python3.11, PID 11816)",
    ),
]


@pytest.mark.parametrize(("error", "says"), SEEN)
def test_each_cause_is_named_with_its_fix(error: Exception, says: str) -> None:
    found = named(error, FILE)
    assert isinstance(found, StoreUnavailable) and says in str(found)
    assert "MARKET_DB_PATH" in str(found)  # the fix names the setting to change
    assert str(mid_run(error, FILE)).endswith(AFTER)


def test_a_lake_whose_catalog_does_not_answer_is_named_without_its_password() -> None:
    """Stopped inside a transaction, PostgreSQL left DuckLake's commit only this."""
    error = duckdb.TransactionException(
        'TransactionContext Error: Failed to commit: Failed to execute query "ROLLBACK":'
    )
    line = str(named(error, LAKE))  # port 1: nothing listens
    assert "the lake's catalog" in line and "stopped answering" in line
    assert "pw-123" not in line and "127.0.0.1" in line


def test_a_bug_is_not_dressed_up_as_the_machines_fault() -> None:
    assert named(duckdb.BinderException("Binder Error: column x not found"), FILE) is None
    assert named(ValueError("no"), FILE) is None


@pytest.mark.parametrize(
    ("catalog", "address"),
    [
        ("postgres:host=db port=6432 dbname=x", ("db", 6432)),
        ("postgres:postgresql://u:p@db:7/x", ("db", 7)),
        ("postgres:host='db' dbname=x", ("db", 5432)),
        ("postgres:host=/var/run/postgresql dbname=x", None),
        ("sqlite:/tmp/catalog.sqlite", None),
    ],
)
def test_where_a_catalog_listens(catalog: str, address: tuple[str, int] | None) -> None:
    assert catalog_address(catalog) == address
