"""Plotly figures shared by the explore notebook and the Voila live page.

Figures are built from the store's DataFrames, never from SQL, so the same
chart code serves a batch run and a live stream.
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from marketstream.store import METRIC_COLUMNS


def price_lines(ticks: pd.DataFrame) -> go.Figure:
    """One price line per symbol; each on its own y-axis since index levels differ 70x."""
    symbols = sorted(ticks["symbol"].unique()) if len(ticks) else []
    fig = make_subplots(
        rows=max(1, len(symbols)), cols=1, shared_xaxes=True, subplot_titles=symbols or None
    )
    for i, symbol in enumerate(symbols, start=1):
        part = ticks[ticks["symbol"] == symbol]
        fig.add_trace(
            go.Scatter(x=part["event_time"], y=part["price"], mode="lines", name=symbol),
            row=i,
            col=1,
        )
    fig.update_layout(
        title="Price per symbol", height=220 * max(1, len(symbols)) + 80, showlegend=False
    )
    return fig


def volume_bars(ticks: pd.DataFrame, freq: str = "10s") -> go.Figure:
    """Traded volume per symbol, summed into time buckets and stacked."""
    if ticks.empty:
        return px.bar(title="Volume")
    buckets = (
        ticks.assign(time=ticks["event_time"].dt.floor(freq))
        .groupby(["time", "symbol"], as_index=False)["volume"]
        .sum()
    )
    return px.bar(buckets, x="time", y="volume", color="symbol", title=f"Volume per {freq}")


def stats_table(metrics: pd.DataFrame) -> go.Figure:
    """The per-symbol statistics (the seed's "Market Metrics") as a table."""
    shown = metrics[[c for c in METRIC_COLUMNS if c in metrics.columns]]
    return go.Figure(
        go.Table(
            header={"values": list(shown.columns), "align": "left"},
            cells={"values": [shown[c].tolist() for c in shown.columns], "align": "left"},
        ),
        layout={"title": "Market statistics", "height": 120 + 30 * len(shown)},
    )


def run_metrics(runs: pd.DataFrame) -> go.Figure:
    """Throughput and message counts of each consumer run, oldest first."""
    if runs.empty:
        return px.bar(title="Pipeline runs")
    ordered = runs.sort_values("started_at")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Bar(x=ordered["run_id"], y=ordered["messages_processed"], name="messages"),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(x=ordered["run_id"], y=ordered["throughput_per_s"], name="ticks/s"),
        secondary_y=True,
    )
    fig.update_layout(title="Consumer runs: messages and throughput")
    return fig
