"""A consumer process that dies by SIGKILL at a chosen step of its checkpoint: how the
guarantees notebook shows exactly-once.

The kill goes in through the consumer's own seam, :class:`~marketstream.consume.ConsumeHooks`
(nothing is patched): the child runs the ordinary :func:`~marketstream.consume.consume`
with a hook that sends its own process SIGKILL when the n-th batch reaches the step:

* ``store-commit:<n>``: inside the n-th batch's store transaction, rows inserted, before
  ``COMMIT`` (the store then never had them);
* ``kafka-commit:<n>``: the n-th batch is committed to the store, its offsets not yet
  to Kafka (the store is then ahead of the group's committed offsets).

Run as ``python -m marketstream.crash --at STEP:N`` with the settings in the environment
(:func:`kill_consumer` does that); a SIGKILL is what a power cut or the OOM killer does:
no ``finally``, no clean-up, DuckDB's write-ahead log left as it was.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from marketstream.settings import Settings, home

#: The steps a consumer can be killed at (see the module docstring).
STEPS = ("store-commit", "kafka-commit")


def parse(at: str) -> tuple[str, int]:
    """``"store-commit:3"`` -> ``("store-commit", 3)``; ValueError for anything else."""
    step, _, nth = at.partition(":")
    if step not in STEPS or not nth.isdigit() or int(nth) < 1:
        raise ValueError(f"crash point {at!r}: expected one of {', '.join(STEPS)} and :<n>, n >= 1")
    return step, int(nth)


def hooks(at: str) -> Any:
    """The :class:`ConsumeHooks` that SIGKILL this process at ``at`` (``STEP:N``)."""
    from marketstream.consume import ConsumeHooks

    step, nth = parse(at)
    calls = [0]

    def die_on_nth(*_: object) -> None:
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    if step == "store-commit":
        return ConsumeHooks(before_store_commit=die_on_nth)
    return ConsumeHooks(before_kafka_commit=die_on_nth)


def kill_consumer(settings: Settings, at: str, timeout_s: float = 300.0) -> str:
    """Run a consumer process that SIGKILLs itself at ``at``; one line saying how it ended.

    Raises RuntimeError if it ended any other way (it finished, or failed).
    """
    from marketstream.processes import child_env

    parse(at)
    done = subprocess.run(
        [sys.executable, "-m", "marketstream.crash", "--at", at],
        env=child_env(settings),
        cwd=home(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != -signal.SIGKILL:
        raise RuntimeError(
            f"the consumer was to die by SIGKILL at {at} but exited with {done.returncode}: "
            f"{(done.stdout + done.stderr)[-800:]}"
        )
    step, nth = parse(at)
    where = {
        "store-commit": "inside its store transaction, before COMMIT",
        "kafka-commit": "after the store committed, before the Kafka commit",
    }[step]
    return f"the consumer process died by SIGKILL (exit -9) in batch {nth}, {where}"


def main(argv: Sequence[str] | None = None) -> int:
    """The consumer that kills itself (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m marketstream.crash")
    parser.add_argument("--at", required=True, help="STEP:N, STEP one of " + ", ".join(STEPS))
    args = parser.parse_args(argv)
    from marketstream.consume import consume

    run = consume(Settings.from_env(), hooks=hooks(args.at), progress=False)
    print(f"not killed: consumed {run.messages_processed} messages", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
