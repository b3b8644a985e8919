"""Waiting on a condition, never on the clock: the one helper every test uses.

A test that sleeps a fixed time and then asserts bets that the machine is fast
enough; on a loaded machine (CI, a laptop compiling something) the bet is lost.
:func:`wait_until` polls instead, up to a generous deadline that only a real
failure reaches, and fails naming what never happened.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.1,
    died: Callable[[], str | None] | None = None,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    ``died`` is asked between polls: a text means what was waited on cannot
    get there any more (a child process exited), so fail at once with it.
    ``context`` adds details (e.g. a child's output) to a timeout's message.
    The condition is always asked once more at the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if died is not None and (why := died()) is not None:
            pytest.fail(f"{why} while waiting for {what}")
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    details = f"\n{context()}" if context is not None else ""
    pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}{details}")


def exited(proc: subprocess.Popen[str], name: str = "consumer") -> Callable[[], str | None]:
    """A ``died`` check for :func:`wait_until`: has ``proc`` exited, and with what output."""

    def check() -> str | None:
        if proc.poll() is None:
            return None
        out, err = proc.communicate()
        return f"{name} exited ({proc.returncode}): {out} {err[-2000:]}"

    return check
