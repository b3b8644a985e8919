"""JSON-lines logging to ``logs/pipeline.log`` (one object per line, easy to ship or grep).

Built on the standard :mod:`logging` module so library users can route the
same records elsewhere; secrets never reach a record because settings are
not logged whole (see :func:`marketstream.clients.connection_config`), and a
text field that quotes a connection string has its password masked
(:func:`marketstream.redact.redact`: an error may quote the lake's catalog).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from marketstream.redact import redact

LOGGER_NAME = "marketstream"
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object: time, level, event, then the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


_SECRET_KEYS = ("sasl_plain_password", "ssl_password", "sasl_oauth_token_provider")


class RedactSecrets(logging.Filter):
    """Replace secret values in a record's arguments: kafka-python's admin client logs
    its whole configuration, SASL password included, at DEBUG."""

    @staticmethod
    def _clean(value: Any) -> Any:
        if isinstance(value, Mapping) and any(value.get(k) for k in _SECRET_KEYS):
            return {k: ("***" if k in _SECRET_KEYS and v else v) for k, v in value.items()}
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = self._clean(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        return True


def redact_kafka_secrets() -> None:
    """Install :class:`RedactSecrets` on kafka-python's admin-client logger (once)."""
    logger = logging.getLogger("kafka.admin.client")
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())


def get_logger(log_path: Path) -> logging.Logger:
    """The package logger writing JSON lines to ``log_path`` (handler added once per path)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    target = str(log_path.resolve())
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == target:
            return logger
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    return logger


def read_log(log_path: Path) -> list[dict[str, Any]]:
    """Parse a JSON-lines log back into dicts (skipping any line that is not JSON)."""
    if not log_path.exists():
        return []
    entries = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return entries
