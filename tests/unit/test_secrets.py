"""Every credential the kit takes stays a secret wherever the kit shows text: the repr
(so every notebook that displays its settings), CLI options, notebook parameters, error
lines, the JSON log and the bench's JSON; and every variable the kit reads is named in
the one settings table."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from marketstream import cli
from marketstream.bench.report import write_json
from marketstream.logs import JsonFormatter
from marketstream.pipeline import notebook_parameters
from marketstream.redact import MASK, mask, passwords_in, redact
from marketstream.settings import HOME_ENV, OPTIONS, PROJECT_ROOT, VARIABLES, Settings
from marketstream.store import lake

PASSWORD = "s3cr3t-Pa55"
CATALOGS = {
    "keywords": f"host=db.example port=5432 user=ms password={PASSWORD} dbname=lake",
    "quoted": f"host=db.example user=ms password='{PASSWORD} x' dbname=lake",
    "spaced": f"host=db.example user=ms password = {PASSWORD} dbname=lake",
    "url": f"postgresql://ms:{PASSWORD}@db.example:5432/lake",
    "url query": f"postgresql://db.example/lake?user=ms&password={PASSWORD}&sslmode=require",
}


@pytest.mark.parametrize("dsn", CATALOGS.values(), ids=CATALOGS.keys())
def test_a_connection_strings_password_is_masked_and_where_it_points_kept(dsn: str) -> None:
    shown = redact(dsn)
    assert PASSWORD not in shown and MASK in shown
    assert "db.example" in shown  # where it points is no secret
    assert PASSWORD in " ".join(passwords_in(dsn))
    assert mask(dsn) == shown


def test_a_plain_secret_is_masked_whole_and_short_ones_only_by_their_pattern() -> None:
    assert mask("hunter22") == MASK and mask("") == ""
    assert redact("the key hunter22 was refused", ["hunter22"]) == f"the key {MASK} was refused"
    assert redact("a b a", ["a"]) == "a b a"  # masking every "a" would hide the line instead


@pytest.mark.parametrize("dsn", CATALOGS.values(), ids=CATALOGS.keys())
def test_settings_repr_and_str_show_no_credential(dsn: str) -> None:
    settings = Settings(ducklake_catalog=dsn, sasl_password="kafka-Pa55", ssl_password="key-Pa55")
    for text in (repr(settings), str(settings)):
        assert PASSWORD not in text and "kafka-Pa55" not in text and "key-Pa55" not in text
        assert "db.example" in text  # the catalog is still recognisable
    assert set(settings.secret_values) >= {"kafka-Pa55", "key-Pa55"}
    assert any(PASSWORD in value for value in settings.secret_values)


def test_the_catalog_is_no_cli_option_and_no_notebook_parameter() -> None:
    settings = Settings(ducklake_catalog=CATALOGS["url"])
    [overrides] = notebook_parameters(settings).values()
    assert "ducklake_catalog" not in overrides and PASSWORD not in json.dumps(overrides)
    parser = cli.build_parser()
    for verb in cli.VERB_SETTINGS:
        with pytest.raises(SystemExit):  # argparse refuses it, for every verb
            parser.parse_args([verb, "--ducklake-catalog", CATALOGS["url"]])


def test_a_malformed_catalog_is_named_without_its_password() -> None:
    with pytest.raises(Exception, match="neither a PostgreSQL connection string") as caught:
        lake.catalog_spec(f"password={PASSWORD} and nothing else")
    assert PASSWORD not in str(caught.value)


def test_the_cli_error_line_masks_the_configured_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    monkeypatch.setenv("MARKET_STORE", "ducklake")
    monkeypatch.setenv("MARKET_DUCKLAKE_CATALOG", f"password={PASSWORD} is not a catalog")
    assert cli.main(["stats"]) == 2
    err = capsys.readouterr().err
    assert "MARKET_DUCKLAKE_CATALOG=" in err and PASSWORD not in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


def test_the_json_log_masks_a_quoted_connection_string(tmp_path: Path) -> None:
    record = logging.makeLogRecord(
        {"msg": "store_error", "error": f"cannot open {CATALOGS['keywords']}", "levelno": 40}
    )
    line = JsonFormatter().format(record)
    assert PASSWORD not in line and "db.example" in line


def test_the_bench_json_masks_the_settings_secrets(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    kept = {"failed_attempts": [f"catalog {CATALOGS['url']} refused key-Pa55"], "rate": 1.0}
    write_json(kept, out, secrets=["key-Pa55"])
    text = out.read_text()
    assert PASSWORD not in text and "key-Pa55" not in text
    assert json.loads(text)["rate"] == 1.0


# ------------------------------------------------------------------------ one table of names

#: Names in the code that look like variables but are not read from the environment.
NOT_VARIABLES = {"MARKETSTREAM_SETTINGS"}  # the Flask app's config key for its Settings


def test_every_variable_the_code_names_is_in_the_settings_tables() -> None:
    named = {o.env for o in OPTIONS} | {v.env for v in VARIABLES} | {HOME_ENV}
    found: dict[str, Path] = {}
    for folder in ("lib", "api"):
        for path in (PROJECT_ROOT / folder).rglob("*.py"):
            for name in re.findall(
                r"[\"']((?:MARKET|MARKETSTREAM)_[A-Z0-9_]+)[\"']", path.read_text()
            ):
                found.setdefault(name, path)
    stray = {name: str(path) for name, path in found.items() if name not in named | NOT_VARIABLES}
    assert not stray, f"read outside the settings tables: {stray}"
    assert {name.split("_")[0] for name in (v.env for v in VARIABLES)} == {"MARKET"}


def test_every_variable_a_user_sets_is_in_the_configuration_table() -> None:
    """The table lives in docs/configuration.md (the README links to it)."""
    page = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    table = "\n".join(line for line in page.splitlines() if line.startswith("| `"))
    for env in [o.env for o in OPTIONS] + [v.env for v in VARIABLES if not v.internal]:
        assert f"`{env}`" in table, f"{env} is missing from docs/configuration.md's table"
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "docs/configuration.md" in readme, "the README should link to the configuration"
