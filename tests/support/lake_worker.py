"""One consumer worker for the scale-out tests (integration/lake/), with an optional stall.

The real consumer (:func:`marketstream.consume.consume`, live policy: it runs
until SIGTERM) in its own process, as ``marketstream.workers`` runs it, but
with the 6 s consumer-group session timeout its tests give it through
``KAFKA_SESSION_TIMEOUT_S`` (the broker's minimum; Kafka's default is 45 s), so a
killed or stalled worker's partitions move on quickly.
Faults go in through the consumer's own seam, :class:`ConsumeHooks`:

* ``STALL_AT=<n>``: inside the n-th batch's store transaction, rows inserted
  but not committed, write ``stalled`` to ``WORKER_NOTE`` and SIGSTOP itself.
  After the test's SIGCONT the transaction goes on to its commit; once the
  store has answered, ``resumed <rows added>`` is appended to the note. That
  is the zombie: a worker that lost its partitions while it slept and then
  tries to write the batch its successor has already stored.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from marketstream.consume import ConsumeHooks, consume
from marketstream.decode import DecodedBatch
from marketstream.settings import Settings


def hooks_for(stall_at: int, note: str) -> ConsumeHooks:
    """Hooks that stall the ``stall_at``-th batch (0: never) and report what it added."""
    calls = [0]
    stalled: list[DecodedBatch] = []

    def before_store_commit(_con: Any, batch: DecodedBatch) -> None:
        calls[0] += 1
        if calls[0] == stall_at:
            stalled.append(batch)
            with open(note, "w", encoding="utf-8") as out:
                out.write("stalled\n")
            os.kill(os.getpid(), signal.SIGSTOP)

    def before_kafka_commit(batch: DecodedBatch, added: int) -> None:
        if stalled and batch is stalled[0]:
            with open(note, "a", encoding="utf-8") as out:
                out.write(f"resumed {added}\n")

    return ConsumeHooks(
        before_store_commit=before_store_commit, before_kafka_commit=before_kafka_commit
    )


def main() -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    hooks = hooks_for(
        int(os.environ.get("STALL_AT", "0")), os.environ.get("WORKER_NOTE", os.devnull)
    )
    run = consume(
        Settings.from_env(),
        live=True,
        stop=stop,
        hooks=hooks,
        progress=False,
    )
    print(f"consumed {run.messages_processed} messages: {run.rows_inserted} new rows", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
