"""How a local broker's client listener is secured: one frozen value, checked once.

Why this exists: "Pointing at a real cluster" (README) promises that
SASL and TLS settings work against real clusters, and the only honest test of
that is a real broker with a secured listener. The kit's tests start such
brokers from the same jars as the demo broker, so the security of a listener
is data here (:class:`ListenerSecurity`), rendered into ``server.properties`` by
:func:`marketstream.broker.config.render_server_properties` and, for SCRAM, into
``StorageTool format --add-scram`` arguments by :func:`scram_arguments`.

The rules it enforces, each learnt from a broker that would not start or a
secret that would leak:

* Kafka's PEM keystores need the private key as PKCS#8 (``BEGIN PRIVATE KEY``
  or ``BEGIN ENCRYPTED PRIVATE KEY``); ``trustme`` and OpenSSL write EC/RSA
  keys in the older formats, which the broker rejects at start-up;
* SCRAM credentials live in the cluster metadata, so they are added when the
  storage is formatted (once per data dir); PLAIN users live in the JAAS line
  of ``server.properties`` (written mode 0600);
* user names and passwords go into a JAAS line and a StorageTool argument, so
  characters that would need quoting there (quotes, backslashes, control
  characters) are refused instead of being escaped half-right;
* passwords never appear in ``repr`` (only the user names do).

Measured on the 2-core demo machine: a secured broker (SCRAM users formatted
in, TLS, the authorizer) is up 4.7-8.7 s after the start, like a PLAINTEXT
one, and 13-33 s while another test suite's brokers share the two cores; the
StorageTool JVM is 2-3 s of it with or without SCRAM users.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from marketstream.errors import BrokerError

#: Protocols a secured client listener may use (PLAINTEXT is the unsecured default).
LISTENER_PROTOCOLS = ("SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: SASL mechanisms the broker can check without an external service.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Kafka's ``ssl.client.auth`` values.
CLIENT_AUTH = ("none", "requested", "required")
#: The KRaft authorizer (ACLs kept in the cluster metadata).
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
#: The principal of every request on a PLAINTEXT listener: the broker's own
#: INTERNAL and CONTROLLER listeners, so the broker is always a super user.
BROKER_PRINCIPAL = "User:ANONYMOUS"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNQUOTABLE = re.compile(r"[\"'\\\x00-\x1f\x7f]")


@dataclass(frozen=True, repr=False)
class ListenerSecurity:
    """The security of a broker's client listener.

    ``protocol`` is SSL, SASL_PLAINTEXT or SASL_SSL. SASL needs
    ``sasl_mechanisms`` and ``users`` ({name: password}, the same users for
    every mechanism). TLS needs ``certfile`` (the server certificate, chain
    included, PEM) and ``keyfile`` (its PKCS#8 PEM key, encrypted with
    ``key_password`` if that is set); ``cafile`` is the CA whose client
    certificates are trusted and ``client_auth`` (none, requested, required)
    whether clients must present one (mTLS). ``authorizer`` turns on Kafka's
    StandardAuthorizer with no ACLs: only ``super_users`` (names, or full
    principals such as ``User:CN=svc``) and the broker itself may do anything.
    """

    protocol: str
    sasl_mechanisms: tuple[str, ...] = ()
    users: Mapping[str, str] = field(default_factory=dict, hash=False)
    certfile: Path | None = None
    keyfile: Path | None = None
    key_password: str = ""
    cafile: Path | None = None
    client_auth: str = "none"
    authorizer: bool = False
    super_users: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        fix = object.__setattr__  # normalise a frozen value once, here
        fix(self, "protocol", self.protocol.upper())
        fix(self, "sasl_mechanisms", tuple(m.upper() for m in self.sasl_mechanisms))
        fix(self, "users", MappingProxyType(dict(self.users)))
        fix(self, "super_users", tuple(self.super_users))
        for name in ("certfile", "keyfile", "cafile"):
            value = getattr(self, name)
            if value is not None:
                fix(self, name, Path(value).resolve())
        problem = self._problem()
        if problem:
            raise BrokerError(f"listener security: {problem}")

    def _problem(self) -> str | None:
        if self.protocol not in LISTENER_PROTOCOLS:
            return f"protocol {self.protocol!r} is not one of {', '.join(LISTENER_PROTOCOLS)}"
        if self.sasl and not self.sasl_mechanisms:
            return f"{self.protocol} needs at least one SASL mechanism"
        if not self.sasl and self.sasl_mechanisms:
            return f"{self.protocol} has no SASL, so it takes no SASL mechanisms"
        unknown = [m for m in self.sasl_mechanisms if m not in SASL_MECHANISMS]
        if unknown:
            return f"SASL mechanism {unknown[0]} is not one of {', '.join(SASL_MECHANISMS)}"
        if self.sasl and not self.users:
            return "SASL needs at least one user"
        for name, password in self.users.items():
            if not _NAME.fullmatch(name):
                return f"user name {name!r} must be letters, digits, '.', '_' or '-'"
            if not password or _UNQUOTABLE.search(password):
                return f"the password of {name} is empty or has quotes, backslashes or controls"
        if self.key_password and _UNQUOTABLE.search(self.key_password):
            return "the key password has quotes, backslashes or control characters"
        if self.ssl and (self.certfile is None or self.keyfile is None):
            return f"{self.protocol} needs the server's certfile and keyfile (PEM)"
        if self.client_auth not in CLIENT_AUTH:
            return f"client_auth {self.client_auth!r} is not one of {', '.join(CLIENT_AUTH)}"
        if self.client_auth != "none" and (not self.ssl or self.cafile is None):
            return "client certificates (client_auth) need TLS and the clients' CA (cafile)"
        if self.super_users and not self.authorizer:
            return "super users mean something only with the authorizer on"
        return None

    @property
    def sasl(self) -> bool:
        """True if clients authenticate with SASL."""
        return self.protocol.startswith("SASL_")

    @property
    def ssl(self) -> bool:
        """True if the listener speaks TLS."""
        return self.protocol.endswith("SSL")

    @property
    def scram_mechanisms(self) -> tuple[str, ...]:
        """The SCRAM mechanisms among the enabled ones (their users are formatted in)."""
        return tuple(m for m in self.sasl_mechanisms if m.startswith("SCRAM-"))

    @property
    def super_principals(self) -> tuple[str, ...]:
        """``super.users`` entries: the broker's own principal, then the named ones."""
        named = tuple(u if ":" in u else f"User:{u}" for u in self.super_users)
        return (BROKER_PRINCIPAL, *named)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every password this value holds (to be kept out of output)."""
        found = [*self.users.values(), self.key_password]
        return tuple(s for s in found if s)

    def __repr__(self) -> str:
        parts = [f"protocol={self.protocol!r}"]
        if self.sasl:
            parts += [f"sasl_mechanisms={self.sasl_mechanisms!r}", f"users={tuple(self.users)!r}"]
        if self.ssl:
            parts += [f"certfile={str(self.certfile)!r}", f"client_auth={self.client_auth!r}"]
        if self.authorizer:
            parts.append(f"super_users={self.super_users!r}")
        return f"ListenerSecurity({', '.join(parts)})"

    def mismatch(self, protocol: str, mechanism: str = "") -> str | None:
        """Why a client with this protocol and SASL mechanism cannot use the listener, or None.

        The broker's own readiness probe is such a client: with a mismatch it
        could never see the broker up, so :func:`~marketstream.broker.start_broker`
        refuses at once instead of waiting out its timeout.
        """
        if protocol.upper() != self.protocol:
            return (
                f"the client settings use {protocol.upper()} but the listener is "
                f"{self.protocol}; set KAFKA_SECURITY_PROTOCOL={self.protocol}"
            )
        if self.sasl and mechanism.upper() not in self.sasl_mechanisms:
            return (
                f"the client settings use SASL mechanism {mechanism or '(none)'} but the "
                f"listener enables {', '.join(self.sasl_mechanisms)}"
            )
        return None


def scram_arguments(security: ListenerSecurity) -> list[str]:
    """``StorageTool format`` arguments adding every user for every SCRAM mechanism.

    They hold the passwords, so they go into a private argument file, never
    onto a command line (:func:`marketstream.broker.node.start_broker`).
    """
    args: list[str] = []
    for mechanism in security.scram_mechanisms:
        for name, password in sorted(security.users.items()):
            args += ["--add-scram", f'{mechanism}=[name={name},password="{password}"]']
    return args
