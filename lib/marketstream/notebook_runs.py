"""The numbered notebooks executed in a sandbox: how their committed outputs are made and
how nbval checks them.

The notebooks are committed with their outputs, so a reader sees the tables and charts
without running anything, and ``pytest --nbval notebooks/`` re-runs them and fails on
any output that changed. For that, each run must start from the same state: a
:func:`sandbox` gives the notebooks' kernels (through the environment they inherit) an
empty home folder of their own (``marketstream-nbval-*``: data, logs, output), a new
topic and consumer group on a broker, and every setting at its default, whatever the
caller's environment or ``.env`` say. The broker is the one given (``pytest --nbval
--nbval-broker HOST:PORT``, a test session's), else a temporary one started here and
stopped after.

What still differs between two runs (the sandbox's folder, the broker's port, the
topic's suffix, times, rates) is masked by ``notebooks/nbval_sanitize.cfg``; cells whose
output is all such values carry the ``nbval-ignore-output`` tag.

``python -m marketstream.notebook_runs [--broker HOST:PORT] [NAMES...]`` executes the
notebooks in place in a sandbox (all but 05 by default): that is how their committed
outputs are refreshed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from marketstream import resources
from marketstream.settings import OPTIONS, VARIABLES, Settings

#: The notebooks nbval runs, in order (all the package ships). 05 (the live page) is
#: committed without outputs, so nbval runs it without comparing: its last cell starts the
#: page's refresh task and returns, and the kernel is shut down after it.
NOTEBOOKS = resources.NOTEBOOKS

#: The notebooks committed with their outputs (:func:`refresh`'s default).
WITH_OUTPUTS = tuple(n for n in NOTEBOOKS if n != "05_live")

#: The prefix of a sandbox's home folder (the sanitize file masks the whole path).
HOME_PREFIX = "marketstream-nbval-"

#: plotly's renderer in the kernels: the figure's JSON (JupyterLab draws it) and a
#: ``<div>`` that loads plotly.js from its CDN (classic notebook, nbviewer), never the
#: 3.5 MB of plotly.js embedded in the notebook.
PLOTLY_RENDERER = "plotly_mimetype+notebook_connected"


def notebooks_dir() -> Path:
    """The folder of the numbered notebooks (the checkout's, or the installed package's)."""
    return resources.notebook_dir().resolve()


def sandbox_env(bootstrap_servers: str, home: Path, kafka_home: Path) -> dict[str, str]:
    """The environment of a sandbox's kernels (see the module docstring): every setting's
    variable removed, then home, broker, a new topic and group, the jar cache set."""
    env = {k: v for k, v in os.environ.items() if not _is_setting(k)}
    suffix = uuid.uuid4().hex[:8]
    env.update(
        {
            "MARKETSTREAM_HOME": str(home),
            "MARKETSTREAM_KAFKA_HOME": str(kafka_home),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
            "KAFKA_TOPIC": f"market_ticks-{suffix}",
            "KAFKA_CONSUMER_GROUP": f"marketstream-duckdb-{suffix}",
            "PLOTLY_RENDERER": PLOTLY_RENDERER,
        }
    )
    return env


def _is_setting(name: str) -> bool:
    known = {o.env for o in OPTIONS} | {v.env for v in VARIABLES}
    return name in known or name in ("MARKETSTREAM_HOME", "PLOTLY_RENDERER")


@contextlib.contextmanager
def sandbox(bootstrap_servers: str | None = None) -> Iterator[dict[str, str]]:
    """Put a sandbox's environment into this process's (kernels inherit it) for the
    block; yield it. ``bootstrap_servers``: the broker to use, else a temporary one.
    Everything it made is removed after."""
    from marketstream.broker import temporary_broker

    settings = Settings.from_env()
    folder = Path(tempfile.mkdtemp(prefix=HOME_PREFIX))
    saved = dict(os.environ)
    try:
        with contextlib.ExitStack() as stack:
            if bootstrap_servers is None:
                broker = folder / "broker"
                broker.mkdir()
                bootstrap_servers = stack.enter_context(
                    temporary_broker(settings, broker)
                ).bootstrap_servers
            home = folder / "home"
            home.mkdir()
            env = sandbox_env(bootstrap_servers, home, settings.kafka_home)
            os.environ.clear()
            os.environ.update(env)
            try:
                yield env
            finally:
                os.environ.clear()
                os.environ.update(saved)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def execute_in_place(path: Path, home: Path, timeout_s: int = 600) -> None:
    """Run a notebook top to bottom in a fresh kernel (in ``home``) and save its outputs
    into it, without run times in its metadata."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb,
        kernel_name="python3",
        timeout=timeout_s,
        record_timing=False,
        resources={"metadata": {"path": str(home)}},
    ).execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


def refresh(
    names: Sequence[str] = WITH_OUTPUTS,
    folder: Path | None = None,
    bootstrap_servers: str | None = None,
) -> list[Path]:
    """Execute ``names`` in order in one sandbox and save their outputs (committed ones)."""
    folder = folder or notebooks_dir()
    done = []
    with sandbox(bootstrap_servers) as env:
        for name in names:
            path = folder / f"{name}.ipynb"
            print(f"executing {path}", flush=True)
            execute_in_place(path, Path(env["MARKETSTREAM_HOME"]))
            done.append(path)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m marketstream.notebook_runs",
        description="execute the notebooks in place in a sandbox (their committed outputs)",
    )
    parser.add_argument("names", nargs="*", default=list(WITH_OUTPUTS))
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--broker", default=None, help="HOST:PORT (default: a temporary one)")
    args = parser.parse_args(argv)
    refresh(args.names, args.folder, args.broker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
