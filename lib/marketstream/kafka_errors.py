"""One line a person can act on, for every way Kafka fails: the one place for those sentences.

Why: kafka-python's errors print as their class name plus whatever argument
they got, often nothing or ``None`` (a consumer that lost its broker exited
with "KafkaTimeoutError: None"), and every failed bootstrap ends in the same
"Unable to bootstrap" after a timeout, whether the password was wrong, the CA
unknown or the port someone else's. The user needs to know which broker,
what went wrong, whether anything is lost, and what to do. So the probe
(:mod:`marketstream.probe`), the clients (:mod:`marketstream.clients`), the
broker rule (:mod:`marketstream.broker.owned`), the producer and the consumer
all take their sentences from here, and the wording is reviewed in one file.

Every sentence names servers, users, files and variables, never a password
(the callers never pass one in), and is one line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kafka import errors as kafka_python_errors
from kafka.errors import (
    AuthorizationError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    InvalidSessionTimeoutError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
    TransactionalIdAuthorizationFailedError,
)

from marketstream.processes import free_port

if TYPE_CHECKING:
    from marketstream.settings import Settings

#: Errors that mean "the broker did not answer", whatever the operation was.
_UNREACHABLE = (KafkaTimeoutError, KafkaConnectionError)

#: What each operation of the kit needs, as ACLs (``{topic}``/``{group}`` filled in).
ACCESS = {
    "create": "CREATE on topic {topic} (or create the topic for it)",
    "write to": "WRITE and DESCRIBE on topic {topic}",
    "read": "READ and DESCRIBE on topic {topic} and READ on consumer group {group}",
    "use": "DESCRIBE on topic {topic}",
}


_ERROR_CODE = re.compile(r"\[Error (\d+)\]")


def authorization_error(exc: BaseException) -> AuthorizationError | None:
    """The authorisation error ``exc`` is or wraps, else None.

    kafka-python wraps some in a plain ``KafkaError`` whose text carries the
    code: an idempotent producer refused its producer id fails every send with
    "Unexpected error in InitProducerIdResponse: [Error 31] ClusterAuthorizationFailedError".
    """
    if isinstance(exc, AuthorizationError):
        return exc
    match = _ERROR_CODE.search(" ".join(str(a) for a in exc.args))
    if match is None:
        return None
    kind = kafka_python_errors.for_code(int(match.group(1)))
    return kind() if issubclass(kind, AuthorizationError) else None


def describe(exc: BaseException) -> str:
    """The error's class name and its message, leaving out an empty or ``None`` message."""
    detail = " ".join(str(a) for a in exc.args if a not in (None, "", "None"))
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _servers(settings: Settings) -> str:
    return settings.bootstrap_servers


def _protocol(settings: Settings) -> str:
    return settings.security_protocol.upper()


def principal(settings: Settings) -> str:
    """Who the broker sees: the SASL user, the client certificate, or ANONYMOUS."""
    if _protocol(settings).startswith("SASL_"):
        return f"user {settings.sasl_username or '(no KAFKA_SASL_USERNAME)'}"
    if settings.ssl_certfile:
        return f"the user of the client certificate {settings.ssl_certfile}"
    return "user ANONYMOUS (no SASL user or client certificate is set)"


# --------------------------------------------------------------------------- no answer


def no_broker(settings: Settings) -> str:
    """Nothing answered at the bootstrap servers: what to do about it."""
    if settings.secured:
        return (
            f"no Kafka broker answers at {_servers(settings)} with "
            f"{settings.security_protocol}; check KAFKA_BOOTSTRAP_SERVERS and the "
            "KAFKA_SECURITY_PROTOCOL/SASL/SSL settings"
        )
    return (
        f"no Kafka broker answers at {_servers(settings)}; "
        "start one with `marketstream broker up` or set KAFKA_BOOTSTRAP_SERVERS"
    )


def unresolvable(settings: Settings, host: str, port: int, detail: str) -> str:
    """The host of a bootstrap server has no address."""
    return (
        f"no Kafka broker answers at {_servers(settings)}: the host {host} does not "
        f"resolve ({detail}); check the host name in KAFKA_BOOTSTRAP_SERVERS"
    )


def refused(settings: Settings, host: str, port: int) -> str:
    """Nothing listens at a bootstrap server."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (
        f"no Kafka broker answers at {_servers(settings)}: nothing listens at {where} "
        "(connection refused); check the port in KAFKA_BOOTSTRAP_SERVERS and that the "
        "broker is running"
    )


def connect_timeout(settings: Settings, host: str, port: int, timeout_s: float) -> str:
    """A bootstrap server's port neither accepts nor refuses (a firewall drops it)."""
    return (
        f"no Kafka broker answers at {_servers(settings)}: {host}:{port} did not accept a "
        f"connection within {timeout_s:g} s (a firewall, or a wrong host or port); check "
        "KAFKA_BOOTSTRAP_SERVERS"
    )


def unreachable(settings: Settings, host: str, port: int, detail: str) -> str:
    """The network refuses the way to a bootstrap server."""
    return (
        f"no Kafka broker answers at {_servers(settings)}: cannot reach {host}:{port} "
        f"({detail}); check KAFKA_BOOTSTRAP_SERVERS and the network"
    )


def not_kafka(settings: Settings, hp: str, local: bool, what: str) -> str:
    """Something accepts TCP there but does not answer ``what`` as a Kafka broker would."""
    fix = (
        f"set KAFKA_BOOTSTRAP_SERVERS=localhost:{free_port()} for a local broker, or the "
        "security settings if it is a secured cluster"
        if local
        else "check the port in KAFKA_BOOTSTRAP_SERVERS and KAFKA_SECURITY_PROTOCOL"
    )
    return (
        f"something listens at {hp} but does not answer as a {_protocol(settings)} Kafka "
        f"broker; {fix} (no answer to {what})"
    )


def probe_failed(settings: Settings, hp: str, exc: BaseException) -> str:
    """A network error the probe has no better name for."""
    return (
        f"no Kafka broker answers at {_servers(settings)}: talking to {hp} failed "
        f"({describe(exc)}); check KAFKA_BOOTSTRAP_SERVERS and KAFKA_SECURITY_PROTOCOL"
    )


def bootstrap_failed(settings: Settings, exc: BaseException, timeout_s: float) -> str:
    """The listener passed every check, but a Kafka client still got no metadata."""
    return (
        f"the Kafka broker at {_servers(settings)} accepted the connection but its client "
        f"got no cluster metadata within {timeout_s:g} s ({describe(exc)}); check that the "
        "broker's advertised listeners are reachable from here"
    )


# --------------------------------------------------------------------------- protocol


def tls_expected(settings: Settings, hp: str, sasl: bool | None) -> str:
    """A non-TLS client at a TLS listener."""
    want = "SASL_SSL" if sasl else "SSL"
    return (
        f"the broker at {hp} speaks TLS but KAFKA_SECURITY_PROTOCOL={_protocol(settings)}; "
        f"set KAFKA_SECURITY_PROTOCOL={want} and KAFKA_SSL_CAFILE to the CA certificate "
        "that signed the broker's certificate"
    )


def tls_not_spoken(settings: Settings, hp: str, sasl: bool) -> str:
    """A TLS client at a listener without TLS."""
    kind = "SASL_PLAINTEXT" if sasl else "PLAINTEXT"
    return (
        f"the broker at {hp} does not speak TLS (it is a {kind} listener) but "
        f"KAFKA_SECURITY_PROTOCOL={_protocol(settings)}; set KAFKA_SECURITY_PROTOCOL={kind}, "
        "or use the port of the broker's TLS listener"
    )


def sasl_required(settings: Settings, hp: str, mechanisms: Sequence[str]) -> str:
    """A client without SASL at a SASL listener."""
    want = "SASL_SSL" if _protocol(settings) == "SSL" else "SASL_PLAINTEXT"
    return (
        f"the broker at {hp} requires SASL authentication ({', '.join(mechanisms) or '?'}) "
        f"but KAFKA_SECURITY_PROTOCOL={_protocol(settings)}; set KAFKA_SECURITY_PROTOCOL="
        f"{want}, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
    )


def no_sasl_listener(settings: Settings, hp: str) -> str:
    """A SASL client at a listener without SASL."""
    want = "SSL" if _protocol(settings) == "SASL_SSL" else "PLAINTEXT"
    return (
        f"the broker at {hp} does not use SASL but KAFKA_SECURITY_PROTOCOL="
        f"{_protocol(settings)}; set KAFKA_SECURITY_PROTOCOL={want}, or use the port of "
        "the broker's SASL listener"
    )


def no_mechanism(settings: Settings, offered: Sequence[str]) -> str:
    """SASL without a mechanism."""
    return (
        f"KAFKA_SECURITY_PROTOCOL={_protocol(settings)} needs KAFKA_SASL_MECHANISM; the "
        f"broker offers {', '.join(offered) or 'none'}"
    )


def mechanism_not_enabled(settings: Settings, hp: str, offered: Sequence[str]) -> str:
    """A SASL mechanism the listener does not enable."""
    return (
        f"the broker at {hp} does not enable SASL mechanism {settings.sasl_mechanism} "
        f"(it offers {', '.join(offered) or 'none'}); set KAFKA_SASL_MECHANISM to one of those"
    )


def auth_failed(settings: Settings, hp: str, detail: str = "") -> str:
    """The broker refused the SASL login (the password is never repeated).

    ``detail`` is kept only if it says more than "authentication failed".
    """
    plain = not detail or detail.lower().startswith("authentication failed")
    said = "" if plain else f" ({detail.rstrip('.')})"
    return (
        f"authentication failed at {hp}: the broker refused user {settings.sasl_username!r} "
        f"with {settings.sasl_mechanism}{said}; check KAFKA_SASL_USERNAME and "
        "KAFKA_SASL_PASSWORD (a wrong password and an unknown user look the same)"
    )


# --------------------------------------------------------------------------- TLS


def missing_ssl_file(variable: str, path: str) -> str:
    """A TLS file setting points at nothing."""
    return f"{variable}={path} does not exist; set it to the PEM file, or unset it"


def unreadable_ssl_file(variable: str, path: str) -> str:
    """A TLS file this user may not read."""
    return f"{variable}={path} is not readable by this user; fix its permissions"


def bad_ssl_file(variable: str, path: str, exc: BaseException) -> str:
    """A TLS file that is not the PEM it should be."""
    return f"{variable}={path} is not a PEM certificate file ({describe(exc)}); check the file"


def bad_client_key(settings: Settings) -> str:
    """The client certificate and key do not load (wrong key password, wrong pair)."""
    hint = (
        "check KAFKA_SSL_PASSWORD: the key does not decrypt with it, or the key is not "
        "the certificate's"
        if settings.ssl_password
        else "if the key is encrypted, set KAFKA_SSL_PASSWORD; else check that they are "
        "PEM files of one certificate and its key"
    )
    return (
        f"the client certificate KAFKA_SSL_CERTFILE={settings.ssl_certfile} and key "
        f"KAFKA_SSL_KEYFILE={settings.ssl_keyfile} cannot be loaded; {hint}"
    )


def untrusted(settings: Settings, hp: str, detail: str) -> str:
    """The broker's certificate chain does not end at a CA this client trusts."""
    if settings.ssl_cafile:
        return (
            f"the certificate of the broker at {hp} is not signed by the CA in "
            f"KAFKA_SSL_CAFILE={settings.ssl_cafile} ({detail}); set KAFKA_SSL_CAFILE to the "
            "CA certificate (PEM) that signed the broker's certificate"
        )
    return (
        f"the certificate of the broker at {hp} is not signed by a CA this machine trusts "
        f"({detail}); set KAFKA_SSL_CAFILE to the cluster's CA certificate (PEM)"
    )


def hostname_mismatch(
    settings: Settings, hp: str, host: str, names: Sequence[str], detail: str
) -> str:
    """The broker's certificate is for other names than the one connected to."""
    listed = f"it is issued for {', '.join(names)}" if names else detail
    return (
        f"the certificate of the broker at {hp} is not valid for the name {host} ({listed}); "
        "put a name the certificate lists in KAFKA_BOOTSTRAP_SERVERS, or have the "
        f"certificate reissued for {host}. KAFKA_SSL_CHECK_HOSTNAME=false exists but is not "
        "recommended: any certificate from that CA would then pass for this broker"
    )


def expired(settings: Settings, hp: str, detail: str) -> str:
    """The broker's certificate is outside its validity period."""
    return (
        f"the certificate of the broker at {hp} is not valid now ({detail}); the cluster's "
        "certificate must be renewed (or this machine's clock is wrong)"
    )


def certificate_rejected(settings: Settings, hp: str, detail: str) -> str:
    """Any other verification failure."""
    return (
        f"the certificate of the broker at {hp} was rejected ({detail}); check it with the "
        "cluster admin and KAFKA_SSL_CAFILE"
    )


def client_cert_required(settings: Settings, hp: str) -> str:
    """mTLS: the broker wants a client certificate and none is configured."""
    return (
        f"the broker at {hp} requires a client certificate (mTLS) and none is set; set "
        "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE (and KAFKA_SSL_PASSWORD if the key is "
        "encrypted)"
    )


def client_cert_rejected(settings: Settings, hp: str, detail: str) -> str:
    """mTLS: the broker does not accept the configured client certificate."""
    return (
        f"the broker at {hp} rejected the client certificate "
        f"KAFKA_SSL_CERTFILE={settings.ssl_certfile} ({detail}); it must be signed by a CA "
        "the broker trusts and be valid now"
    )


def closed_after_tls(settings: Settings, hp: str) -> str:
    """The TLS handshake passed and then the broker hung up."""
    if not settings.ssl_certfile:
        return client_cert_required(settings, hp)
    return client_cert_rejected(settings, hp, "it closed the connection after the handshake")


def tls_failed(settings: Settings, hp: str, detail: str) -> str:
    """Any other TLS failure."""
    return (
        f"the TLS handshake with the broker at {hp} failed ({detail}); check "
        "KAFKA_SECURITY_PROTOCOL and the KAFKA_SSL_* settings"
    )


# --------------------------------------------------------------------------- operations


def not_allowed(exc: AuthorizationError, settings: Settings, operation: str) -> str:
    """An ACL refused the operation: who, on what, and which ACL would allow it."""
    who = principal(settings)
    topic, group = settings.topic, settings.consumer_group
    need = ACCESS.get(operation, ACCESS["use"]).format(topic=topic, group=group)
    if isinstance(exc, GroupAuthorizationFailedError):
        return (
            f"{who} is not allowed to use consumer group {group}: ask the cluster admin for {need}"
        )
    if isinstance(exc, ClusterAuthorizationFailedError):
        return (
            f"{who} is not allowed to {operation} topic {topic} (the broker refused a "
            f"cluster-level request, such as the idempotent producer's id): ask the cluster "
            f"admin for {need}"
        )
    if isinstance(exc, TransactionalIdAuthorizationFailedError):
        return f"{who} is not allowed to use its transactional id: ask the cluster admin"
    return f"{who} is not allowed to {operation} topic {topic}: ask the cluster admin for {need}"


def explain(
    exc: KafkaError, settings: Settings, doing: str, safe: str, *, operation: str = "use"
) -> str:
    """``doing`` failed, why, and what to do; ``safe`` says what is not lost.

    ``operation`` (a key of :data:`ACCESS`) is what ``doing`` needs of the
    topic, for the sentence of an authorisation error.
    """
    if isinstance(exc, _UNREACHABLE):
        return (
            f"{doing} failed: the Kafka broker at {settings.bootstrap_servers} stopped "
            f"answering ({describe(exc)}); {safe}. Start the broker "
            "(`marketstream broker up`) or fix KAFKA_BOOTSTRAP_SERVERS, then run again"
        )
    refusal = authorization_error(exc)
    if refusal is not None:
        return f"{doing} failed: {not_allowed(refusal, settings, operation)}; {safe}"
    if isinstance(exc, SaslAuthenticationFailedError):
        return f"{doing} failed: {auth_failed(settings, settings.bootstrap_servers)}; {safe}"
    if isinstance(exc, InvalidSessionTimeoutError):
        return (
            f"{doing} failed: the broker refuses KAFKA_SESSION_TIMEOUT_S="
            f"{settings.session_timeout_s:g} (outside its group.min.session.timeout.ms to "
            f"group.max.session.timeout.ms; 6 to 1800 s by default); {safe}"
        )
    return f"{doing} failed: {describe(exc)}; {safe}"
