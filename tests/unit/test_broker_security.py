"""The pure parts of secured brokers and named failures, without Java or a broker.

Why: the secured-broker tests take minutes (a JVM per broker, a child process
per failure); the rules that decide what a broker is told and which sentence a
user reads are plain functions and are pinned here in well under a second:
the listener properties a :class:`ListenerSecurity` renders, the SCRAM
arguments and how they reach the StorageTool (never on its command line), the
validation that refuses a broker config that would fail in the JVM, the
classification of authorisation and TLS errors into one-line sentences, the
Kafka wire format the probe writes and reads, and the rule that secrets are
never notebook parameters.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
import struct
from pathlib import Path

import pytest
from kafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
)

from marketstream import kafka_errors, probe
from marketstream.broker import node, parse_properties, render_server_properties
from marketstream.broker.security import (
    BROKER_PRINCIPAL,
    STANDARD_AUTHORIZER,
    ListenerSecurity,
    scram_arguments,
)
from marketstream.errors import BrokerError
from marketstream.pipeline import notebook_parameters, secrets_for_kernels
from marketstream.settings import Settings

PASSWORD = "s3cr3t-Pa55_word"
KEY_PASSWORD = "k3y-Pa55"


def _sasl(**overrides: object) -> ListenerSecurity:
    values: dict[str, object] = {
        "protocol": "SASL_PLAINTEXT",
        "sasl_mechanisms": ("PLAIN", "SCRAM-SHA-512"),
        "users": {"alice": PASSWORD, "bob": "bob-pw"},
    }
    return ListenerSecurity(**(values | overrides))  # type: ignore[arg-type]


def _tls(tmp_path: Path, **overrides: object) -> ListenerSecurity:
    values: dict[str, object] = {
        "protocol": "SSL",
        "certfile": tmp_path / "server.pem",
        "keyfile": tmp_path / "server.key",
    }
    return ListenerSecurity(**(values | overrides))  # type: ignore[arg-type]


def _props(security: ListenerSecurity, keystore: Path | None = None) -> dict[str, str]:
    text = render_server_properties(
        "127.0.0.1",
        9094,
        9095,
        Path("/data"),
        security=security,
        internal_port=9096,
        keystore=keystore,
    )
    return parse_properties(text)


# --------------------------------------------------------------------------- properties


def test_a_secured_listener_gets_an_internal_plaintext_listener() -> None:
    props = _props(_sasl())
    assert props["listeners"] == (
        "CLIENT://127.0.0.1:9094,INTERNAL://127.0.0.1:9096,CONTROLLER://127.0.0.1:9095"
    )
    assert props["advertised.listeners"].startswith("CLIENT://127.0.0.1:9094,INTERNAL://")
    assert props["inter.broker.listener.name"] == "INTERNAL"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,CLIENT:SASL_PLAINTEXT"
    )
    # the KRaft quorum and the rest of a single node are as without security
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:9095"
    assert props["offsets.topic.replication.factor"] == "1"


def test_the_internal_listener_stays_on_loopback_for_a_wildcard_bind() -> None:
    text = render_server_properties(
        "0.0.0.0", 9094, 9095, Path("/d"), security=_sasl(), internal_port=9096
    )
    props = parse_properties(text)
    assert props["listeners"].startswith("CLIENT://0.0.0.0:9094,INTERNAL://127.0.0.1:9096,")
    assert props["advertised.listeners"].startswith("CLIENT://localhost:9094,")


def test_sasl_mechanisms_get_their_jaas_lines_per_listener() -> None:
    props = _props(_sasl())
    assert props["listener.name.client.sasl.enabled.mechanisms"] == "PLAIN,SCRAM-SHA-512"
    plain = props["listener.name.client.plain.sasl.jaas.config"]
    assert plain.startswith("org.apache.kafka.common.security.plain.PlainLoginModule required ")
    assert f'user_alice="{PASSWORD}"' in plain and 'user_bob="bob-pw"' in plain
    assert plain.endswith(";")
    scram = props["listener.name.client.scram-sha-512.sasl.jaas.config"]
    assert scram == "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    assert "sasl.enabled.mechanisms" not in props  # the CONTROLLER listener is left alone


def test_tls_uses_pem_stores_and_client_auth(tmp_path: Path) -> None:
    security = _tls(
        tmp_path, cafile=tmp_path / "ca.pem", client_auth="required", key_password=KEY_PASSWORD
    )
    props = _props(security, keystore=tmp_path / "keystore.pem")
    prefix = "listener.name.client."
    assert props[prefix + "ssl.keystore.type"] == "PEM"
    assert props[prefix + "ssl.keystore.location"] == str(tmp_path / "keystore.pem")
    assert props[prefix + "ssl.key.password"] == KEY_PASSWORD
    assert props[prefix + "ssl.truststore.type"] == "PEM"
    assert props[prefix + "ssl.truststore.location"] == str((tmp_path / "ca.pem").resolve())
    assert props[prefix + "ssl.client.auth"] == "required"
    assert props["listener.security.protocol.map"].endswith("CLIENT:SSL")


def test_a_tls_listener_needs_its_keystore(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keystore"):
        _props(_tls(tmp_path))


def test_the_authorizer_makes_the_broker_itself_a_super_user() -> None:
    props = _props(_sasl(authorizer=True, super_users=("alice", "User:CN=svc,O=x")))
    assert props["authorizer.class.name"] == STANDARD_AUTHORIZER
    assert props["super.users"] == f"{BROKER_PRINCIPAL};User:alice;User:CN=svc,O=x"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert "authorizer.class.name" not in _props(_sasl())


def test_no_security_renders_what_it_always_did() -> None:
    props = parse_properties(render_server_properties("localhost", 9092, 9093, Path("/d")))
    assert props["listeners"] == "PLAINTEXT://localhost:9092,CONTROLLER://localhost:9093"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert not any(key.startswith("listener.name.") for key in props)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"protocol": "PLAINTEXT"}, "is not one of SSL, SASL_PLAINTEXT, SASL_SSL"),
        ({"sasl_mechanisms": ()}, "needs at least one SASL mechanism"),
        ({"sasl_mechanisms": ("GSSAPI",)}, "SASL mechanism GSSAPI is not one of"),
        ({"users": {}}, "needs at least one user"),
        ({"users": {"al ice": "pw"}}, "user name 'al ice'"),
        ({"users": {"alice": 'pa"ss'}}, "the password of alice"),
        ({"users": {"alice": "pa\\ss"}}, "the password of alice"),
        ({"users": {"alice": ""}}, "the password of alice"),
        ({"super_users": ("alice",)}, "only with the authorizer"),
        ({"client_auth": "required"}, "need TLS and the clients' CA"),
        ({"protocol": "SASL_SSL"}, "needs the server's certfile and keyfile"),
    ],
)
def test_a_listener_security_that_kafka_would_reject_is_refused(
    overrides: dict[str, object], problem: str
) -> None:
    with pytest.raises(BrokerError, match="listener security") as caught:
        _sasl(**overrides)
    assert problem in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_ssl_takes_no_sasl_mechanisms(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="takes no SASL mechanisms"):
        _tls(tmp_path, sasl_mechanisms=("PLAIN",))


def test_values_are_normalised_and_passwords_stay_out_of_repr(tmp_path: Path) -> None:
    security = ListenerSecurity(
        "sasl_ssl",
        ("scram-sha-512",),
        {"alice": PASSWORD},
        certfile=tmp_path / "c.pem",
        keyfile=tmp_path / "k.pem",
        key_password=KEY_PASSWORD,
    )
    assert security.protocol == "SASL_SSL" and security.sasl and security.ssl
    assert security.sasl_mechanisms == ("SCRAM-SHA-512",)
    assert security.scram_mechanisms == ("SCRAM-SHA-512",)
    assert set(security.secrets) == {PASSWORD, KEY_PASSWORD}
    text = repr(security)
    assert "alice" in text and "SASL_SSL" in text
    assert PASSWORD not in text and KEY_PASSWORD not in text
    with pytest.raises(TypeError):
        security.users["mallory"] = "x"  # type: ignore[index]


def test_a_client_that_cannot_use_the_listener_is_named() -> None:
    security = _sasl()
    assert security.mismatch("SASL_PLAINTEXT", "SCRAM-SHA-512") is None
    assert security.mismatch("sasl_plaintext", "plain") is None
    assert "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT" in (security.mismatch("PLAINTEXT") or "")
    assert "enables PLAIN, SCRAM-SHA-512" in (
        security.mismatch("SASL_PLAINTEXT", "SCRAM-SHA-256") or ""
    )


def test_scram_users_are_added_for_each_scram_mechanism() -> None:
    args = scram_arguments(_sasl(sasl_mechanisms=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")))
    assert args == [
        "--add-scram",
        f'SCRAM-SHA-256=[name=alice,password="{PASSWORD}"]',
        "--add-scram",
        'SCRAM-SHA-256=[name=bob,password="bob-pw"]',
        "--add-scram",
        f'SCRAM-SHA-512=[name=alice,password="{PASSWORD}"]',
        "--add-scram",
        'SCRAM-SHA-512=[name=bob,password="bob-pw"]',
    ]
    assert scram_arguments(_sasl(sasl_mechanisms=("PLAIN",))) == []


# --------------------------------------------------------------------------- StorageTool


def _fake_java(tmp_path: Path, exit_code: int = 0) -> Path:
    """A stand-in ``java`` that records its arguments and its @argfile, then prints the
    argfile (as a tool echoing a bad argument would) and exits with exit_code."""
    script = tmp_path / "java"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{tmp_path}/argv"\n'
        'for a in "$@"; do case "$a" in @*) f=${a#@};'
        f' cp "$f" "{tmp_path}/argfile"; stat -c %a "$f" > "{tmp_path}/mode"; cat "$f";;'
        " esac; done\n"
        f"exit {exit_code}\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_scram_passwords_reach_the_storage_tool_through_a_private_argfile(
    tmp_path: Path,
) -> None:
    security = _sasl()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    java = _fake_java(tmp_path)
    node._format_storage(  # the one step that puts passwords on a JVM's arguments
        str(java),
        tmp_path / "libs",
        run_dir,
        run_dir / "server.properties",
        scram=scram_arguments(security),
        secrets=security.secrets,
    )
    argv = (tmp_path / "argv").read_text(encoding="utf-8")
    assert PASSWORD not in argv  # what `ps` shows
    assert f"@{run_dir / '.format.args'}" in argv.splitlines()
    assert (tmp_path / "mode").read_text(encoding="utf-8").strip() == "600"
    argfile = (tmp_path / "argfile").read_text(encoding="utf-8").splitlines()
    assert argfile[:2] == ["'kafka.tools.StorageTool'", "'format'"]
    assert f"""'SCRAM-SHA-512=[name=alice,password="{PASSWORD}"]'""" in argfile
    assert not (run_dir / ".format.args").exists()  # deleted right after


def test_a_failed_format_does_not_quote_the_passwords(tmp_path: Path) -> None:
    security = _sasl()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(BrokerError, match="could not format") as caught:
        node._format_storage(
            str(_fake_java(tmp_path, exit_code=1)),
            tmp_path / "libs",
            run_dir,
            run_dir / "server.properties",
            scram=scram_arguments(security),
            secrets=security.secrets,
        )
    assert PASSWORD not in str(caught.value)
    assert "***" in str(caught.value)
    assert not (run_dir / ".format.args").exists()


def test_without_scram_the_format_command_is_unchanged(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    node._format_storage(str(_fake_java(tmp_path)), tmp_path / "libs", run_dir, run_dir / "p")
    argv = (tmp_path / "argv").read_text(encoding="utf-8").splitlines()
    assert "kafka.tools.StorageTool" in argv and "--standalone" in argv
    assert not any(a.startswith("@") for a in argv)


def test_the_keystore_needs_a_pkcs8_key(tmp_path: Path) -> None:
    (tmp_path / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nx\n", encoding="ascii")
    (tmp_path / "server.key").write_text("-----BEGIN EC PRIVATE KEY-----\nx\n", encoding="ascii")
    with pytest.raises(BrokerError, match="not a PKCS#8 PEM key"):
        node._write_keystore(tmp_path, _tls(tmp_path))
    (tmp_path / "server.key").write_text("-----BEGIN PRIVATE KEY-----\nk\n", encoding="ascii")
    keystore = node._write_keystore(tmp_path, _tls(tmp_path))
    assert keystore.read_text(encoding="ascii").index("PRIVATE KEY") < keystore.read_text(
        encoding="ascii"
    ).index("CERTIFICATE")
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- sentences

SECURED = Settings().with_(
    bootstrap_servers="kafka-1.example:9094",
    topic="ticks",
    consumer_group="g1",
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="bob",
    sasl_password=PASSWORD,
)


@pytest.mark.parametrize(
    ("exc", "operation", "says"),
    [
        (
            TopicAuthorizationFailedError("ticks"),
            "create",
            "user bob is not allowed to create topic ticks: ask the cluster admin for CREATE",
        ),
        (
            TopicAuthorizationFailedError(),
            "write to",
            "user bob is not allowed to write to topic ticks: ask the cluster admin for WRITE",
        ),
        (
            GroupAuthorizationFailedError("g1"),
            "read",
            "user bob is not allowed to use consumer group g1: ask the cluster admin for READ",
        ),
        (
            ClusterAuthorizationFailedError(),
            "write to",
            "user bob is not allowed to write to topic ticks (the broker refused a cluster-level",
        ),
        (  # how kafka-python reports an idempotent producer refused its producer id
            KafkaError(
                "Unexpected error in InitProducerIdResponse: [Error 31] "
                "ClusterAuthorizationFailedError"
            ),
            "write to",
            "user bob is not allowed to write to topic ticks (the broker refused",
        ),
    ],
)
def test_authorisation_errors_name_user_topic_and_acl(
    exc: KafkaError, operation: str, says: str
) -> None:
    line = kafka_errors.explain(exc, SECURED, "doing it", "nothing lost", operation=operation)
    assert line.startswith("doing it failed: ")
    assert says in line
    assert line.endswith("; nothing lost")
    assert "\n" not in line and PASSWORD not in line


def test_only_authorisation_codes_are_unwrapped() -> None:
    assert kafka_errors.authorization_error(KafkaError("[Error 29] x")) is not None
    assert kafka_errors.authorization_error(KafkaError("[Error 7] RequestTimedOut")) is None
    assert kafka_errors.authorization_error(KafkaError("no code")) is None


def test_the_principal_is_the_sasl_user_or_the_certificate() -> None:
    assert kafka_errors.principal(SECURED) == "user bob"
    mtls = Settings().with_(
        security_protocol="SSL", ssl_certfile="/c.pem", ssl_keyfile="/k.pem", ssl_password="x"
    )
    assert kafka_errors.principal(mtls) == "the user of the client certificate /c.pem"
    assert kafka_errors.principal(Settings()).startswith("user ANONYMOUS")


def test_a_refused_login_names_user_and_mechanism_not_the_password() -> None:
    line = kafka_errors.explain(SaslAuthenticationFailedError(), SECURED, "consuming", "safe")
    assert "the broker refused user 'bob' with SCRAM-SHA-512" in line
    plain = kafka_errors.auth_failed(SECURED, "h:1", "Authentication failed: Invalid username")
    assert "(Authentication" not in plain  # says nothing more than the sentence does
    odd = kafka_errors.auth_failed(SECURED, "h:1", "the broker closed the connection.")
    assert "(the broker closed the connection)" in odd
    for text in (line, plain, odd):
        assert PASSWORD not in text


def test_a_hostname_mismatch_mentions_the_check_but_recommends_the_name() -> None:
    line = kafka_errors.hostname_mismatch(SECURED, "kafka:9094", "kafka", ["k1.example"], "x")
    assert "not valid for the name kafka (it is issued for k1.example)" in line
    assert "KAFKA_SSL_CHECK_HOSTNAME=false exists but is not recommended" in line
    assert line.index("reissued") < line.index("KAFKA_SSL_CHECK_HOSTNAME")


def test_a_wrong_key_password_is_named_without_the_password() -> None:
    mtls = SECURED.with_(ssl_certfile="/c.pem", ssl_keyfile="/k.pem", ssl_password=KEY_PASSWORD)
    line = kafka_errors.bad_client_key(mtls)
    assert "check KAFKA_SSL_PASSWORD" in line
    assert KEY_PASSWORD not in line and KEY_PASSWORD not in repr(mtls)


def _ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] alert")
    error.reason = reason  # type: ignore[misc]
    return error


@pytest.mark.parametrize(
    ("reason", "with_cert", "says"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", False, "requires a client certificate"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", False, "requires a client certificate"),
        ("TLSV1_ALERT_UNKNOWN_CA", True, "rejected the client certificate"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", True, "rejected the client certificate"),
        ("SOMETHING_ELSE", True, "the TLS handshake with the broker at h:1 failed"),
    ],
)
def test_tls_alerts_after_the_handshake_are_classified(
    reason: str, with_cert: bool, says: str
) -> None:
    settings = Settings().with_(security_protocol="SSL")
    if with_cert:
        settings = settings.with_(ssl_certfile="/c.pem", ssl_keyfile="/k.pem")
    assert says in probe._post_handshake(settings, "h:1", _ssl_error(reason))


# --------------------------------------------------------------------------- wire format


def test_requests_use_header_v1() -> None:
    request = probe._request(probe.API_VERSIONS, 0, 7)
    size, key, version, correlation, client_len = struct.unpack_from(">ihhih", request)
    assert (key, version, correlation) == (18, 0, 7)
    assert size == len(request) - 4
    assert request[14 : 14 + client_len] == b"marketstream-probe"


def _respond(sock: socket.socket, correlation_id: int, body: bytes) -> None:
    payload = struct.pack(">i", correlation_id) + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)


def test_api_versions_and_sasl_handshake_answers_are_read() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        versions = struct.pack(">hi", 0, 2) + struct.pack(">hhh", 17, 1, 1)
        versions += struct.pack(">hhh", 36, 0, 2)
        _respond(theirs, 1, versions)
        assert probe._api_versions(ours) == {17: (1, 1), 36: (0, 2)}
        mechanisms = struct.pack(">hi", 33, 2) + b"\x00\x05PLAIN" + b"\x00\x0dSCRAM-SHA-512"
        _respond(theirs, 2, mechanisms)
        assert probe._sasl_handshake(ours, "SCRAM-SHA-256") == (33, ("PLAIN", "SCRAM-SHA-512"))


def test_a_peer_that_hangs_up_is_not_an_answer() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        with pytest.raises(probe._Closed):
            probe._api_versions(ours)


# --------------------------------------------------------------------------- notebooks


def test_secrets_are_never_notebook_parameters() -> None:
    settings = SECURED.with_(ssl_password=KEY_PASSWORD)
    [overrides] = notebook_parameters(settings).values()
    assert "sasl_password" not in overrides and "ssl_password" not in overrides
    assert overrides["sasl_username"] == "bob"
    assert PASSWORD not in repr(overrides) and KEY_PASSWORD not in repr(overrides)


def test_kernels_get_the_secrets_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "from-the-shell")
    monkeypatch.setenv("KAFKA_SSL_PASSWORD", "also-from-the-shell")
    with secrets_for_kernels(SECURED):
        assert os.environ["KAFKA_SASL_PASSWORD"] == PASSWORD
        assert os.environ["KAFKA_SSL_PASSWORD"] == ""  # the caller's: none (and .env can't add one)
        [overrides] = notebook_parameters(SECURED).values()
        assert Settings.from_env(**overrides) == SECURED  # what a kernel rebuilds
    assert os.environ["KAFKA_SASL_PASSWORD"] == "from-the-shell"
    assert os.environ["KAFKA_SSL_PASSWORD"] == "also-from-the-shell"
