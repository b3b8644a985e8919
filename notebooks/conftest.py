"""nbval on the notebooks: ``pytest --nbval notebooks/`` runs them in a sandbox of their own.

The notebooks are committed with their outputs, and strict nbval fails on any output
that changed. So the kernels must start from the same state on every run: an empty home
folder, a new topic and group, every setting at its default
(:func:`marketstream.notebook_runs.sandbox`), on a temporary broker started here, or on
the one ``--nbval-broker HOST:PORT`` names (the integration test's session broker). The values
that still differ (the sandbox's path, the broker's port, times, rates) are masked by
``nbval_sanitize.cfg``, used unless ``--nbval-sanitize-with`` names another.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")

_sandbox = contextlib.ExitStack()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--nbval-broker",
        default=None,
        metavar="HOST:PORT",
        help="run the notebooks on this Kafka broker (default: a temporary one)",
    )


def pytest_configure(config: pytest.Config) -> None:
    option = config.option
    if not (getattr(option, "nbval", False) or getattr(option, "nbval_lax", False)):
        return
    if not (option.nbval_sanitize_with or option.sanitize_with):
        option.nbval_sanitize_with = str(SANITIZE)
    from marketstream.notebook_runs import sandbox

    _sandbox.enter_context(sandbox(option.nbval_broker))


def pytest_unconfigure(config: pytest.Config) -> None:
    _sandbox.close()
