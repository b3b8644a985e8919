"""API load generators: wrk (with its Lua script) and a raw-HTTP asyncio one, same result shape.

API latency is measured on the real server (granian) with 100 concurrent
keep-alive connections, closed loop, alternating the paths Grafana polls,
while live ingest writes the same store. Both generators return
``{generator, requests, ok, errors, rps, latency_ms: {count, p50, p95, p99, max}}``.

* :func:`run_wrk`: wrk is C (Debian's package), so its own CPU use is small
  and on two shared cores the figure is the server's, not the load
  generator's. Used when installed.
* :func:`python_load`: the fallback, a worker kind of its own (the load must
  not share the bench's GIL). Raw asyncio streams rather than an HTTP library
  keep the generator's own CPU small, which matters on two cores shared with
  the server, the broker and ingest.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from marketstream.bench.plan import API_PATHS, distribution
from marketstream.bench.workers import Emitter
from marketstream.settings import Settings

#: The generators by name; ``None`` (auto) is wrk when installed, else Python.
GENERATORS = ("wrk", "python")

#: wrk's Lua: the same round-robin over API_PATHS as the Python generator, and the
#: summary as one JSON line (latencies in microseconds).
WRK_SCRIPT = """
local paths = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "errors": %%d, "non2xx": %%d, ' ..
    '"p50": %%d, "p95": %%d, "p99": %%d, "max": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


# --------------------------------------------------------------------------- wrk


def run_wrk(
    host: str,
    port: int,
    concurrency: int,
    seconds: float,
    work: Path,
    paths: tuple[str, ...] = API_PATHS,
) -> dict[str, Any]:
    """Closed-loop load with wrk for ``seconds``; ``{"error": ...}`` if wrk failed."""
    script = work / "wrk.lua"
    script.write_text(WRK_SCRIPT % ", ".join(f'"{p}"' for p in paths), encoding="utf-8")
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://{host}:{port}/",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith('{"requests"')), None)
    if proc.returncode != 0 or line is None:
        return {"error": (proc.stderr or proc.stdout).strip()[:300]}
    w = json.loads(line)
    duration = w["duration_us"] / 1e6
    errors = w["errors"] + w["non2xx"]
    return {
        "generator": "wrk",
        "requests": w["requests"],
        "ok": w["requests"] - errors,
        "errors": errors,
        "rps": w["requests"] / duration if duration else math.nan,
        "latency_ms": {
            "count": w["requests"],
            **{k: w[k] / 1000.0 for k in ("p50", "p95", "p99", "max")},
        },
    }


# --------------------------------------------------------------------------- Python


async def _http_client(
    host: str,
    port: int,
    paths: tuple[str, ...],
    offset: int,
    deadline: float,
    samples: list[tuple[float, str, float, int]],
) -> None:
    """One keep-alive connection sending GETs back to back until the deadline."""
    reader = writer = None
    i = offset
    while time.perf_counter() < deadline:
        path = paths[i % len(paths)]
        i += 1
        sent = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            status = int((await reader.readline()).split()[1])
            close = await _read_response(reader)
            if close:
                writer.close()
                reader = writer = None
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            status = 0  # connection error: counted, and the connection is reopened
            if writer is not None:
                writer.close()
            reader = writer = None
        samples.append((sent, path, time.perf_counter() - sent, status))


async def _read_response(reader: asyncio.StreamReader) -> bool:
    """Read one response's headers and body (length or chunked); True if the server closes."""
    length, chunked, close = 0, False, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            close = True
    if chunked:
        while size := int((await reader.readline()).strip() or b"0", 16):
            await reader.readexactly(size + 2)
        await reader.readline()
    else:
        await reader.readexactly(length)
    return close


def python_load(settings: Settings, cfg: dict, stop: threading.Event, emit: Emitter) -> dict:
    """Worker kind ``load``: ``concurrency`` closed-loop clients for ``duration_s``."""
    host, port = cfg["host"], int(cfg["port"])
    paths = tuple(cfg["paths"])
    duration, warmup = float(cfg["duration_s"]), float(cfg["warmup_s"])
    samples: list[tuple[float, str, float, int]] = []

    async def main() -> float:
        start = time.perf_counter()
        deadline = start + warmup + duration
        await asyncio.gather(
            *(
                _http_client(host, port, paths, i, deadline, samples)
                for i in range(int(cfg["concurrency"]))
            )
        )
        return start

    emit("ready")
    start = asyncio.run(main())
    measured = [s for s in samples if s[0] >= start + warmup]
    ok = [s for s in measured if s[3] == 200]
    result: dict[str, Any] = {
        "generator": "python",
        "requests": len(measured),
        "ok": len(ok),
        "errors": len(measured) - len(ok),
        "statuses": dict(Counter(str(s[3]) for s in measured)),
        "rps": len(measured) / duration,
        "latency_ms": distribution([s[2] for s in ok], 1000.0),
    }
    for path in paths:
        result[f"latency_ms{path.replace('/', '_')}"] = distribution(
            [s[2] for s in ok if s[1] == path], 1000.0
        )
    return result
