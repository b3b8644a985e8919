"""Every Kafka client the kit uses, built from :class:`Settings` in this one module.

Why one module: the producer, the consumer, the admin client and the broker
probe each need the same connection and security options, and each used to
be built where it was used (so tests patched ``produce.KafkaAdminClient`` and
``consume.KafkaConsumer``). Here :class:`KafkaClients` is the seam: the kit
calls it, and a test hands the code a ``KafkaClients`` with its own classes
instead of patching module globals.

The tuning lives here too, each value with the figure behind it:

* consumer fetches are generous (64 MB per fetch, 16 MB per partition) so one
  round-trip fills a whole poll; kafka-python's 1 MB per-partition default is
  ~11,000 ticks, about half a 20,000-record batch on 3 partitions;
* the producer remembers each key's partition (:class:`KeyCachingPartitioner`):
  kafka-python's pure-Python murmur2 per message cost more than ``send``;
  install ``crc32c`` too, or kafka-python checksums every batch in pure Python;
* producer batches are 256 KB with a 20 ms linger (bench/README.md: a batch per
  partition fills well inside the linger, so the linger only bounds a lone
  tick's wait);
* the producer compresses with zstd by default (``KAFKA_COMPRESSION``). Measured
  here, 210,000 ticks, three interleaved runs each (kafka-python 3.0.12, one
  local broker): the topic's log was 22.9 MB uncompressed, 5.2 MB with lz4 and
  3.0 MB with zstd; produce rates were equal within noise (none 19.8k/s, lz4
  18.6k/s, zstd 18.8k/s) and zstd consumed fastest (none 46.6k/s, lz4 47.8k/s,
  zstd 50.6k/s: fewer bytes to fetch and parse). On a real cluster the 7.6x
  fewer bytes are network and disk saved;
* the consumer reads ``read_committed`` by default: ticks of an aborted upstream
  transaction never land.

When a client cannot be built, kafka-python only says "unable to bootstrap";
:meth:`KafkaClients.diagnose` then retraces the connection step by step
(:mod:`marketstream.probe`: DNS, TCP, TLS, the Kafka listener, the SASL login)
and the user gets the one step that failed, named.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import AuthorizationError, KafkaError
from kafka.partitioner import DefaultPartitioner

from marketstream import kafka_errors, probe
from marketstream.addresses import server_list
from marketstream.errors import KafkaUnavailable
from marketstream.kafka_errors import no_broker
from marketstream.logs import redact_kafka_secrets
from marketstream.settings import Settings

#: Producer batching (see the module docstring).
LINGER_MS = 20
BATCH_BYTES = 256 * 1024

#: Admin requests (create/delete topic) wait this long for the controller.
ADMIN_TIMEOUT_MS = 15_000

#: How long the probe client waits for a broker's metadata before the
#: step-by-step check looks for the reason. A local broker answers in 30-100 ms
#: (TLS and SCRAM included) and a remote one within a few round trips; this
#: bounds how long a wrong password or certificate takes to be reported.
PROBE_TIMEOUT_S = 2.0
#: If every step of that check passes, the probe client gets this much longer
#: before the cluster is declared unusable (a slow but working cluster is not
#: a failure).
PROBE_RETRY_S = 10.0


def connection_config(settings: Settings) -> dict[str, object]:
    """Connection and security options shared by producer, consumer and admin.

    SASL/SSL values pass straight through to kafka-python, so the same
    settings reach a secured cluster; the password never appears in repr or logs.
    """
    config: dict[str, object] = {
        "bootstrap_servers": server_list(settings.bootstrap_servers),
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism:
        redact_kafka_secrets()  # kafka-python logs its admin config, password included
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        config["sasl_plain_password"] = settings.sasl_password
    if settings.ssl_cafile:
        config["ssl_cafile"] = settings.ssl_cafile
    if settings.ssl_certfile:  # mTLS: the client proves who it is with a certificate
        config["ssl_certfile"] = settings.ssl_certfile
        config["ssl_keyfile"] = settings.ssl_keyfile
        if settings.ssl_password:
            config["ssl_password"] = settings.ssl_password
    if "SSL" in settings.security_protocol.upper():
        config["ssl_check_hostname"] = settings.ssl_check_hostname
    return config


class KeyCachingPartitioner(DefaultPartitioner):
    """kafka-python's default partitioner, with each key's partition remembered.

    Same partition for the same key as the default (murmur2 of the key modulo
    the partition count, as the Java client), but the pure-Python murmur2 runs
    once per key and partition count instead of once per message. Keyless
    messages keep the default's behaviour.
    """

    MAX_KEYS = 100_000  # a producer with unbounded keys must not grow without end

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple[str, bytes, int], int] = {}

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        """The partition for one message (see the class docstring)."""
        partitions = cluster.partitions_for_topic(topic) if serialized_key is not None else None
        if not partitions:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        cache_key = (topic, bytes(serialized_key), len(partitions))  # type: ignore[arg-type]
        found = self._cache.get(cache_key)
        if found is None or found not in partitions:
            found = self.place(cache_key[1], partitions)
            if found is None:
                found = super().partition(
                    topic, key, serialized_key, value, serialized_value, cluster
                )
            if len(self._cache) >= self.MAX_KEYS:
                self._cache.clear()
            self._cache[cache_key] = found
        return found

    def place(self, key: bytes, partitions: set[int]) -> int | None:
        """A key's partition when first seen (``None``: Kafka's murmur2, as here)."""
        return None


class SpreadPartitioner(KeyCachingPartitioner):
    """The configured symbols over the partitions in turn; any other key as Kafka's default.

    Why: keyed by symbol, murmur2 puts the default three symbols on 3 partitions
    at {1, 1, 2} (measured): partition 0 empty, one partition two thirds of the
    stream, so a second consumer worker would have nothing to do. Here symbol
    ``i`` of ``MARKET_SYMBOLS`` goes to partition ``i mod n``: each symbol still
    has one partition (per-symbol order holds), and N symbols fill N partitions.
    The cost: a producer that is not the kit (its client's murmur2) sends the
    same symbol to another partition, so that symbol's order across the two
    producers, and the one-writer-per-symbol the lake's identity check relies
    on, no longer hold; give such producers ``MARKET_PARTITIONER=murmur2`` here.
    """

    def __init__(self, symbols: tuple[str, ...]) -> None:
        super().__init__()
        self._slots = {symbol.encode(): i for i, symbol in enumerate(symbols)}

    def place(self, key: bytes, partitions: set[int]) -> int | None:
        """Symbol ``i`` to the ``i``-th partition (mod their count); others by murmur2.
        Asked once per key and partition count: the answer is cached like murmur2's."""
        slot = self._slots.get(key)
        return None if slot is None else sorted(partitions)[slot % len(partitions)]


def partitioner_for(settings: Settings) -> KeyCachingPartitioner:
    """The producer's partitioner ``MARKET_PARTITIONER`` names (see :class:`SpreadPartitioner`)."""
    if settings.partitioner == "spread":
        return SpreadPartitioner(settings.symbols)
    return KeyCachingPartitioner()


def producer_config(settings: Settings) -> dict[str, object]:
    """A producer tuned for throughput without giving up delivery guarantees."""
    return {
        **connection_config(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": LINGER_MS,
        "batch_size": BATCH_BYTES,
        "max_request_size": 4 * 1024 * 1024,
        "compression_type": None if settings.compression == "none" else settings.compression,
        "partitioner": partitioner_for(settings),
    }


def consumer_config(settings: Settings) -> dict[str, object]:
    """A consumer that never auto-commits and fetches in large batches."""
    return {
        **connection_config(settings),
        "group_id": settings.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.batch_size,
        "fetch_max_bytes": 64 * 1024 * 1024,
        "max_partition_fetch_bytes": 16 * 1024 * 1024,
        "fetch_min_bytes": 1,
        "fetch_max_wait_ms": 100,
        "consumer_timeout_ms": float("inf"),
        # Heartbeats a third of the session apart, as Kafka advises (3 s at the 45 s default).
        "session_timeout_ms": int(settings.session_timeout_s * 1000),
        "heartbeat_interval_ms": min(3000, int(settings.session_timeout_s * 1000) // 3),
        # Upstream transactional producers: aborted ticks must never land, and a
        # transaction's ticks appear only once it commits.
        "isolation_level": settings.isolation_level,
    }


@contextlib.contextmanager
def _quiet_kafka_logging() -> Iterator[None]:
    """Silence kafka-python while probing: a refused connection is an answer, not an error."""
    logger = logging.getLogger("kafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous)


@dataclass(frozen=True)
class KafkaClients:
    """Builds kafka-python clients from settings; the classes are the seam for tests.

    Construction failures that mean "no broker answered" become one
    :class:`KafkaUnavailable` line naming the servers (never the password).
    """

    producer_class: Callable[..., Any] = KafkaProducer
    consumer_class: Callable[..., Any] = KafkaConsumer
    admin_class: Callable[..., Any] = KafkaAdminClient

    def _build(self, cls: Callable[..., Any], settings: Settings, config: dict) -> Any:
        try:
            return cls(**config)
        except KafkaError:  # kafka-python says "Unable to bootstrap": find out why
            raise KafkaUnavailable(self.diagnose(settings) or no_broker(settings)) from None

    def producer(self, settings: Settings, **overrides: object) -> Any:
        """A producer (see :func:`producer_config`), options overridable."""
        return self._build(
            self.producer_class, settings, {**producer_config(settings), **overrides}
        )

    def consumer(
        self,
        settings: Settings,
        *,
        subscribe: bool = True,
        listener: Any = None,
        **overrides: object,
    ) -> Any:
        """A group consumer of ``settings.topic`` (see :func:`consumer_config`);
        ``listener`` (a ``ConsumerRebalanceListener``) hears its partitions move."""
        consumer = self._build(
            self.consumer_class, settings, {**consumer_config(settings), **overrides}
        )
        if subscribe:
            consumer.subscribe([settings.topic], listener=listener)
        return consumer

    def admin(self, settings: Settings, **overrides: object) -> Any:
        """An admin client (topics, groups, offsets)."""
        config = {**connection_config(settings), "request_timeout_ms": ADMIN_TIMEOUT_MS}
        return self._build(self.admin_class, settings, {**config, **overrides})

    def _ask(self, settings: Settings, timeout_s: float) -> BaseException | None:
        """Ask a probe admin client for the cluster's brokers: None if they came back,
        else what went wrong. Denied cluster metadata is still an answer."""
        timeout_ms = max(int(timeout_s * 1000), 500)
        with _quiet_kafka_logging():
            try:
                admin = self.admin_class(
                    **connection_config(settings),
                    client_id="marketstream-probe",
                    bootstrap_timeout_ms=timeout_ms,
                    request_timeout_ms=timeout_ms,
                    reconnect_backoff_max_ms=1000,
                )
            except Exception as exc:
                return exc
            try:
                brokers = admin.describe_cluster().get("brokers")
                return None if brokers else KafkaUnavailable("the broker listed no brokers")
            except AuthorizationError:
                return None
            except Exception as exc:
                return exc
            finally:
                with contextlib.suppress(Exception):
                    admin.close()

    def reachable(self, settings: Settings, timeout_s: float = 3.0) -> bool:
        """True if a Kafka broker answers a metadata request with the settings' security.

        A TCP check first: when nothing listens (the common case before the kit
        starts its broker) that answers in a millisecond instead of a client's
        bootstrap timeout.
        """
        if not probe.any_port_open(settings, min(timeout_s, 1.0)):
            return False
        return self._ask(settings, timeout_s) is None

    def diagnose(self, settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
        """None if a Kafka broker answers with these settings, else the one-line reason.

        The probe client asks first (so a broker that answers costs one metadata
        request); only if it gets no answer does :func:`marketstream.probe.check`
        retrace DNS, TCP, TLS, the Kafka listener and the SASL login to name the
        step that fails. If every step passes, the client asks once more, for
        :data:`PROBE_RETRY_S`, and only then is its own error named.
        """
        if not probe.any_port_open(settings, min(timeout_s, 1.0)):
            return probe.check(settings, timeout_s) or no_broker(settings)
        if self._ask(settings, timeout_s) is None:
            return None
        found = probe.check(settings, timeout_s)
        if found is not None:
            return found
        error = self._ask(settings, PROBE_RETRY_S)
        if error is None:
            return None
        return kafka_errors.bootstrap_failed(settings, error, PROBE_RETRY_S)

    def check(self, settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        """Raise :class:`KafkaUnavailable` with :meth:`diagnose`'s line unless a broker answers.

        For the CLI, before a client would wait out its own bootstrap timeout.
        """
        problem = self.diagnose(settings, timeout_s)
        if problem is not None:
            raise KafkaUnavailable(problem)


#: The clients the kit uses unless a caller (a test) passes its own.
DEFAULT_CLIENTS = KafkaClients()


def diagnose(
    settings: Settings, timeout_s: float = PROBE_TIMEOUT_S, clients: KafkaClients = DEFAULT_CLIENTS
) -> str | None:
    """None if a Kafka broker answers with these settings, else the one-line reason
    (:meth:`KafkaClients.diagnose`)."""
    return clients.diagnose(settings, timeout_s)
