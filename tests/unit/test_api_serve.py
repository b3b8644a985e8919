"""The API under its real server (``python -m marketstream_api.serve``, granian) over real
HTTP, while a writer in this process writes micro-batches as live mode does."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest

from marketstream import store
from marketstream.ticks import DEFAULT_START, generate_ticks
from support.factories import tick_table, write_store
from support.waiting import wait_until

SYMBOLS = ("SP500", "STOXX600", "NIKKEI225")
RECEIVED = datetime(2025, 1, 6, 15, 0)
#: How long the server may take to start, or to stop, on a loaded machine (it normally
#: takes about a second; the waits end as soon as it has).
START_S = 60
#: A request that takes longer fails the test.
REQUEST_TIMEOUT_S = 30


def _start_server(db: Path, tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """``python -m marketstream_api.serve`` on a free port; returns the process and its URL."""
    env = {**os.environ, "MARKET_LOG_PATH": str(tmp_path / "serve.log")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketstream_api.serve", "--port", "0", "--db", str(db), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    line = proc.stdout.readline() if selector.select(timeout=START_S) else ""
    selector.close()
    match = re.search(r"http://[\w.:\[\]]+", line)
    if not match:
        proc.kill()
        pytest.fail(f"server did not start: {line!r} {proc.stderr.read()!r}")
    return proc, match.group(0)


def _fetch(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_real_server_serves_metrics_while_a_live_writer_writes(tmp_path):
    """Real HTTP, and the reader/writer dance: the test process writes micro-batches
    (opening the file per batch, as live mode does) while requests keep coming."""
    path = write_store(
        tmp_path / "live.duckdb",
        tick_table(generate_ticks(SYMBOLS, 10), topic="market_ticks", received_at=RECEIVED),
    )
    proc, base = _start_server(path, tmp_path)
    try:
        status, rows = _fetch(f"{base}/metrics")
        assert status == 200
        assert {r["symbol"]: r["tickcount"] for r in rows} == dict.fromkeys(SYMBOLS, 10)

        later = DEFAULT_START + timedelta(minutes=5)
        batches = [
            generate_ticks(SYMBOLS, 5, seed=i, start=later + timedelta(seconds=5 * i))
            for i in range(20)
        ]
        statuses: list[int] = []

        def read_many() -> None:
            for _ in range(15):
                statuses.append(_fetch(f"{base}/live?limit=50")[0])

        readers = [threading.Thread(target=read_many) for _ in range(3)]
        for reader in readers:
            reader.start()
        writer = store.open_writer(path, hold=False)
        for i, batch in enumerate(batches):
            writer.write_batch(
                tick_table(
                    batch, topic="market_ticks", offset0=1000 + 100 * i, received_at=RECEIVED
                )
            )
        for reader in readers:
            reader.join()
        assert statuses == [200] * 45

        # The cache may answer from before the writes for up to MARKET_API_CACHE_S plus
        # MARKET_API_STALE_S (stale-while-revalidate, see marketstream_api.cache), so the
        # new counts are awaited; with nothing computing them this would time out.
        def counts() -> dict[str, int]:
            status, rows = _fetch(f"{base}/metrics")
            assert status == 200
            return {r["symbol"]: r["tickcount"] for r in rows}

        wait_until(
            lambda: counts() == dict.fromkeys(SYMBOLS, 110),
            START_S,
            "/metrics to count the written batches",
            context=lambda: f"last counts: {counts()}",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=START_S)
        proc.stdout.close()
        proc.stderr.close()
    assert returncode == 0


def test_original_paths_serve_the_original_kit_s_shape_at_its_own_paths(tmp_path):
    """``serve --original-paths``: what a dashboard saved against the original kit asks
    (``/live``, ``/metrics``, no parameters) gets the original's fields; the rest of the
    API is unchanged."""
    path = write_store(
        tmp_path / "orig.duckdb",
        tick_table(generate_ticks(SYMBOLS, 10), topic="market_ticks", received_at=RECEIVED),
    )
    proc, base = _start_server(path, tmp_path, "--original-paths")
    try:
        status, rows = _fetch(f"{base}/live")
        assert status == 200 and len(rows) == 10
        assert set(rows[0]) == {"time", *SYMBOLS, *(f"{s}_volume" for s in SYMBOLS)}
        assert rows[0]["time"] > rows[-1]["time"]  # newest first, as the original
        status, rows = _fetch(f"{base}/metrics")
        assert {r["symbol"]: r["tick_count"] for r in rows} == dict.fromkeys(SYMBOLS, 10)
        status, body = _fetch(f"{base}/runs")
        assert status == 200 and body["health"]["ticks"] == 30
    finally:
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=START_S)
        proc.stdout.close()
        proc.stderr.close()
    assert returncode == 0


def test_a_taken_port_is_one_line_from_the_kits_address_rule(tmp_path) -> None:
    """The API claims its address by the rule every local server follows
    (:func:`marketstream.servers.claim_address`), with its own settings as the fix."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        db = str(tmp_path / "m.duckdb")
        done = subprocess.run(
            [sys.executable, "-m", "marketstream_api.serve", "--port", str(port), "--db", db],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is taken by another program, so the API cannot "
        "listen there; set MARKET_API_HOST / MARKET_API_PORT, or pass --host / --port "
        "(0 picks a free one)"
    ]
