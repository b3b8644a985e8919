"""A store that fails mid-run, named for a person: the cause and the fix, in one line.

Why: ``consume`` named only Kafka's errors. A full disk, a read-only folder, a
DuckDB file another program holds, or the lake's catalog stopped mid-run all
came out as a traceback of DuckDB internals. Each is the user's machine, not a
bug, and each has a fix; the kit's guarantee makes the rest simple to say:
every batch stored before the failure is kept with its stream position, and
no Kafka offset is committed past it, so the next run resumes exactly there.

The causes are told apart by DuckDB's and the OS's own words (checked on this
machine: a 3 MiB tmpfs filled, remounted read-only, a file held by a second
process, the catalog's PostgreSQL stopped).
"""

from __future__ import annotations

import getpass
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from marketstream.errors import StoreUnavailable
from marketstream.redact import redact

__all__ = ["AFTER", "cause", "explain", "mid_run", "named"]

#: What a failed run leaves behind, said after the cause.
AFTER = (
    "every batch stored before it is kept, with its position, and no offset was committed "
    "past it: once that is mended, run again and it resumes there"
)

_HELD = re.compile(r"Conflicting lock is held in (\S+) \(PID (\d+)\)")
_CATALOG_GONE = (
    "connection refused",
    "server closed the connection",
    "terminating connection",
    "could not connect",
    "unable to connect to postgres",
    "connection to server",
    "no connection to the server",
    "ssl syscall",
    "connection reset",
)


def cause(text: str, at: object) -> str | None:
    """The cause and its fix, from an error's text; None for a failure not recognised."""
    lake = not isinstance(at, Path)
    where = f"the lake's data ({getattr(at, 'data_path', at)})" if lake else str(at)
    variable = "MARKET_DUCKLAKE_DATA" if lake else "MARKET_DB_PATH"
    lowered = text.lower()
    if "no space left on device" in lowered:
        return (
            f"the disk holding {where} is full: free space there, or set {variable} to a "
            "disk with room"
        )
    if "read-only file system" in lowered:
        return (
            f"{where} is on a read-only file system: mount it writable, or set {variable} "
            "to a writable folder"
        )
    if "permission denied" in lowered:
        return (
            f"user {getpass.getuser()} may not write {where}: give it write access to the folder, "
            f"or set {variable} to a folder it owns"
        )
    held = _HELD.search(text)
    if held:
        program = Path(held.group(1)).name
        return (
            f"{where} is held by another program ({program}, PID {held.group(2)}); a DuckDB file "
            f"has one writer at a time: close it there, or set {variable} to another file"
        )
    catalog = getattr(at, "catalog", "")
    if lake and (any(words in lowered for words in _CATALOG_GONE) or _silent(catalog)):
        catalog = redact(catalog)
        return (
            f"the lake's catalog ({catalog}) stopped answering: start its server again "
            "(`marketstream postgres up` for the kit's own), or mend MARKET_DUCKLAKE_CATALOG"
        )
    if lake and "no such file or directory" in lowered:
        return (
            f"a file of {where} is gone: restore the folder, or set {variable} to the lake's data"
        )
    return None


def catalog_address(catalog: str) -> tuple[str, int] | None:
    """Where a ``postgres:`` catalog listens, from its connection string (keywords or a
    URL); None for another kind of catalog, or one on a unix socket."""
    if not catalog.startswith("postgres:"):
        return None
    dsn = catalog.removeprefix("postgres:")
    if "://" in dsn:
        url = urlsplit(dsn)
        host, port = url.hostname, url.port
    else:
        words = dict(re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn))
        host, raw = words.get("host", "").strip("'"), words.get("port", "").strip("'")
        port = int(raw) if raw.isdigit() else None
    if not host or host.startswith("/"):
        return None
    return host, port or 5432


def _silent(catalog: str) -> bool:
    """True if the catalog's server does not take a connection now. Asked when an error
    says nothing of why: a PostgreSQL stopped inside a transaction fails DuckLake's
    commit with only ``Failed to execute query "ROLLBACK":`` (measured here)."""
    address = catalog_address(catalog)
    if address is None:
        return False
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError:
        return True
    return False


def named(exc: BaseException, at: object) -> StoreUnavailable | None:
    """The store failure ``exc`` as one line, or None if it is not one the kit recognises
    (a bug: shown as one). ``at`` is where the store is (a file's path or a lake); a
    :class:`StoreUnavailable` is already named."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if not isinstance(exc, duckdb.Error | OSError):
        return None
    text = " ".join(str(exc).split())
    found = cause(text, at)
    if found is None:
        if not isinstance(exc, duckdb.IOException | OSError):
            return None  # not the machine's doing
        found = f"the store failed: {redact(text)[:300]}"
    return StoreUnavailable(found)


def mid_run(exc: BaseException, at: object) -> StoreUnavailable | None:
    """:func:`named`, for a consumer's run: with what the run left (:data:`AFTER`)."""
    found = named(exc, at)
    return None if found is None else StoreUnavailable(f"{found}; {AFTER}")


def explain(exc: BaseException, at: object) -> str:
    """An error's text for a relay's answer: the named cause, else the error as it is."""
    found = named(exc, at)
    return str(found) if found else f"{type(exc).__name__}: {exc}"
