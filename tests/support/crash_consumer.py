"""The real consumer, with a SIGKILL at a named step of its checkpoint (integration/test_crash.py).

Run as a separate process, so signals, DuckDB's write-ahead log and the
consumer-group protocol behave as in production. The fault goes in through
the consumer's own seam, :class:`ConsumeHooks`;
nothing is patched.

* ``CRASH_AT=store-commit:<n>``: die inside the n-th batch's store transaction,
  rows inserted, before ``COMMIT``; the row counts seen inside and outside that
  transaction are written to ``CRASH_NOTE`` first;
* ``CRASH_AT=kafka-commit:<n>``: die once the n-th batch is committed to the
  store but before its offsets are committed to Kafka;
* no ``CRASH_AT``: run to the end (or until killed from outside).

The test starting it sets ``KAFKA_SESSION_TIMEOUT_S`` to 6 s, the broker's
minimum, instead of Kafka's 45 s: that is how long the broker waits before it gives a
SIGKILLed member's partitions to its replacement, so repeated kills stay fast.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from marketstream.consume import ConsumeHooks, consume
from marketstream.decode import DecodedBatch
from marketstream.settings import Settings

COUNT = "SELECT count(*) FROM market_ticks"


def hooks_for(crash_at: str, note: str) -> ConsumeHooks:
    """The hooks that kill this process at ``<step>:<n>`` (see the module docstring)."""
    step, _, nth = crash_at.partition(":")
    calls = [0]

    def nth_call() -> bool:
        calls[0] += 1
        return calls[0] == int(nth)

    def before_store_commit(con: Any, _batch: DecodedBatch) -> None:
        if nth_call():
            inside = con.execute(COUNT).fetchall()[0][0]
            outside = con.cursor().execute(COUNT).fetchall()[0][0]  # committed data only
            with open(note, "w", encoding="utf-8") as out:
                out.write(f"{inside} {outside}")
            os.kill(os.getpid(), signal.SIGKILL)

    def before_kafka_commit(_batch: DecodedBatch, _added: int) -> None:
        if nth_call():
            os.kill(os.getpid(), signal.SIGKILL)

    if step == "store-commit":
        return ConsumeHooks(before_store_commit=before_store_commit)
    if step == "kafka-commit":
        return ConsumeHooks(before_kafka_commit=before_kafka_commit)
    if step:
        raise SystemExit(f"CRASH_AT={crash_at!r}: expected store-commit:<n> or kafka-commit:<n>")
    return ConsumeHooks()


def main() -> int:
    hooks = hooks_for(os.environ.get("CRASH_AT", ""), os.environ.get("CRASH_NOTE", os.devnull))
    run = consume(
        Settings.from_env(),
        hooks=hooks,
        progress=False,
    )
    print(f"consumed {run.messages_processed} messages: {run.rows_inserted} new rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
