"""Every failure the kit expects, under one root the CLI catches.

Why one root: the CLI, the pipeline and the API each need to tell "the
user's environment or input" (one line, no traceback, exit 2) from "a bug"
(a traceback). Before, that list was ten unrelated classes imported lazily
from five modules; now it is ``except MarketstreamError``. Each subclass
keeps its old builtin base (``ValueError`` / ``RuntimeError``), so code that
caught those still does.

Modules raise the subclass of their concern; nothing here imports them, so
this module sits at the bottom of the import graph.
"""

from __future__ import annotations


class MarketstreamError(Exception):
    """An expected failure; its message is one line: what went wrong and what to do."""


class SettingsError(MarketstreamError, ValueError):
    """A configuration value that cannot be used; the message names the variable."""


class BrokerError(MarketstreamError, RuntimeError):
    """The local broker could not be fetched, started or stopped (no Java, port taken...)."""


class KafkaUnavailable(MarketstreamError, RuntimeError):
    """No Kafka broker answered, or it refused us; the message says which and why."""


class ProduceError(MarketstreamError, RuntimeError):
    """Producing could not start or go on (no broker, topic not creatable, no CSV)."""


class ConsumeError(MarketstreamError, RuntimeError):
    """Consuming could not start or go on; the message says what is safe and what to do."""


class StoreUnavailable(MarketstreamError, RuntimeError):
    """The store cannot be read or written right now (locked, missing, damaged)."""


class PipelineError(MarketstreamError, RuntimeError):
    """A notebook failed; the message names it and points at its executed copy."""


class BenchError(MarketstreamError, RuntimeError):
    """A benchmark phase could not run or produced no figure."""


class SoakError(MarketstreamError, RuntimeError):
    """The soak run could not finish (a consumer died, the count never arrived)."""


class ResourceMissing(MarketstreamError, FileNotFoundError):
    """A file the package ships (a notebook) is not there: a broken install."""


class ConfirmationRefused(MarketstreamError, RuntimeError):
    """A destructive step was not confirmed (``--fresh`` on a shared cluster without ``--yes``)."""


class ReplayError(MarketstreamError, ValueError):
    """A paced replay cannot run as asked (a speed that is not positive, nothing to replay)."""


class MissingExtra(MarketstreamError, ModuleNotFoundError):
    """A command needs an optional part that is not installed (``marketstream[api]``...)."""
