"""The ``marketstream`` command's surface (:mod:`marketstream.cli`), without a broker: each
verb's own options derived from the settings table, ``--version``, the ``--fresh`` guard,
missing extras and paced-replay options as one line and exit 2."""

from __future__ import annotations

import argparse

import pytest

from marketstream import __version__, cli
from marketstream.errors import ConfirmationRefused, MissingExtra
from marketstream.pacing import Pace
from marketstream.settings import OPTIONS, Settings

BY_NAME = {o.name: o for o in OPTIONS}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


@pytest.fixture(scope="module")
def verbs() -> dict[str, argparse.ArgumentParser]:
    return subparsers(cli.build_parser())


def test_every_verb_has_a_table_of_settings_and_nothing_else(verbs):
    assert set(verbs) == set(cli.VERB_SETTINGS)
    broker = flags(verbs["broker"])
    assert {"--csv", "--seed", "--db", "--symbols"}.isdisjoint(broker)
    assert "--bootstrap-servers" in broker and "--topic" in broker  # status: its partitions
    assert "--seed" not in flags(verbs["consume"]) and "--csv" not in flags(verbs["api"])


def test_every_setting_option_says_its_default_and_variable(verbs):
    for name, parser in verbs.items():
        by_flag = {s: a for a in parser._actions for s in a.option_strings}
        for setting in cli.VERB_SETTINGS[name]:
            option = BY_NAME[setting]
            text = by_flag[cli.flag(setting, name)].help % {}
            assert option.help in text and f"env {option.env}" in text and "default: " in text


def test_help_shows_path_defaults_relative_to_the_home(verbs):
    by_flag = {s: a for a in verbs["consume"]._actions for s in a.option_strings}
    assert "default: data/market_data.duckdb; env MARKET_DB_PATH" in by_flag["--db"].help


def test_secrets_are_never_options(verbs):
    secret = {cli.flag(o.name) for o in OPTIONS if o.secret}
    for parser in verbs.values():
        assert secret.isdisjoint(flags(parser))


def test_options_become_settings_through_from_env():
    args = cli.build_parser().parse_args(
        ["consume", "--topic", "t1", "--batch-size", "7", "--idle-timeout", "0.5"]
    )
    settings = cli._settings(args)
    assert (settings.topic, settings.batch_size, settings.idle_timeout_s) == ("t1", 7, 0.5)
    untouched = cli._settings(cli.build_parser().parse_args(["consume"]))
    assert untouched == Settings.from_env()


def test_a_mistyped_number_is_argparses_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["generate", "--ticks-per-symbol", "many"])
    assert exc.value.code == 2
    assert "--ticks-per-symbol" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"marketstream {__version__}"


def test_live_names_its_two_ports_apart(verbs):
    assert {"--api-port", "--voila-port"} <= flags(verbs["live"])
    assert "--port" not in flags(verbs["live"]) and "--port" in flags(verbs["api"])


def test_the_api_verb_serves_with_the_api_settings():
    args = cli.build_parser().parse_args(["api", "--host", "0.0.0.0", "--port", "0"])
    settings = cli._settings(args)
    assert (settings.api_host, settings.api_port, args.workers) == ("0.0.0.0", 0, 1)


# --------------------------------------------------------------------------- --fresh


REMOTE = Settings().with_(bootstrap_servers="kafka-1.example:9092,kafka-2.example:9092")


def never(_prompt: str) -> str:
    raise AssertionError("asked")


def test_fresh_on_this_machine_asks_nothing():
    cli.confirm_fresh(Settings(), yes=False, interactive=False, ask=never, is_local=lambda h: True)


def test_fresh_on_a_shared_cluster_without_a_terminal_refuses_in_one_line():
    with pytest.raises(ConfirmationRefused) as exc:
        cli.confirm_fresh(REMOTE, yes=False, interactive=False, ask=never, is_local=lambda h: False)
    line = str(exc.value)
    assert "\n" not in line and "--yes" in line and "market_ticks" in line


def test_fresh_with_yes_goes_ahead():
    cli.confirm_fresh(REMOTE, yes=True, interactive=False, ask=never, is_local=lambda h: False)


@pytest.mark.parametrize(("answer", "confirmed"), [("y", True), ("YES", True), ("", False)])
def test_fresh_at_a_terminal_asks(answer, confirmed):
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return answer

    def run() -> None:
        cli.confirm_fresh(REMOTE, yes=False, interactive=True, ask=ask, is_local=lambda h: False)

    if confirmed:
        run()
    else:
        with pytest.raises(ConfirmationRefused, match="not confirmed"):
            run()
    assert len(prompts) == 1 and "[y/N]" in prompts[0]


def test_one_remote_server_is_enough_to_ask():
    mixed = Settings().with_(bootstrap_servers="localhost:9092,kafka-1.example:9092")
    with pytest.raises(ConfirmationRefused):
        cli.confirm_fresh(
            mixed, yes=False, interactive=False, ask=never, is_local=lambda h: h == "localhost"
        )


def test_the_refusal_exits_2_before_anything_runs(capsys):
    # a documentation address (TEST-NET-1): not this machine's, and nothing is sent to it
    code = cli.main(["pipeline", "--fresh", "--bootstrap-servers", "192.0.2.1:9092"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("marketstream: error: --fresh deletes topic") and "\n" not in err


# --------------------------------------------------------------------------- extras, pacing


def test_a_missing_extra_names_the_pip_command():
    with pytest.raises(MissingExtra, match=r"pip install 'marketstream\[api\]'"):
        cli.require_extra("no_such_module_marketstream", "api", "marketstream api")


def test_speed_without_pace_is_one_line(capsys, tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp,symbol,price,volume\n")
    assert cli.main(["produce", "--csv", str(csv), "--speed", "5"]) == 2
    assert "add --pace" in capsys.readouterr().err


def test_a_speed_that_is_not_positive_is_one_line(capsys, tmp_path):
    assert cli.main(["produce", "--pace", "--speed", "0"]) == 2
    assert "--speed 0: give a positive number" in capsys.readouterr().err


def test_pace_and_speed_make_a_pace():
    args = cli.build_parser().parse_args(["produce", "--pace", "--speed", "20", "--retime"])
    assert cli._pace(args) == Pace(speed=20.0, retime=True)
    assert cli._pace(cli.build_parser().parse_args(["produce"])) is None
    live = cli.build_parser().parse_args(["live", "--pace"])
    assert cli._pace(live) == Pace(speed=1.0)


def test_every_verb_takes_the_same_output_switch(verbs):
    """``generate -q`` was refused beside ``produce -q`` and ``consume -q``."""
    for name, parser in verbs.items():
        switches = {s for a in parser._actions for s in a.option_strings}
        assert {"-q", "--quiet"} <= switches, name


def test_quiet_drops_the_notes_and_keeps_the_result(tmp_path, capsys):
    csv = tmp_path / "ticks.csv"
    assert cli.main(["generate", "-q", "--csv", str(csv), "--ticks-per-symbol", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("wrote 6 ticks") and err == ""
    quiet = cli.build_parser().parse_args(["broker", "up", "-q"])
    cli._notes(quiet)("a progress note")
    loud = cli.build_parser().parse_args(["broker", "up"])
    cli._notes(loud)("a progress note")
    assert capsys.readouterr().err == "a progress note\n"


def test_broker_status_without_a_broker_exits_3_and_says_how_to_start_one(
    tmp_path, monkeypatch, capsys
):
    from marketstream.processes import free_port

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("MARKETSTREAM_KAFKA_HOME", str(tmp_path / "kafka"))
    assert cli.main(["broker", "status"]) == cli.NOT_RUNNING == 3
    out, err = capsys.readouterr()
    assert "no Kafka broker answers" in out and "marketstream broker up" in err


# --------------------------------------------------------------------------- the broker rule


@pytest.mark.parametrize("verb", ["produce", "consume"])
def test_a_step_verb_without_the_local_broker_says_to_run_broker_up(
    verb, tmp_path, monkeypatch, capsys
):
    """After ``make demo`` stopped the broker it started, the README's next commands
    (``produce --csv``, ``consume``) name the one command to run (issue 18, friction 1)."""
    from marketstream.processes import free_port

    port = free_port()
    csv = tmp_path / "ticks.csv"
    csv.write_text("timestamp,symbol,price,volume\n2025-01-01T00:00:00,SP500,1.0,1\n")
    monkeypatch.setenv("MARKETSTREAM_HOME", str(tmp_path))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"localhost:{port}")
    args = [verb, "-q"] + (["--csv", str(csv)] if verb == "produce" else [])
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"marketstream: error: no Kafka broker answers at localhost:{port}")
    assert "`marketstream broker up`" in line and "nothing listens there" in line
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_a_step_verb_against_another_machine_keeps_the_diagnosis(monkeypatch):
    """``broker up`` is no advice for somebody's cluster: the probe's own line stays."""
    from marketstream.errors import KafkaUnavailable

    settings = Settings().with_(bootstrap_servers="broker.invalid:9092")
    with pytest.raises(KafkaUnavailable) as caught:
        cli._require_kafka(settings)
    assert "broker up" not in str(caught.value) and "broker.invalid" in str(caught.value)


# --------------------------------------------------------------------------- use


def test_use_writes_the_store_into_dotenv_and_keeps_every_other_line(tmp_path, monkeypatch, capsys):
    """``marketstream use ducklake``: later commands find the store without an export
    (issue 18, friction 2); comments, passwords and other settings are left as they were."""
    monkeypatch.setenv("MARKETSTREAM_HOME", str(tmp_path))
    monkeypatch.delenv("MARKET_STORE", raising=False)
    dotenv = tmp_path / ".env"
    before = [
        "# my cluster",
        "KAFKA_SASL_PASSWORD='s3 cr=t'",
        "export MARKET_STORE=duckdb",
        "",
        "KAFKA_TOPIC=ticks",
    ]
    dotenv.write_text("\n".join(before) + "\n")
    dotenv.chmod(0o600)
    assert cli.main(["use", "ducklake"]) == 0
    out, err = capsys.readouterr()
    assert "MARKET_STORE=ducklake" in out and err == ""
    after = dotenv.read_text().splitlines()
    assert after == [line.replace("duckdb", "ducklake") for line in before]
    assert dotenv.stat().st_mode & 0o777 == 0o600
    assert Settings.from_env().store == "ducklake"
    assert Settings.from_env().sasl_password == "s3 cr=t" and Settings.from_env().topic == "ticks"

    assert cli.main(["use"]) == 0
    assert f"store: ducklake ({tmp_path / 'data' / 'lake'}; MARKET_STORE from" in (
        capsys.readouterr().out
    )


def test_use_on_a_new_home_creates_a_private_dotenv_with_the_paths_given(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MARKETSTREAM_HOME", str(tmp_path))
    monkeypatch.delenv("MARKET_STORE", raising=False)
    assert cli.main(["use", "duckdb", "--db", "data/other.duckdb"]) == 0
    dotenv = tmp_path / ".env"
    assert dotenv.read_text() == "MARKET_STORE=duckdb\nMARKET_DB_PATH=data/other.duckdb\n"
    assert dotenv.stat().st_mode & 0o777 == 0o600
    assert Settings.from_env().db_path == tmp_path / "data" / "other.duckdb"
    capsys.readouterr()
    assert cli.main(["use"]) == 0
    assert "duckdb" in capsys.readouterr().out


def test_use_warns_when_an_export_wins_over_dotenv_and_refuses_an_unknown_store(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MARKETSTREAM_HOME", str(tmp_path))
    monkeypatch.setenv("MARKET_STORE", "duckdb")
    assert cli.main(["use", "ducklake"]) == 0
    _out, err = capsys.readouterr()
    assert "unset MARKET_STORE" in err
    assert cli.main(["use", "postgres"]) == 2
    assert "choose one of duckdb, ducklake" in capsys.readouterr().err
    assert (tmp_path / ".env").read_text() == "MARKET_STORE=ducklake\n"
