"""The object store's settings: its keys are secrets everywhere the kit shows text, and a
lake on s3:// reaches the store its settings name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marketstream import cli
from marketstream.errors import SettingsError, StoreUnavailable
from marketstream.pipeline import notebook_parameters
from marketstream.redact import MASK
from marketstream.settings import HOME_ENV, Settings
from marketstream.store import lake, locate
from marketstream.store.lake import Lake, S3Access

KEY_ID = "AKIAEXAMPLE0123"
SECRET = "wJalr/XUtnF+EMI=K7MDENG"  # an '=' in a key: still masked whole

S3 = {
    "store": "ducklake",
    "ducklake_catalog": "host=127.0.0.1 port=5432 user=ms dbname=lake",
    "ducklake_data": "s3://bucket/prefix/",
    "s3_endpoint": "objects.example:9000",
    "s3_key_id": KEY_ID,
    "s3_secret": SECRET,
}


def test_the_keys_are_masked_in_the_settings_repr_and_listed_as_secrets() -> None:
    settings = Settings().with_(**S3)
    shown = repr(settings)
    assert KEY_ID not in shown and SECRET not in shown and "K7MDENG" not in shown
    assert "objects.example:9000" in shown  # where it points is no secret
    assert {KEY_ID, SECRET} <= set(settings.secret_values)


def test_the_keys_are_no_cli_option_and_no_notebook_parameter() -> None:
    settings = Settings().with_(**S3)
    [overrides] = notebook_parameters(settings).values()
    assert "s3_secret" not in overrides and "s3_key_id" not in overrides
    assert SECRET not in json.dumps(overrides) and overrides["s3_endpoint"]
    parser = cli.build_parser()
    for verb in cli.VERB_SETTINGS:
        for flag in ("--s3-secret", "--s3-key-id"):
            with pytest.raises(SystemExit):
                parser.parse_args([verb, flag, SECRET])


def test_the_lake_carries_the_access_and_its_repr_masks_the_keys() -> None:
    at = locate(Settings().with_(**S3))
    assert isinstance(at, Lake) and at.on_object_store
    assert at.s3 == S3Access("objects.example:9000", "us-east-1", KEY_ID, SECRET, "vhost", True)
    assert KEY_ID not in repr(at) and SECRET not in repr(at) and MASK in repr(at)
    assert SECRET not in at.describe() and "objects.example:9000" in at.describe()
    assert set(at.secret_values) == {KEY_ID, SECRET}


def test_an_error_line_about_the_lake_never_holds_its_keys() -> None:
    at = locate(Settings().with_(**S3))
    echoed = Exception(f"HTTP PUT failed: CREATE SECRET (KEY_ID '{KEY_ID}', SECRET '{SECRET}')")
    line = lake._unreachable(at, echoed)  # DuckDB may quote the statement that failed
    assert KEY_ID not in line and SECRET not in line and "HTTP PUT failed" in line


def test_a_folder_lake_needs_no_object_store() -> None:
    at = locate(Settings().with_(**{**S3, "ducklake_data": "data/lake"}))
    assert isinstance(at, Lake) and at.s3 is None and not at.on_object_store


def test_without_an_endpoint_the_kits_store_must_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    settings = Settings().with_(**{**S3, "s3_endpoint": "", "s3_key_id": "", "s3_secret": ""})
    with pytest.raises(StoreUnavailable, match=r"kit's own object store .* not running"):
        locate(settings)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"s3_url_style": "virtual"}, "MARKET_S3_URL_STYLE"),
        ({"s3_key_id": KEY_ID}, "go together"),
        ({"s3_use_ssl": "maybe"}, "not true or false"),
    ],
)
def test_bad_object_store_settings_are_refused_with_their_name(
    change: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings().with_(**change)
