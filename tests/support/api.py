"""The Flask API on a store file (test client, no server), and reading its JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from flask import Flask

from marketstream.settings import Settings
from marketstream_api.app import StoreReader, create_app


def app_for(
    db_path: Path,
    log_dir: Path,
    *,
    broker_up: bool = True,
    reader: StoreReader | None = None,
    ends: dict[tuple[str, int], int] | None = None,
    **overrides: Any,
) -> Flask:
    """The app for a store at ``db_path``, logging into ``log_dir``; its broker probe
    answers ``broker_up`` without asking Kafka, and ``/lag`` takes ``ends`` as the
    topic's end offsets (without them it asks the settings' broker, which is not
    there). ``overrides`` go to the settings."""
    settings = Settings().with_(db_path=db_path, log_path=log_dir / "api.log", **overrides)
    return create_app(
        settings,
        broker_check=lambda settings, timeout_s: broker_up,
        reader=reader,
        end_offsets=None if ends is None else (lambda settings: dict(ends)),
    )


def get_json(client: Any, url: str, status: int = 200) -> Any:
    """GET ``url``; the answer must have ``status`` and be JSON. Returns the body."""
    response = client.get(url)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return orjson.loads(response.get_data())
