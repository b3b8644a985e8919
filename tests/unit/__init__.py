"""Pure logic: no Kafka broker, no browser (``pytest tests/unit``)."""
