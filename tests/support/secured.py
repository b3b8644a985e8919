"""What the secured-broker tests share: users, secrets, certificates, client settings.

Why a support module and not conftest.py: the tests import these names, and
``from conftest import ...`` would find whichever ``conftest`` module was
imported first (``tests/conftest.py`` has the same name).
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

from marketstream.broker import temporary_broker
from marketstream.broker.security import ListenerSecurity
from marketstream.settings import Settings

#: Users of the SASL brokers: alice is a super user, bob has no ACLs, carol may
#: describe every topic and use every group but neither read nor write a topic.
USERS = {name: f"{name}-{secrets.token_urlsafe(12)}" for name in ("alice", "bob", "carol")}
#: The password of the client's private key (KAFKA_SSL_PASSWORD).
CLIENT_KEY_PASSWORD = f"key-{secrets.token_urlsafe(12)}"
#: Every secret of the session: none may appear in any output.
SECRETS = (*USERS.values(), CLIENT_KEY_PASSWORD)


@dataclass(frozen=True)
class Certs:
    """PEM files: a CA, a broker certificate and key, a client certificate and key."""

    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class Secured:
    """A running secured broker: its listener's security and a super user's settings."""

    name: str
    security: ListenerSecurity
    settings: Settings
    run_dir: Path
    start_s: float  # how long the start took: format, JVM start, first answer

    @property
    def port(self) -> int:
        """The port of its secured client listener."""
        return self.settings.bootstrap_host_port[1]


def _pkcs8(key_pem: bytes, password: str = "") -> bytes:
    """A key as PKCS#8 PEM (what Kafka's PEM keystore reads), encrypted if a password is given."""
    key = serialization.load_pem_private_key(key_pem, None)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def client_settings(
    base: Settings,
    protocol: str,
    *,
    user: str = "",
    mechanism: str = "",
    certs: Certs | None = None,
) -> Settings:
    """A client's settings for a listener: SASL user and mechanism, CA, nothing else."""
    values: dict[str, object] = {"security_protocol": protocol}
    if user:
        values |= {
            "sasl_mechanism": mechanism,
            "sasl_username": user,
            "sasl_password": USERS[user],
        }
    if certs is not None:
        values["ssl_cafile"] = str(certs.ca)
    return base.with_(**values)


def with_client_cert(settings: Settings, certs: Certs) -> Settings:
    """The settings plus the client certificate and its encrypted key (mTLS)."""
    return settings.with_(
        ssl_certfile=str(certs.client_cert),
        ssl_keyfile=str(certs.client_key),
        ssl_password=CLIENT_KEY_PASSWORD,
    )


def base_settings(tmp: Path) -> Settings:
    """The environment's settings with every security setting cleared (a clean client)."""
    return Settings.from_env().with_(
        security_protocol="PLAINTEXT",
        sasl_mechanism="",
        sasl_username="",
        sasl_password="",
        ssl_cafile="",
        ssl_certfile="",
        ssl_keyfile="",
        ssl_password="",
        log_path=tmp / "broker-probe.log",
    )


def start(name: str, security: ListenerSecurity, client: Settings, tmp: Path) -> Iterator[Secured]:
    """Run a broker with that listener security for as long as the generator is open."""
    started = time.perf_counter()
    with temporary_broker(client, tmp, security=security) as settings:
        elapsed = time.perf_counter() - started
        [run_dir] = tmp.glob("kafka-*")
        yield Secured(name, security, settings, run_dir, elapsed)


def make_certs(folder: Path) -> Certs:
    """Write the certificates and keys into folder."""
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("marketstream-client", common_name="marketstream-client")
    files = Certs(
        ca=folder / "ca.pem",
        other_ca=folder / "other-ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    other.cert_pem.write_to_path(str(files.other_ca))
    files.server_cert.write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
    files.server_key.write_bytes(_pkcs8(server.private_key_pem.bytes()))
    files.client_cert.write_bytes(b"".join(p.bytes() for p in client.cert_chain_pems))
    files.client_key.write_bytes(_pkcs8(client.private_key_pem.bytes(), CLIENT_KEY_PASSWORD))
    for path in (files.server_key, files.client_key):
        path.chmod(0o600)
    return files


def fresh(settings: Settings, tmp: Path) -> Settings:
    """Per-test settings: own topic, consumer group, DuckDB file, CSV, log and outputs."""
    name = f"ticks-{uuid.uuid4().hex[:8]}"
    return settings.with_(
        topic=name,
        consumer_group=f"g-{name}",
        db_path=tmp / "market.duckdb",
        csv_path=tmp / "ticks.csv",
        log_path=tmp / "pipeline.log",
        output_dir=tmp / "output",
        idle_timeout_s=10.0,
        replication_factor=1,
        min_insync_replicas=1,
    )
