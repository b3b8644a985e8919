"""``host:port`` text, parsed and written in one place (IPv6-safe).

Why: the bootstrap servers, the local broker's listeners, the controller
quorum and the servers' URLs were parsed three ways, and one way turned
``[::1]:9092`` into ``[[::1]]``. Here a bracketed IPv6 literal is the only
way to give an IPv6 host with a port, as in Kafka's own configuration.
"""

from __future__ import annotations

from marketstream.errors import SettingsError

#: Kafka's port when a server is given as a bare host.
DEFAULT_KAFKA_PORT = 9092


def split_host_port(server: str, default_port: int | None = DEFAULT_KAFKA_PORT) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; ``[::1]:9092`` -> ``("::1", 9092)``.

    A bare host takes ``default_port`` (``None``: a port is required, as in
    Kafka's ``bootstrap.servers``); an empty host means ``localhost``.
    """
    text = server.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise SettingsError(f"server {server!r} is not host:port ([IPv6]:port for IPv6)")
        port = rest[1:]
    elif text.count(":") > 1:  # a bare IPv6 literal, no port
        host, port = text, ""
    else:
        host, _, port = text.partition(":")
    host = host or "localhost"
    if not port:
        if default_port is None:
            raise SettingsError(f"server {server!r} is not host:port (no port)")
        return host, default_port
    try:
        number = int(port)
    except ValueError:
        raise SettingsError(f"server {server!r} is not host:port (port {port!r})") from None
    if not 0 < number < 65536:
        raise SettingsError(f"server {server!r}: port {number} is outside 1-65535")
    return host, number


def join_host_port(host: str, port: int) -> str:
    """``(host, port)`` -> ``"host:port"``, bracketing an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_list(servers: str) -> list[str]:
    """A comma-separated bootstrap list as kafka-python takes it (blanks dropped)."""
    return [s.strip() for s in servers.split(",") if s.strip()]


def connect_host(host: str) -> str:
    """The host to connect to for a server bound to ``host`` (a wildcard means this machine)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
