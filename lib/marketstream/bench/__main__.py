"""``python -m marketstream.bench --worker KIND``: a bench worker process (see :mod:`.workers`).

The bench itself runs as ``marketstream bench -n N``; this entry point only
serves the worker processes it starts.
"""

from __future__ import annotations

import sys

from marketstream.bench import consumers, load
from marketstream.bench.workers import WorkerFn, worker_main

#: Every worker kind, by the name the parent starts it with.
KINDS: dict[str, WorkerFn] = {
    "ceiling": consumers.ceiling,
    "consume": consumers.consume,
    "live": consumers.live,
    "naive": consumers.naive,
    "quix": consumers.quix,
    "load": load.python_load,
}


def main(argv: list[str]) -> int:
    """Run the worker named by ``--worker KIND``; 2 with a usage line otherwise."""
    if len(argv) == 2 and argv[0] == "--worker" and argv[1] in KINDS:
        return worker_main(argv[1], KINDS)
    print("usage: marketstream bench -n N (this module's own entry point runs workers)")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
