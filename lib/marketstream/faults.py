"""Messages that are not ticks, sent on purpose: what the consumer does with a bad message.

The consume notebook sends a few before it consumes, so its run has dead letters to
show: the consumer stores each in ``dead_letters`` with its raw bytes and the reason
(:mod:`marketstream.decode`), and goes on with the good ones.
"""

from __future__ import annotations

import pandas as pd

from marketstream.clients import DEFAULT_CLIENTS, KafkaClients
from marketstream.settings import Settings

#: ``(what is wrong, key, value)``: one bad message per default symbol, so one per partition.
BAD_MESSAGES: tuple[tuple[str, bytes, bytes], ...] = (
    ("not JSON", b"SP500", b"this is not json"),
    (
        "no price",
        b"STOXX600",
        b'{"timestamp":"2025-01-06T14:30:00Z","symbol":"STOXX600","volume":10}',
    ),
    (
        "negative price",
        b"NIKKEI225",
        b'{"timestamp":"2025-01-06T14:30:00Z","symbol":"NIKKEI225","price":-1.0,"volume":10}',
    ),
)


def send_bad_messages(
    settings: Settings,
    messages: tuple[tuple[str, bytes, bytes], ...] = BAD_MESSAGES,
    clients: KafkaClients = DEFAULT_CLIENTS,
) -> pd.DataFrame:
    """Send ``messages`` to the topic with the kit's producer (same partitioner, same
    acks); where each landed (partition, offset) and what is wrong with it."""
    producer = clients.producer(settings)
    try:
        futures = [producer.send(settings.topic, key=k, value=v) for _, k, v in messages]
        producer.flush()
        sent = [f.get(timeout=30) for f in futures]
    finally:
        producer.close()
    return pd.DataFrame(
        {
            "partition": [m.partition for m in sent],
            "offset": [m.offset for m in sent],
            "key": [k for _, k, _ in messages],
            "value": [v for _, _, v in messages],
            "what is wrong": [w for w, _, _ in messages],
        }
    )
