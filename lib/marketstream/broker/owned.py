"""The one rule for "is there a broker, and may the kit start one?".

Why here and only here: the pipeline, live mode, the bench and the soak test
each carried their own "probe, start if nothing answers, stop if we started
it" sequence, and none of them looked at the security settings, so a secured
cluster that refused the login looked like "no broker" and the kit tried to
start one in its place; the error then named the wrong cause ("port in use by
another program") instead of the real one (a wrong password, a typo'd host).
The rule (README, "Pointing at a real cluster"):

* a broker that answers at the bootstrap servers is used and never touched;
* otherwise a local one is started only when the address is this machine's,
  nothing listens there and no security is configured; anything else is
  somebody's cluster, so :class:`KafkaUnavailable` names the cause instead;
* a broker started for a block of work is stopped at the end of the block
  (:func:`owned_broker`), unless asked to keep it.

When no broker answers, the reason comes from
:meth:`~marketstream.clients.KafkaClients.diagnose` (wrong password, untrusted
certificate, wrong protocol, unknown host...), the same line the CLI prints.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from marketstream.broker.node import BrokerStatus, broker_status, start_broker, stop_broker
from marketstream.clients import DEFAULT_CLIENTS, KafkaClients
from marketstream.errors import KafkaUnavailable
from marketstream.kafka_errors import no_broker
from marketstream.processes import is_local_address, port_open
from marketstream.settings import Settings

log = logging.getLogger(__name__)


def local_start_refusal(
    settings: Settings, clients: KafkaClients = DEFAULT_CLIENTS, diagnosis: str | None = None
) -> str | None:
    """Why the kit must not start a broker for these settings, or ``None`` if it may.

    Asked only once no broker answers. A wrong password or a typo'd host must
    surface as such, not be papered over by a fresh local broker: the line is
    ``diagnosis`` (what :meth:`KafkaClients.diagnose` said, asked here if not given).
    """
    host, port = settings.bootstrap_host_port
    local = is_local_address(host)
    if not settings.secured and local and not port_open(host, port):
        return None
    why = diagnosis or clients.diagnose(settings) or no_broker(settings)
    if settings.secured and not port_open(host, port):
        return f"{why} (the kit starts a local broker only when no security is configured)"
    if not local:
        return f"{why} ({host} is not this machine, so none is started here)"
    return why


@dataclass(frozen=True)
class OwnedBroker:
    """The broker a block of work runs against, and whether the block started it."""

    status: BrokerStatus
    started: bool


def _ensure(
    settings: Settings,
    say: Callable[[str], None] | None,
    run_dir: Path | None,
    clients: KafkaClients,
) -> OwnedBroker:
    diagnosis = clients.diagnose(settings)
    if diagnosis is None:
        return OwnedBroker(broker_status(settings, run_dir=run_dir, clients=clients), False)
    refusal = local_start_refusal(settings, clients, diagnosis)
    if refusal is not None:
        raise KafkaUnavailable(refusal)
    (say if say is not None else log.info)(
        f"no Kafka broker at {settings.bootstrap_servers}: starting a local one"
    )
    status = start_broker(settings, run_dir=run_dir, say=say, clients=clients)
    return OwnedBroker(status, started=True)


def ensure_broker(
    settings: Settings,
    *,
    say: Callable[[str], None] | None = None,
    run_dir: Path | None = None,
    clients: KafkaClients = DEFAULT_CLIENTS,
) -> BrokerStatus:
    """A broker answering at the bootstrap servers: the one already there, or a new local
    one (left running). Raises :class:`KafkaUnavailable` where none may be started.

    ``say`` hears a line when a broker is started (and the jar fetch's progress);
    without it those lines are logged at INFO. ``run_dir`` is the local broker's
    (default ``<kafka_home>/run/<port>``).
    """
    return _ensure(settings, say, run_dir, clients).status


@contextlib.contextmanager
def owned_broker(
    settings: Settings,
    *,
    keep: bool = False,
    say: Callable[[str], None] | None = None,
    run_dir: Path | None = None,
    clients: KafkaClients = DEFAULT_CLIENTS,
) -> Iterator[OwnedBroker]:
    """Run a block against a broker: the one that answers, or a local one started for it.

    The only place of the rule "start a broker if none answers, stop it
    afterwards" (pipeline, live mode, bench and soak all use it). A broker
    this block started is stopped at its end (an exception or Ctrl-C
    included), unless ``keep``; one that was already there is never touched.
    ``say`` and ``run_dir`` as for :func:`ensure_broker`.
    """
    owned = _ensure(settings, say, run_dir, clients)
    try:
        yield owned
    finally:
        if owned.started and not keep:
            stop_broker(settings, run_dir=run_dir)
