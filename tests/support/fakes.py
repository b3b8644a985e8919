"""Stand-ins for kafka-python classes (handed to the code through ``KafkaClients``),
a secret that must never be printed, and plain settings for a local port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from marketstream.settings import Settings

PASSWORD = "pa55-Wörd_7f3c9e1d-never-print-me"
#: The kafka-python options a SASL_SSL cluster's settings must become.
SECURITY = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "marketstream-svc",
    "sasl_plain_password": PASSWORD,
    "ssl_cafile": "/etc/ssl/certs/cluster-ca.pem",
}


class Recorder:
    """Stands in for a kafka-python class: records the keyword arguments it was built
    with, and answers like a reachable one-broker cluster."""

    calls: list[dict[str, object]]

    def __init__(self, **config: object):
        type(self).calls.append(config)

    # the few methods the kit calls on the objects it builds
    def subscribe(self, topics: list[str], listener: object = None) -> None:
        self.topics = topics

    def list_topics(self) -> list[str]:
        return []

    def create_topics(self, topics: list[object]) -> None:
        self.created = topics

    def describe_cluster(self) -> dict[str, object]:
        return {"brokers": [{"node_id": 1}]}

    def close(self, *args: object, **kwargs: object) -> None:
        pass


def recorder() -> type[Recorder]:
    """A fresh :class:`Recorder` class with its own (empty) list of calls."""
    return type("Recorded", (Recorder,), {"calls": []})


def plain_settings(port: int, **overrides: Any) -> Settings:
    """Default settings for a PLAINTEXT broker at 127.0.0.1:``port``."""
    return Settings().with_(bootstrap_servers=f"127.0.0.1:{port}", **overrides)


@contextmanager
def listening_port() -> Iterator[int]:
    """A port on 127.0.0.1 where a plain TCP server accepts connections (it speaks no
    Kafka): a probe's TCP check passes, the Kafka half is up to a stand-in."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]
