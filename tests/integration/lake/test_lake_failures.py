"""The lake's catalog stopped mid-run: named in one line, and the run after is exact.

A real PostgreSQL of this test's own (the session's is shared) is stopped from inside
a batch's transaction, through the consumer's own seam (``before_store_commit``).
The run must fail with the cause and its fix, commit no Kafka offset past what the
lake holds, and, once the server is back, a plain rerun must end with every tick
stored once.
"""

from __future__ import annotations

from typing import Any

import pytest

from marketstream import store
from marketstream.clients import DEFAULT_CLIENTS
from marketstream.consume import ConsumeHooks, consume
from marketstream.errors import StoreUnavailable
from marketstream.postgres import start_postgres, stop_postgres, temporary_postgres
from marketstream.produce import produce_ticks
from marketstream.store import lake
from marketstream.ticks import generate_ticks
from support.stored import committed_offsets

pytestmark = pytest.mark.usefixtures("no_stray_children")

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")


def test_the_catalog_stopped_mid_run_is_named_and_the_run_after_is_exact(fresh, tmp_path) -> None:
    ticks = generate_ticks(SYMBOLS, 1_000, seed=6)
    with temporary_postgres(tmp_path / "pg") as server:
        settings = fresh.with_(
            store="ducklake",
            ducklake_catalog=server.dsn(),
            ducklake_data=str(tmp_path / "lake"),
            batch_size=500,  # 3,000 ticks: six batches at least
        )
        produce_ticks(ticks, settings, progress=False)
        batches = [0]

        def stop_the_catalog_in_the_third(con: Any, batch: Any) -> None:
            batches[0] += 1
            if batches[0] == 3:
                assert stop_postgres(server.data_dir)

        hooks = ConsumeHooks(before_store_commit=stop_the_catalog_in_the_third)
        try:
            with pytest.raises(StoreUnavailable) as caught:
                consume(settings, progress=False, hooks=hooks)
        finally:
            lake.forget_connections()
        line = str(caught.value)
        print(line)  # the line a user sees (shown with -s)
        assert "the lake's catalog" in line and "stopped answering" in line
        assert "marketstream postgres up" in line and "resumes there" in line

        start_postgres(server.data_dir, server.port)
        at = store.locate(settings)
        held = {p: o for (_, p), (o, _) in store.partition_positions(at).items()}
        assert 0 < sum(o or 0 for o in held.values()) < len(ticks)  # two batches, not three
        admin = DEFAULT_CLIENTS.admin(settings)
        try:
            committed = committed_offsets(admin, settings)
        finally:
            admin.close()
        assert all(o <= (held.get(p) or 0) for p, o in committed.items()), (committed, held)

        run = consume(settings, progress=False)
        lake.forget_connections()
        assert run.behind == 0
        report = store.stats(at)
        assert (report["ticks"], report["distinct_ticks"]) == (len(ticks), len(ticks))
        lake.forget_connections()
