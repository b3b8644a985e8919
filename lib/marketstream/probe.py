"""Why a Kafka connection fails, found step by step: DNS, TCP, TLS, Kafka, SASL.

Why not just ask a Kafka client: kafka-python 3.0.12 retries every failed
bootstrap connection until ``bootstrap_timeout_ms`` and then raises
``KafkaTimeoutError: Unable to bootstrap from [...]``, whatever went wrong.
Measured against real brokers: a wrong SCRAM or PLAIN password, a mechanism
the broker does not enable and a PLAINTEXT client on a SASL listener all end
in that same line after the full timeout (5.0 s with a 5-s timeout, 30 s with
the default). The user needs to hear *which* step failed.

So :func:`check` takes the steps a client takes, with the :mod:`socket` and
:mod:`ssl` modules, and stops at the first that fails:

1. every bootstrap server resolves (:func:`socket.getaddrinfo`) and accepts TCP;
2. for SSL protocols the client's own files load (CA, certificate, key and its
   password), then a TLS handshake with the same CA, client certificate and
   host-name check as the client; a failed verification is classified by its
   OpenSSL ``verify_code`` (untrusted CA, host-name mismatch, expired);
3. a Kafka ``ApiVersions`` request is answered (over TLS for SSL protocols);
   with TLS 1.3 a broker that requires a client certificate rejects it only
   now, with a ``certificate required`` alert; a port that hangs up instead
   is asked the other way round (TLS where plain was configured, or plain
   where TLS was) to name a protocol mismatch;
4. a ``SaslHandshake`` says whether the listener uses SASL and which
   mechanisms it offers (a non-SASL listener answers ``ILLEGAL_SASL_STATE``);
5. for PLAIN and SCRAM, a ``SaslAuthenticate`` exchange with the configured
   user (kafka-python's own mechanism classes compute the SCRAM proofs).

A failure becomes the one line of :mod:`marketstream.kafka_errors` that names
it and its fix. Every step is bounded by ``timeout_s``. Measured against a
local SASL_SSL broker: 27-49 ms when every step passes, 40-62 ms to an
untrusted certificate, 0.32-0.37 s to a refused SCRAM login (the broker
delays its answer to failed logins), instead of a client's timeout. The probe
sends nothing the configured client would not send itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from kafka.net.sasl import get_sasl_mechanism

from marketstream import kafka_errors as say
from marketstream.addresses import join_host_port
from marketstream.processes import is_local_address
from marketstream.settings import Settings

#: Kafka API keys the probe uses, and the answer of a listener without SASL.
API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
ILLEGAL_SASL_STATE = 34
#: Mechanisms the probe can authenticate with itself (others are left to the client).
_EXCHANGED = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: OpenSSL ``X509_V_ERR_*`` codes by what they mean to the user.
_UNTRUSTED = {2, 18, 19, 20, 21, 27, 28}
_NAME_MISMATCH = {62, 64}
_EXPIRED = {9, 10}
#: TLS alerts a broker sends for a missing or unacceptable client certificate.
_NO_CLIENT_CERT = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE", "BAD_CERTIFICATE")
_BAD_CLIENT_CERT = ("UNKNOWN_CA", "CERTIFICATE_UNKNOWN", "BAD_CERTIFICATE", "DECRYPT_ERROR")

_CLIENT_ID = b"marketstream-probe"


class Failed(Exception):
    """A step failed; ``line`` says which and what to do."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


class _Closed(Exception):
    """The peer closed the connection (or reset it) without answering."""


@dataclass(frozen=True)
class Listener:
    """What a Kafka listener said about itself."""

    sasl: bool
    mechanisms: tuple[str, ...] = ()


# --------------------------------------------------------------------------- TLS


def ssl_context(settings: Settings, *, verify: bool = True) -> ssl.SSLContext:
    """The TLS context kafka-python builds from these settings (same CA, cert, key, check).

    ``verify=False`` gives a context that accepts any certificate, used only to
    find out whether a port speaks TLS at all. A file that cannot be loaded
    raises :class:`Failed` naming its variable.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.check_hostname = settings.ssl_check_hostname
    if settings.ssl_cafile:
        _require_file("KAFKA_SSL_CAFILE", settings.ssl_cafile)
        try:
            ctx.load_verify_locations(settings.ssl_cafile)
        except ssl.SSLError as exc:
            raise Failed(say.bad_ssl_file("KAFKA_SSL_CAFILE", settings.ssl_cafile, exc)) from None
    else:
        ctx.load_default_certs()
    if settings.ssl_certfile:
        _require_file("KAFKA_SSL_CERTFILE", settings.ssl_certfile)
        _require_file("KAFKA_SSL_KEYFILE", settings.ssl_keyfile)
        try:
            ctx.load_cert_chain(
                settings.ssl_certfile, settings.ssl_keyfile, password=settings.ssl_password or None
            )
        except ssl.SSLError:
            raise Failed(say.bad_client_key(settings)) from None
    return ctx


def _require_file(variable: str, path: str) -> None:
    if not os.path.isfile(path):
        raise Failed(say.missing_ssl_file(variable, path))
    if not os.access(path, os.R_OK):
        raise Failed(say.unreadable_ssl_file(variable, path))


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(getattr(exc, "reason", "") or exc).upper()


# --------------------------------------------------------------------------- Kafka wire


def _request(api_key: int, version: int, correlation_id: int, body: bytes = b"") -> bytes:
    """A request with header v1 (the non-flexible one every broker reads)."""
    header = struct.pack(">hhih", api_key, version, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
    return struct.pack(">i", len(header) + len(body)) + header + body


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise _Closed
        data += chunk
    return data


def _exchange(sock: socket.socket, request: bytes, correlation_id: int) -> bytes:
    """Send a request, return the response body (after its correlation id)."""
    try:
        sock.sendall(request)
        (size,) = struct.unpack(">i", _read(sock, 4))
    except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
        raise _Closed from None
    if not 4 <= size <= 10_000_000:
        raise _Closed
    data = _read(sock, size)
    if struct.unpack(">i", data[:4])[0] != correlation_id:
        raise _Closed
    return data[4:]


class _Reader:
    """Reads the fixed-width and string fields of a non-flexible Kafka response."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def int16(self) -> int:
        (value,) = struct.unpack_from(">h", self.data, self.at)
        self.at += 2
        return int(value)

    def int32(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.at)
        self.at += 4
        return int(value)

    def string(self) -> str | None:
        size = self.int16()
        if size < 0:
            return None
        text = self.data[self.at : self.at + size].decode("utf-8", "replace")
        self.at += size
        return text

    def blob(self) -> bytes:
        size = self.int32()
        value = self.data[self.at : self.at + max(size, 0)]
        self.at += max(size, 0)
        return value


def _api_versions(sock: socket.socket) -> dict[int, tuple[int, int]]:
    """ApiVersions v0: {api key: (min version, max version)}."""
    body = _Reader(_exchange(sock, _request(API_VERSIONS, 0, 1), 1))
    body.int16()  # an error here still lists what the broker supports
    versions = {}
    for _ in range(max(body.int32(), 0)):
        key, low, high = body.int16(), body.int16(), body.int16()
        versions[key] = (low, high)
    return versions


def _sasl_handshake(sock: socket.socket, mechanism: str) -> tuple[int, tuple[str, ...]]:
    """SaslHandshake v1: (error code, mechanisms the listener enables)."""
    name = mechanism.encode()
    body = _Reader(
        _exchange(sock, _request(SASL_HANDSHAKE, 1, 2, struct.pack(">h", len(name)) + name), 2)
    )
    code = body.int16()
    count = body.int32()
    mechanisms = tuple(m for m in (body.string() for _ in range(max(count, 0))) if m)
    return code, mechanisms


def _sasl_authenticate(sock: socket.socket, settings: Settings, version: int) -> str | None:
    """Run the SASL exchange; None if the broker accepted it, else its error message."""
    mechanism = get_sasl_mechanism(settings.sasl_mechanism)(
        security_protocol=settings.security_protocol,
        sasl_mechanism=settings.sasl_mechanism,
        sasl_plain_username=settings.sasl_username,
        sasl_plain_password=settings.sasl_password,
    )
    correlation_id = 3
    while not mechanism.is_done():
        token = mechanism.auth_bytes()
        request = _request(
            SASL_AUTHENTICATE, version, correlation_id, struct.pack(">i", len(token)) + token
        )
        body = _Reader(_exchange(sock, request, correlation_id))
        code, message, answer = body.int16(), body.string(), body.blob()
        if code:
            return message or f"error code {code}"
        try:
            mechanism.receive(answer)
        except ValueError as exc:  # the server's SCRAM proof did not check out
            return f"the broker's SCRAM answer did not verify: {exc}"
        correlation_id += 1
    return None if mechanism.is_authenticated() else "the broker did not confirm the login"


# --------------------------------------------------------------------------- steps


def _addresses(settings: Settings, host: str, port: int) -> list[tuple]:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Failed(say.unresolvable(settings, host, port, exc.strerror or str(exc))) from None
    except UnicodeError:
        raise Failed(say.unresolvable(settings, host, port, "not a valid host name")) from None


@contextlib.contextmanager
def _connect(settings: Settings, host: str, port: int, timeout_s: float) -> Iterator[socket.socket]:
    """A TCP connection to the first address of host that accepts one."""
    error: OSError | None = None
    for family, kind, proto, _, address in _addresses(settings, host, port):
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout_s)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        try:
            yield sock
        finally:
            sock.close()
        return
    if isinstance(error, ConnectionRefusedError):
        raise Failed(say.refused(settings, host, port))
    if isinstance(error, TimeoutError):
        raise Failed(say.connect_timeout(settings, host, port, timeout_s))
    raise Failed(say.unreachable(settings, host, port, os.strerror(error.errno or 0) or str(error)))


def _peer_names(settings: Settings, host: str, port: int, timeout_s: float) -> list[str]:
    """The names a broker's certificate lists (a handshake without the host-name check)."""
    ctx = ssl_context(settings)
    ctx.check_hostname = False
    with (
        contextlib.suppress(OSError, Failed),
        _connect(settings, host, port, timeout_s) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        cert = tls.getpeercert() or {}
        return [value for _, value in cert.get("subjectAltName", ())]
    return []


def _tls(
    settings: Settings, raw: socket.socket, host: str, port: int, timeout_s: float
) -> ssl.SSLSocket:
    """The TLS handshake, with every refusal classified."""
    hp = join_host_port(host, port)
    try:
        return ssl_context(settings).wrap_socket(raw, server_hostname=host.rstrip("."))
    except ssl.SSLCertVerificationError as exc:
        code = exc.verify_code
        detail = exc.verify_message or str(exc)
        if code in _NAME_MISMATCH:
            names = _peer_names(settings, host, port, timeout_s)
            raise Failed(say.hostname_mismatch(settings, hp, host, names, detail)) from None
        if code in _UNTRUSTED:
            raise Failed(say.untrusted(settings, hp, detail)) from None
        if code in _EXPIRED:
            raise Failed(say.expired(settings, hp, detail)) from None
        raise Failed(say.certificate_rejected(settings, hp, detail)) from None
    except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
        raise _Closed from None
    except ssl.SSLError as exc:
        reason = _ssl_reason(exc)
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
            raise _Closed from None  # it answered, but not in TLS
        if not settings.ssl_certfile and any(a in reason for a in _NO_CLIENT_CERT):
            raise Failed(say.client_cert_required(settings, hp)) from None
        if settings.ssl_certfile and any(a in reason for a in _BAD_CLIENT_CERT):
            raise Failed(say.client_cert_rejected(settings, hp, exc.reason or str(exc))) from None
        raise Failed(say.tls_failed(settings, hp, exc.reason or str(exc))) from None
    except TimeoutError:
        raise Failed(
            say.not_kafka(settings, hp, is_local_address(host), "the TLS handshake")
        ) from None


def _listener(sock: socket.socket, settings: Settings) -> tuple[Listener, dict]:
    """ApiVersions, then SaslHandshake: what kind of listener this is."""
    versions = _api_versions(sock)
    if SASL_HANDSHAKE not in versions:
        return Listener(sasl=False), versions
    code, mechanisms = _sasl_handshake(sock, settings.sasl_mechanism or "PLAIN")
    if code == ILLEGAL_SASL_STATE:
        return Listener(sasl=False), versions
    return Listener(sasl=True, mechanisms=mechanisms), versions


def _plain_listener(settings: Settings, host: str, port: int, timeout_s: float) -> Listener | None:
    """The listener if the port answers Kafka without TLS, else None."""
    with (
        contextlib.suppress(_Closed, OSError, struct.error, Failed),
        _connect(settings, host, port, timeout_s) as raw,
    ):
        return _listener(raw, settings)[0]
    return None


def _tls_listener(settings: Settings, host: str, port: int, timeout_s: float) -> bool | None:
    """Does the port speak TLS? None if not; else whether it uses SASL behind the TLS
    (False too when that cannot be seen, e.g. it wants a client certificate)."""
    with contextlib.suppress(OSError, Failed), _connect(settings, host, port, timeout_s) as raw:
        tls = ssl_context(settings, verify=False).wrap_socket(raw, server_hostname=host)
        with contextlib.suppress(OSError, _Closed, struct.error):
            return _listener(tls, settings)[0].sasl
        return False
    return None


def check_endpoint(settings: Settings, host: str, port: int, timeout_s: float) -> None:
    """Raise :class:`Failed` with the first step that fails for this server."""
    hp = join_host_port(host, port)
    wants_tls = settings.security_protocol.upper().endswith("SSL")
    wants_sasl = settings.security_protocol.upper().startswith("SASL_")
    with _connect(settings, host, port, timeout_s) as raw:
        sock: socket.socket = raw
        if wants_tls:
            try:
                sock = _tls(settings, raw, host, port, timeout_s)
            except _Closed:  # hung up on a ClientHello: not a TLS port
                listener = _plain_listener(settings, host, port, timeout_s)
                if listener is None:
                    raise Failed(
                        say.not_kafka(settings, hp, is_local_address(host), "TLS")
                    ) from None
                raise Failed(say.tls_not_spoken(settings, hp, listener.sasl)) from None
        try:
            listener, versions = _listener(sock, settings)
        except _Closed:
            if wants_tls:  # TLS was fine, then it hung up: what mTLS brokers do with TLS 1.2
                raise Failed(say.closed_after_tls(settings, hp)) from None
            tls_sasl = _tls_listener(settings, host, port, timeout_s)
            if tls_sasl is None:
                raise Failed(
                    say.not_kafka(settings, hp, is_local_address(host), "a Kafka request")
                ) from None
            raise Failed(say.tls_expected(settings, hp, tls_sasl)) from None
        except TimeoutError:
            raise Failed(
                say.not_kafka(settings, hp, is_local_address(host), "a Kafka request")
            ) from None
        except ssl.SSLError as exc:  # TLS 1.3: the broker judges the client certificate now
            raise Failed(_post_handshake(settings, hp, exc)) from None
        if wants_sasl and not listener.sasl:
            raise Failed(say.no_sasl_listener(settings, hp))
        if not wants_sasl and listener.sasl:
            raise Failed(say.sasl_required(settings, hp, listener.mechanisms))
        if wants_sasl:
            _authenticate(sock, settings, hp, listener, versions)


def _post_handshake(settings: Settings, hp: str, exc: ssl.SSLError) -> str:
    reason = _ssl_reason(exc)
    if not settings.ssl_certfile and any(a in reason for a in _NO_CLIENT_CERT):
        return say.client_cert_required(settings, hp)
    if settings.ssl_certfile and any(a in reason for a in _BAD_CLIENT_CERT):
        return say.client_cert_rejected(settings, hp, exc.reason or str(exc))
    return say.tls_failed(settings, hp, exc.reason or str(exc))


def _authenticate(
    sock: socket.socket, settings: Settings, hp: str, listener: Listener, versions: dict
) -> None:
    """The SASL steps: a mechanism the listener offers, then the login itself."""
    mechanism = settings.sasl_mechanism.upper()
    if not mechanism:
        raise Failed(say.no_mechanism(settings, listener.mechanisms))
    if mechanism not in listener.mechanisms:
        raise Failed(say.mechanism_not_enabled(settings, hp, listener.mechanisms))
    if mechanism not in _EXCHANGED:
        return  # GSSAPI, OAUTHBEARER...: the client itself will tell
    low, high = versions.get(SASL_AUTHENTICATE, (0, -1))
    version = min(high, 1)  # v2 is a flexible version, which this probe does not write
    if version < max(low, 0):
        return
    try:
        refusal = _sasl_authenticate(sock, settings, version)
    except _Closed:
        refusal = "the broker closed the connection during the login"
    if refusal is not None:
        raise Failed(say.auth_failed(settings, hp, refusal))


def check(settings: Settings, timeout_s: float = 3.0) -> str | None:
    """None if some bootstrap server passes every step, else the first server's failure."""
    first: str | None = None
    for host, port in settings.bootstrap_endpoints:
        try:
            check_endpoint(settings, host, port, timeout_s)
            return None
        except Failed as failed:
            first = first or failed.line
        except (OSError, struct.error) as exc:
            first = first or say.probe_failed(settings, join_host_port(host, port), exc)
    return first


def any_port_open(settings: Settings, timeout_s: float) -> bool:
    """Does any bootstrap server accept TCP? (A refused port answers in a millisecond.)"""
    for host, port in settings.bootstrap_endpoints:
        with contextlib.suppress(Failed, OSError), _connect(settings, host, port, timeout_s):
            return True
    return False
