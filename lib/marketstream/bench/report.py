"""The run's results: the flat figures and targets, the terminal table, the chart, the JSON.

The results go to ``bench/latest.json`` (keys documented in bench/README.md):
the required figures first, then the targets, the configuration, the machine
(load average included: neighbours skew absolutes), the library versions and
every raw sample of every phase. Beside it, a plotly chart (HTML, self-contained
so it reads offline; PNG only if kaleido works offline).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from marketstream.bench.plan import API_PATHS, READER_POLL_S, TARGETS, Plan, met
from marketstream.redact import redact
from marketstream.settings import Settings


def versions() -> dict[str, str | None]:
    """Python's and the measured libraries' versions (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in (
        "kafka-python",
        "duckdb",
        "pyarrow",
        "orjson",
        "crc32c",
        "marketstream",
        "quixstreams",  # the peer row's, where installed
        "confluent-kafka",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    """What the figures were taken on (load average included: neighbours skew absolutes)."""
    import psutil

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def summarize(plan: Plan, settings: Settings, phases: dict[str, Any]) -> dict[str, Any]:
    """The flat figures (required keys first), targets, and every raw sample."""
    pair = phases["ceiling_consume"]
    ceiling = max(s["rate"] for s in pair["ceiling"])
    consume = max(s["rate"] for s in pair["consume"])
    baseline = phases["baseline"]["rate"]
    freshness = phases["freshness"]["latency_s"]
    api = phases["api"]["latency_ms"]
    peak = max(s["peak_rss_mb"] for s in pair["consume"])
    result: dict[str, Any] = {
        "n_ticks": plan.n_ticks,
        "produce_rate": phases["produce"]["rate"],
        "consume_rate": consume,
        "client_ceiling_rate": ceiling,
        "baseline_rate": baseline,
        "e2e_rate": phases["e2e"]["rate"],
        "freshness_p99_s": freshness["p99"],
        "api_p99_ms": api["p99"],
        "consumer_peak_rss_mb": peak,
        "consume_vs_ceiling": consume / ceiling,
        "speedup_vs_baseline": consume / baseline,
        "e2e_wall_s": phases["e2e"]["wall_s"],
        "baseline_n": plan.baseline_n,
        "freshness_p50_s": freshness["p50"],
        "freshness_p95_s": freshness["p95"],
        "freshness_rate": plan.live_rate,
        "api_p50_ms": api["p50"],
        "api_rps": phases["api"]["rps"],
        "api_load_generator": phases["api"].get("generator", "python"),
        "api_errors": phases["api"]["errors"],
        "api_concurrency": plan.concurrency,
        "consumer_base_rss_mb": min(s["base_rss_mb"] for s in pair["consume"]),
        **_cpu_and_peers(pair),
    }
    result["targets"] = {
        key: {"bound": f"{op} {bound:g}", "value": result[key], "met": met(result[key], op, bound)}
        for key, (op, bound) in TARGETS.items()
    }
    result["config"] = {
        "batch_size": settings.batch_size,
        "partitions": settings.partitions,
        "symbols": list(settings.symbols),
        "bootstrap_servers": settings.bootstrap_servers,
        "repeats": plan.repeats,
        "live_s": plan.live_s,
        "api_s": plan.api_s,
        "warmup_s": plan.warmup_s,
        "reader_poll_s": READER_POLL_S,
        "api_paths": list(API_PATHS),
    }
    if "scaling" in phases:
        result["scaling"] = phases["scaling"]
    result["machine"] = machine_info()
    result["versions"] = versions()
    result["taken_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["phases"] = phases
    return result


def _best(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return max(samples, key=lambda s: s["rate"])


def _cpu_us(sample: dict[str, Any]) -> float | None:
    """CPU microseconds per message of one worker's run (its ended children counted)."""
    if not sample.get("messages") or "cpu_s" not in sample:
        return None
    return sample["cpu_s"] / sample["messages"] * 1e6


def _cpu_and_peers(pair: dict[str, Any]) -> dict[str, Any]:
    """Per-tick CPU of the best consume and ceiling runs, and the peers' figures.

    CPU per tick is each worker process's own ``getrusage`` (user + system, all
    threads, and any child it waited for: a writer process of its own), from after
    its imports to its end; the issue's bound is consume ≤ 2× the bare client.
    """
    consume, ceiling = _cpu_us(_best(pair["consume"])), _cpu_us(_best(pair["ceiling"]))
    out: dict[str, Any] = {
        "consume_cpu_us_per_tick": consume,
        "ceiling_cpu_us_per_tick": ceiling,
        "consume_cpu_vs_ceiling": consume / ceiling if consume and ceiling else None,
        "consumer_children_peak_rss_mb": max(
            s.get("children_peak_rss_mb", 0.0) for s in pair["consume"]
        ),
    }
    if pair.get("quix"):
        quix = _best(pair["quix"])
        ceiling_rate = _best(pair["ceiling"])["rate"]
        out |= {
            "quix_rate": quix["rate"],
            "quix_vs_ceiling": quix["rate"] / ceiling_rate,
            "consume_vs_quix": _best(pair["consume"])["rate"] / quix["rate"],
            "quix_cpu_us_per_tick": _cpu_us(quix),
            "quix_peak_rss_mb": max(s["peak_rss_mb"] for s in pair["quix"]),
        }
    else:
        out["quix_skipped"] = pair.get("quix_skipped", "not run")
    return out


def _peer_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The peers' and the CPU rows of the table (absent figures: older results)."""
    rows: list[tuple[str, str, str]] = []
    if result.get("quix_rate"):
        rows.append(
            (
                "peer: Quix Streams -> DuckDB (batching sink)",
                f"{result['quix_rate']:,.0f} ticks/s",
                f"{result['quix_vs_ceiling']:.0%} of ceiling; consume is "
                f"{result['consume_vs_quix']:.2f}x it",
            )
        )
    elif result.get("quix_skipped"):
        rows.append(("peer: Quix Streams -> DuckDB", "skipped", result["quix_skipped"]))
    if result.get("consume_cpu_vs_ceiling"):
        rows.append(
            (
                "CPU per tick (all the consumer's processes)",
                f"{result['consume_cpu_us_per_tick']:.1f} us",
                f"{result['consume_cpu_vs_ceiling']:.2f}x the bare client's "
                f"{result['ceiling_cpu_us_per_tick']:.1f} us (issue's bound: <= 2x)",
            )
        )
    return rows


def format_table(result: dict[str, Any]) -> str:
    """The figures as a plain-text table for the terminal (and the README)."""

    def rate(x: float) -> str:
        return f"{x:,.0f} ticks/s"

    def verdict(key: str) -> str:
        target = result["targets"][key]
        return f"target {target['bound']}: {'met' if target['met'] else 'MISSED'}"

    m = result["machine"]
    rows = [
        ("produce", rate(result["produce_rate"]), ""),
        ("client ceiling (kafka-python, discard)", rate(result["client_ceiling_rate"]), ""),
        (
            "consume -> DuckDB",
            rate(result["consume_rate"]),
            f"{result['consume_vs_ceiling']:.0%} of ceiling; {verdict('consume_vs_ceiling')}",
        ),
        *_peer_rows(result),
        (
            f"naive baseline (per-message INSERT, {result['baseline_n']:,} ticks)",
            rate(result["baseline_rate"]),
            f"speed-up {result['speedup_vs_baseline']:,.0f}x; {verdict('speedup_vs_baseline')}",
        ),
        (
            "end to end (producer + consumer together)",
            rate(result["e2e_rate"]),
            f"wall {result['e2e_wall_s']:.1f} s",
        ),
        (
            f"freshness, live, {result['freshness_rate']:,.0f} ticks/s",
            f"p50 {result['freshness_p50_s']:.3f} s  p95 {result['freshness_p95_s']:.3f} s  "
            f"p99 {result['freshness_p99_s']:.3f} s",
            verdict("freshness_p99_s"),
        ),
        (
            f"API /live+/metrics, {result['api_concurrency']} concurrent, during ingest",
            f"p50 {result['api_p50_ms']:.1f} ms  p99 {result['api_p99_ms']:.1f} ms",
            f"{result['api_rps']:,.0f} req/s ({result['api_load_generator']}), "
            f"{result['api_errors']} errors; " + verdict("api_p99_ms"),
        ),
        (
            "consumer peak RSS",
            f"{result['consumer_peak_rss_mb']:,.0f} MB",
            f"{result['consumer_base_rss_mb']:,.0f} MB after imports",
        ),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    head = (
        f"marketstream bench: {result['n_ticks']:,} ticks on {m['cores']} cores ({m['cpu']}), "
        f"{m['memory_gib']} GiB; load average at start {m['load_average_start']}"
    )
    lines = [head, ""]
    lines += [f"{a:<{width[0]}}  {b:<{width[1]}}  {c}".rstrip() for a, b, c in rows]
    if result.get("scaling"):
        from marketstream.bench.scaling import format_summary

        lines += ["", format_summary(result["scaling"])]
    return "\n".join(lines)


def _figure(result: dict[str, Any]) -> Any:
    """The plotly figure: throughput (log scale), latency, and ratios against the targets."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "Throughput (ticks/s, log scale)",
            "Latency (ms)",
            "Ratios vs target",
        ),
    )
    names = ["produce", "client ceiling", "consume→DuckDB", "naive baseline", "end to end"]
    keys = ["produce_rate", "client_ceiling_rate", "consume_rate", "baseline_rate", "e2e_rate"]
    values = [result[k] for k in keys]
    fig.add_trace(
        go.Bar(x=names, y=values, text=[f"{v:,.0f}" for v in values], name="ticks/s"), 1, 1
    )
    fig.update_yaxes(type="log", row=1, col=1)
    lat_names = ["fresh p50", "fresh p95", "fresh p99", "API p50", "API p99"]
    lat = [
        result["freshness_p50_s"] * 1000,
        result["freshness_p95_s"] * 1000,
        result["freshness_p99_s"] * 1000,
        result["api_p50_ms"],
        result["api_p99_ms"],
    ]
    fig.add_trace(go.Bar(x=lat_names, y=lat, text=[f"{v:,.1f}" for v in lat], name="ms"), 1, 2)
    ratio_names = ["consume / ceiling", "speed-up / 50", "1 s / fresh p99", "50 ms / API p99"]
    ratios = [
        result["consume_vs_ceiling"] / 0.9,
        result["speedup_vs_baseline"] / 50,
        1.0 / result["freshness_p99_s"] if result["freshness_p99_s"] else math.nan,
        50.0 / result["api_p99_ms"] if result["api_p99_ms"] else math.nan,
    ]
    fig.add_trace(
        go.Bar(x=ratio_names, y=ratios, text=[f"{v:.2f}" for v in ratios], name="≥1 meets"), 1, 3
    )
    fig.add_hline(y=1.0, line_dash="dash", row=1, col=3)
    m = result["machine"]
    fig.update_layout(
        title=(
            f"marketstream bench — {result['n_ticks']:,} ticks, {m['cores']} cores, "
            f"{result['taken_at']}"
        ),
        showlegend=False,
        height=520,
    )
    return fig


def _write_png(fig: Any, png: Path) -> bool:
    """The figure as PNG through kaleido in a child process (it may hang or need a
    browser); True if the file was written."""
    spec = png.with_suffix(".fig.json")
    spec.write_text(fig.to_json(), encoding="utf-8")
    code = (
        "import sys, plotly.io as pio; "
        "pio.read_json(sys.argv[1]).write_image(sys.argv[2], width=1400, height=520)"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(spec), str(png)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        return done.returncode == 0 and png.exists()
    except (subprocess.TimeoutExpired, OSError):
        return False
    finally:
        spec.unlink(missing_ok=True)


def write_chart(result: dict[str, Any], html_path: Path) -> dict[str, str | None]:
    """A plotly chart of the figures: HTML always, PNG only if kaleido works offline."""
    fig = _figure(result)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(html_path, include_plotlyjs=True)  # self-contained: readable offline
    out: dict[str, str | None] = {"html": str(html_path), "png": None}
    if importlib.util.find_spec("kaleido") is not None:
        png = html_path.with_suffix(".png")
        if _write_png(fig, png):
            out["png"] = str(png)
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _clean(value: Any, secrets: Sequence[str]) -> Any:
    """NaN is not JSON: write null instead; a text quoting a credential (an error a
    phase kept) has it masked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: _clean(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, secrets) for v in value]
    return value


def write_json(result: dict[str, Any], path: Path, secrets: Sequence[str] = ()) -> None:
    """The result as indented JSON (NaN as null, paths and times as text, ``secrets``
    and any connection string's password masked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_clean(result, secrets), indent=2, default=_json_default)
    path.write_text(text + "\n", encoding="utf-8")
