"""Progress for the notebooks' long steps: one line that moves while the step runs and that
an executed notebook keeps at its final value (100 %).

Why not the tqdm bar the CLI shows: in a notebook, ``tqdm.auto`` draws an ipywidget, and
an executed notebook keeps only the widget's text at the moment it was created, so the
saved produce notebook showed ``produce: 0%| 0/150`` for ever. Here the line is an
IPython display that is *updated* in place (``display_id``): Jupyter redraws it live, and
papermill/nbclient write the last update into the saved notebook. Outside IPython (a
script, the CLI) the final line is printed once at the end.

The line reads ``<label> [#####.....] <done>/<total> <unit> (<pct> %)``;
notebooks/nbval_sanitize.cfg masks the moving part, so nbval compares the label and unit.

:func:`produce_csv` and :func:`consume` are the kit's own calls with this line in place
of tqdm (they take the same seams: the produce path's functions, the consumer's hooks).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from marketstream.settings import Settings

#: Characters of the bar.
WIDTH = 30

#: At most this many redraws a second (a redraw is a message to the notebook).
REDRAWS_PER_S = 10.0


def render(label: str, done: int, total: int, unit: str) -> str:
    """The progress line, e.g. ``produce [##########] 150/150 ticks (100 %)``.

    ``total`` 0 counts as done (nothing to do is 100 %).
    """
    fraction = 1.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = round(fraction * WIDTH)
    bar = "#" * filled + "." * (WIDTH - filled)
    return f"{label} [{bar}] {done}/{total} {unit} ({fraction * 100:.0f} %)"


class Progress:
    """A counter shown as one line that updates in place (see the module docstring).

    Use as a context manager: leaving it draws the final state, and :meth:`finish` sets
    the count to the total first (a step that did all its work reaches 100 % even when
    its total was an estimate).
    """

    def __init__(self, label: str, total: int, unit: str = "ticks") -> None:
        self.label = label
        self.total = int(total)
        self.unit = unit
        self.done = 0
        self._handle: Any = None
        self._last = 0.0
        self._closed = False
        try:
            from IPython import get_ipython

            shell = get_ipython()
        except ImportError:  # pragma: no cover - IPython ships with the kit
            shell = None
        if shell is not None and hasattr(shell, "kernel"):
            from IPython.display import display

            self._handle = display(self._bundle(), raw=True, display_id=True)

    def _bundle(self) -> dict[str, str]:
        return {"text/plain": render(self.label, self.done, self.total, self.unit)}

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._handle is None or (not force and now - self._last < 1 / REDRAWS_PER_S):
            return
        self._last = now
        self._handle.update(self._bundle(), raw=True)

    def update(self, n: int) -> None:
        """Count ``n`` more."""
        self.done += n
        self._draw()

    def finish(self) -> None:
        """The step is over: show ``total/total`` (or more, if more came)."""
        self.done = max(self.done, self.total)
        self.close()

    def close(self) -> None:
        """Draw the last state (printed once outside a notebook)."""
        if self._closed:
            return
        self._closed = True
        if self._handle is None:
            print(render(self.label, self.done, self.total, self.unit), flush=True)
        else:
            self._draw(force=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def counted(items: Iterable[Any], progress: Progress) -> Iterator[Any]:
    """``items``, counting each one as it is taken."""
    for item in items:
        progress.update(1)
        yield item


def produce_csv(path: Path, settings: Settings) -> Any:
    """:func:`marketstream.produce.produce_csv` with the progress line; its summary.

    The line counts rows as they are handed to the producer and ends at 100 % once the
    producer has had every row acknowledged (bad rows count too: they were read).
    """
    from marketstream.produce import (
        count_csv_rows,
        csv_symbols,
        produce_ticks,
        require_csv,
        spread_over,
    )
    from marketstream.ticks import read_csv

    require_csv(path)
    settings = spread_over(settings, csv_symbols(path))
    total = count_csv_rows(path)
    with Progress("produce", total, "rows") as bar:
        summary = produce_ticks(counted(read_csv(path), bar), settings, total=total, progress=False)
        bar.finish()
    return summary


def consume(settings: Settings, behind: int) -> Any:
    """Consume until caught up (:func:`marketstream.workers.consume_all`) with the progress
    line counting messages against ``behind`` (the lag before the run); its run metrics.

    One consumer counts each committed batch (the consumer's ``on_batch``); several worker
    processes report only at the end, so the line then moves once.
    """
    from marketstream.consume import consume as consume_one
    from marketstream.workers import consume_all

    with Progress("consume", behind, "messages") as bar:
        if settings.consumers == 1:
            run = consume_one(
                settings,
                progress=False,
                on_batch=lambda batch, _added: bar.update(
                    batch.ticks.num_rows + batch.dead.num_rows
                ),
            )
        else:
            run = consume_all(settings, progress=False)
            bar.update(run.messages_processed)
        if run.behind == 0:
            bar.finish()
    return run
