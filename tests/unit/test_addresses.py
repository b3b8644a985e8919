"""``host:port`` text (:mod:`marketstream.addresses`): parsed and written IPv6-safe."""

from __future__ import annotations

import pytest

from marketstream.addresses import (
    DEFAULT_KAFKA_PORT,
    connect_host,
    join_host_port,
    server_list,
    split_host_port,
)
from marketstream.errors import SettingsError


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("localhost:9092", ("localhost", 9092)),
        (" 127.0.0.1:19092 ", ("127.0.0.1", 19092)),
        ("[::1]:9093", ("::1", 9093)),
        ("kafka", ("kafka", 9092)),
        (":9094", ("localhost", 9094)),
    ],
)
def test_split_host_port(server: str, expected: tuple[str, int]) -> None:
    assert split_host_port(server) == expected


def test_split_host_port_rejects_a_bad_port() -> None:
    with pytest.raises(SettingsError, match="host:port"):
        split_host_port("localhost:kafka")


def test_a_bracketed_ipv6_server_round_trips() -> None:
    assert split_host_port("[::1]:9092") == ("::1", 9092)
    assert join_host_port("::1", 9092) == "[::1]:9092"  # never [[::1]]:9092
    assert join_host_port(*split_host_port("[::1]:9092")) == "[::1]:9092"
    assert join_host_port("localhost", 9092) == "localhost:9092"


@pytest.mark.parametrize(
    "host",
    ["localhost", "127.0.0.1", "::1", "fe80::1%eth0", "kafka-1.x"],
    ids=["localhost", "ipv4", "ipv6", "ipv6-scoped", "dns-name"],
)
def test_join_then_split_gives_the_host_and_port_back(host: str) -> None:
    assert split_host_port(join_host_port(host, 19092)) == (host, 19092)


def test_a_bare_ipv6_literal_is_a_host_without_a_port() -> None:
    assert split_host_port("::1") == ("::1", DEFAULT_KAFKA_PORT)
    assert split_host_port("fe80::1", default_port=19092) == ("fe80::1", 19092)
    with pytest.raises(SettingsError, match="no port"):
        split_host_port("::1", default_port=None)


@pytest.mark.parametrize(
    "server", ["kafka", "[::1]", "::1", "kafka:"], ids=["host", "bracketed", "bare-ipv6", "colon"]
)
def test_a_missing_port_is_an_error_when_one_is_required(server: str) -> None:
    with pytest.raises(SettingsError, match="no port"):
        split_host_port(server, default_port=None)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("localhost:0", "outside 1-65535"),
        ("localhost:65536", "outside 1-65535"),
        ("localhost:-1", "outside 1-65535"),
        ("[::1]:http", "port 'http'"),
        ("[::1]9092", r"\[IPv6\]:port"),
        ("[::1:9092", r"\[IPv6\]:port"),
    ],
    ids=["zero", "too-big", "negative", "ipv6-named-port", "ipv6-no-colon", "ipv6-unclosed"],
)
def test_a_bad_port_is_an_error_naming_the_server(server: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        split_host_port(server)
    assert repr(server) in str(caught.value)


def test_server_lists_and_wildcard_hosts() -> None:
    assert server_list(" a:1, ,b:2,") == ["a:1", "b:2"]
    assert [connect_host(h) for h in ("0.0.0.0", "", "::", "kafka")] == [
        "127.0.0.1",
        "127.0.0.1",
        "127.0.0.1",
        "kafka",
    ]
