"""One line a person can act on, from a kafka-python error: the one place for that sentence.

Why: kafka-python's errors print as their class name plus whatever argument
they got, often nothing or ``None`` (a consumer that lost its broker exited
with "KafkaTimeoutError: None"). The user needs to know which broker, whether
anything is lost, and what to do. "No broker answers at ..." was written four
times beside this module; now every caller asks :func:`no_broker`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

if TYPE_CHECKING:
    from marketstream.settings import Settings

#: Errors that mean "the broker did not answer", whatever the operation was.
_UNREACHABLE = (KafkaTimeoutError, KafkaConnectionError)


def describe(exc: KafkaError) -> str:
    """The error's class name and its message, leaving out an empty or ``None`` message."""
    detail = " ".join(str(a) for a in exc.args if a not in (None, "", "None"))
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def no_broker(settings: Settings) -> str:
    """Nothing answered at the bootstrap servers: what to do about it."""
    if settings.secured:
        return (
            f"no Kafka broker answers at {settings.bootstrap_servers} with "
            f"{settings.security_protocol}; check KAFKA_BOOTSTRAP_SERVERS and the "
            "KAFKA_SECURITY_PROTOCOL/SASL/SSL settings"
        )
    return (
        f"no Kafka broker answers at {settings.bootstrap_servers}; "
        "start one with `marketstream broker up` or set KAFKA_BOOTSTRAP_SERVERS"
    )


def explain(exc: KafkaError, settings: Settings, doing: str, safe: str) -> str:
    """``doing`` failed, why, and what to do; ``safe`` says what is not lost."""
    if isinstance(exc, _UNREACHABLE):
        return (
            f"{doing} failed: the Kafka broker at {settings.bootstrap_servers} stopped "
            f"answering ({describe(exc)}); {safe}. Start the broker "
            "(`marketstream broker up`) or fix KAFKA_BOOTSTRAP_SERVERS, then run again"
        )
    return f"{doing} failed: {describe(exc)}; {safe}"
