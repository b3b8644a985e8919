"""The API's broker probe against the session's real broker. Everything else the API
does, on a store file without a broker: tests/unit/test_api*.py."""

from __future__ import annotations

from marketstream.ticks import generate_ticks
from marketstream_api.app import create_app
from support.api import get_json
from support.factories import write_store


def test_health_sees_a_real_broker(kafka, tmp_path):
    """The default probe (KafkaClients.reachable) against the session's real broker."""
    db = write_store(tmp_path / "market.duckdb", generate_ticks(("SP500", "STOXX600"), 5))
    app = create_app(kafka.with_(db_path=db, log_path=tmp_path / "api.log"))
    body = get_json(app.test_client(), "/health")
    assert body["broker"] == {"reachable": True, "bootstrap_servers": kafka.bootstrap_servers}
