"""Secured Kafka brokers and their certificates, made once per test session.

Why real brokers: a secured cluster is where a wrong password, an unknown CA
or a PLAINTEXT client on a TLS port must fail with one clear line, and where
the pipeline must still deliver every tick; only a real broker says what Kafka
really does. Each broker is started from the kit's own jars with
:func:`marketstream.broker.temporary_broker` and a
:class:`~marketstream.broker.security.ListenerSecurity`, on first use, and all
are stopped when the session ends (4 JVMs of 512 MB heap at most).

The certificates come from ``trustme``: one CA signs the broker certificate
(issued for ``127.0.0.1`` only, so connecting as ``localhost`` is a host-name
mismatch) and a client certificate whose key is encrypted with a password
(so ``KAFKA_SSL_PASSWORD`` is exercised); a second, unrelated CA stands in
for "the wrong CA". Passwords are random per session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafka.admin import ACL, ACLOperation, ACLPermissionType, ResourcePattern, ResourceType

from marketstream.broker.security import ListenerSecurity
from marketstream.clients import DEFAULT_CLIENTS
from marketstream.settings import Settings
from support.secured import (
    USERS,
    Certs,
    Secured,
    base_settings,
    client_settings,
    make_certs,
    start,
    with_client_cert,
)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """The session's certificates (written once, read by brokers and clients)."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """SASL_PLAINTEXT with PLAIN and SCRAM-SHA-512 (SCRAM-SHA-256 not enabled) and the
    StandardAuthorizer: alice is a super user, bob and carol are not."""
    tmp = tmp_path_factory.mktemp("sasl")
    security = ListenerSecurity(
        "SASL_PLAINTEXT",
        ("PLAIN", "SCRAM-SHA-512"),
        USERS,
        authorizer=True,
        super_users=("alice",),
    )
    client = client_settings(
        base_settings(tmp), "SASL_PLAINTEXT", user="alice", mechanism="SCRAM-SHA-512"
    )
    for secured in start("sasl", security, client, tmp):
        _allow_carol_to_describe(secured.settings)
        yield secured


def _allow_carol_to_describe(settings: Settings) -> None:
    """ACLs (made by alice, a super user): carol may describe any topic and use any consumer
    group, so she sees topics and joins groups but is refused every read and write."""
    grants = [
        (ResourceType.TOPIC, ACLOperation.DESCRIBE),
        (ResourceType.GROUP, ACLOperation.READ),
    ]
    acls = [
        ACL("User:carol", "*", operation, ACLPermissionType.ALLOW, ResourcePattern(kind, "*"))
        for kind, operation in grants
    ]
    admin = DEFAULT_CLIENTS.admin(settings)
    try:
        result = admin.create_acls(acls)
        assert not result.get("failed"), result
    finally:
        admin.close()


@pytest.fixture(scope="session")
def ssl_broker(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Secured]:
    """SSL, server certificate only (issued for 127.0.0.1)."""
    tmp = tmp_path_factory.mktemp("ssl")
    security = ListenerSecurity("SSL", certfile=certs.server_cert, keyfile=certs.server_key)
    client = client_settings(base_settings(tmp), "SSL", certs=certs)
    yield from start("ssl", security, client, tmp)


@pytest.fixture(scope="session")
def mtls_broker(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Secured]:
    """SSL with ``ssl.client.auth=required``: clients need a certificate from the CA."""
    tmp = tmp_path_factory.mktemp("mtls")
    security = ListenerSecurity(
        "SSL",
        certfile=certs.server_cert,
        keyfile=certs.server_key,
        cafile=certs.ca,
        client_auth="required",
    )
    client = with_client_cert(client_settings(base_settings(tmp), "SSL", certs=certs), certs)
    yield from start("mtls", security, client, tmp)


@pytest.fixture(scope="session")
def sasl_ssl_broker(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Secured]:
    """SASL_SSL with SCRAM-SHA-512."""
    tmp = tmp_path_factory.mktemp("sasl-ssl")
    security = ListenerSecurity(
        "SASL_SSL",
        ("SCRAM-SHA-512",),
        USERS,
        certfile=certs.server_cert,
        keyfile=certs.server_key,
    )
    client = client_settings(
        base_settings(tmp), "SASL_SSL", user="alice", mechanism="SCRAM-SHA-512", certs=certs
    )
    yield from start("sasl-ssl", security, client, tmp)
