"""Every way a secured connection fails, as a user meets it: one line from the real CLI.

Why: before, a wrong password, an untrusted certificate and a PLAINTEXT client
on a TLS port all ended, after kafka-python's 30-s bootstrap timeout, in the
same "no Kafka broker answers" (or worse, "port in use by another program"),
and the pipeline's broker rule could not tell them apart. Here each failure is
produced for real, against the secured brokers of ``conftest.py``, by
``marketstream produce``, ``consume`` and ``pipeline`` run as child processes
with the settings in their environment (:func:`marketstream.processes.child_env`),
and each must end with exit code 2, exactly one line on stderr naming the
cause and the fix, no traceback, no password, and no broker started.

Measured on the 2-core machine (``-s`` prints a table): a refused port or an
unknown host is reported 0.6-1.5 s after the command starts (Python and its
imports are most of it); a wrong password, an unknown mechanism, an untrusted
or misnamed certificate, a missing client certificate and a protocol mismatch
2.6-4.4 s after for ``produce`` and up to 7.6 s for ``consume``/``pipeline``
under load (the probe client's 2-s wait, then a 30-400 ms step-by-step check);
an ACL refusal 0.7-2.3 s after, as soon as the broker refuses the request
(7-10 s for ``pipeline``, whose first notebook runs before the refused one).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from marketstream.broker import default_run_dir, running_broker_pids
from marketstream.processes import child_env, free_port
from marketstream.produce import ensure_topic
from marketstream.settings import PROJECT_ROOT, Settings
from marketstream.ticks import generate_ticks, write_csv
from support.secured import SECRETS, USERS, Certs, Secured, fresh

VERBS = ("produce", "consume", "pipeline")
#: A wrong password, different in every session (it must not be echoed either).
WRONG = f"wrong-{secrets.token_urlsafe(9)}"


@dataclass(frozen=True)
class Failure:
    """How to get it and what the line must say.

    ``broker`` is the fixture of the broker to fail against (``kafka``: the
    session's PLAINTEXT one; None: none at all), ``settings`` turns that
    broker's working client settings (and the certificates) into failing ones.
    """

    broker: str | None
    settings: Callable[[Settings, Certs], Settings]
    says: tuple[str, ...]


def _no_security(s: Settings) -> Settings:
    return s.with_(
        security_protocol="PLAINTEXT",
        sasl_mechanism="",
        sasl_username="",
        sasl_password="",
        ssl_cafile="",
        ssl_certfile="",
        ssl_keyfile="",
        ssl_password="",
    )


def _as_localhost(s: Settings) -> Settings:
    return s.with_(bootstrap_servers=f"localhost:{s.bootstrap_host_port[1]}")


FAILURES: dict[str, Failure] = {
    "wrong password, PLAIN": Failure(
        "sasl_broker",
        lambda s, c: s.with_(sasl_mechanism="PLAIN", sasl_password=WRONG),
        ("authentication failed at 127.0.0.1:", "user 'alice' with PLAIN", "KAFKA_SASL_PASSWORD"),
    ),
    "wrong password, SCRAM-SHA-512": Failure(
        "sasl_broker",
        lambda s, c: s.with_(sasl_password=WRONG),
        ("authentication failed at 127.0.0.1:", "user 'alice' with SCRAM-SHA-512"),
    ),
    "wrong password, SASL_SSL SCRAM-SHA-512": Failure(
        "sasl_ssl_broker",
        lambda s, c: s.with_(sasl_password=WRONG),
        ("authentication failed at 127.0.0.1:", "user 'alice' with SCRAM-SHA-512"),
    ),
    "mechanism not enabled": Failure(
        "sasl_broker",
        lambda s, c: s.with_(sasl_mechanism="SCRAM-SHA-256"),
        ("does not enable SASL mechanism SCRAM-SHA-256", "it offers PLAIN, SCRAM-SHA-512"),
    ),
    "no CA set": Failure(
        "ssl_broker",
        lambda s, c: s.with_(ssl_cafile=""),
        ("is not signed by a CA this machine trusts", "set KAFKA_SSL_CAFILE"),
    ),
    "wrong CA": Failure(
        "ssl_broker",
        lambda s, c: s.with_(ssl_cafile=str(c.other_ca)),
        ("is not signed by the CA in KAFKA_SSL_CAFILE=", "other-ca.pem"),
    ),
    "host name mismatch": Failure(
        "ssl_broker",
        lambda s, c: _as_localhost(s),
        ("not valid for the name localhost", "issued for 127.0.0.1", "KAFKA_SSL_CHECK_HOSTNAME"),
    ),
    "client certificate required, none set": Failure(
        "mtls_broker",
        lambda s, c: s.with_(ssl_certfile="", ssl_keyfile="", ssl_password=""),
        ("requires a client certificate (mTLS) and none is set", "KAFKA_SSL_CERTFILE"),
    ),
    "client key password wrong": Failure(
        "mtls_broker",
        lambda s, c: s.with_(ssl_password=WRONG),
        ("cannot be loaded", "check KAFKA_SSL_PASSWORD"),
    ),
    "mTLS client, wrong CA (key password set)": Failure(
        "mtls_broker",
        lambda s, c: s.with_(ssl_cafile=str(c.other_ca)),
        ("is not signed by the CA in KAFKA_SSL_CAFILE=",),
    ),
    "unknown host": Failure(
        None,
        lambda s, c: s.with_(bootstrap_servers="no-such-broker.invalid:9093"),
        ("the host no-such-broker.invalid does not resolve", "KAFKA_BOOTSTRAP_SERVERS"),
    ),
    "nothing listening": Failure(
        None,
        lambda s, c: s.with_(bootstrap_servers=f"127.0.0.1:{free_port()}"),
        ("nothing listens at 127.0.0.1:", "connection refused"),
    ),
    "PLAINTEXT client, SSL listener": Failure(
        "ssl_broker",
        lambda s, c: _no_security(s),
        ("speaks TLS but KAFKA_SECURITY_PROTOCOL=PLAINTEXT", "set KAFKA_SECURITY_PROTOCOL=SSL"),
    ),
    "PLAINTEXT client, SASL listener": Failure(
        "sasl_broker",
        lambda s, c: _no_security(s),
        ("requires SASL authentication (PLAIN, SCRAM-SHA-512)", "SASL_PLAINTEXT"),
    ),
    "SSL client, PLAINTEXT listener": Failure(
        "kafka",
        lambda s, c: s.with_(security_protocol="SSL", ssl_cafile=str(c.ca)),
        ("does not speak TLS (it is a PLAINTEXT listener)", "KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ),
    "SSL client, SASL_PLAINTEXT listener": Failure(
        "sasl_broker",
        lambda s, c: _no_security(s).with_(security_protocol="SSL", ssl_cafile=str(c.ca)),
        ("does not speak TLS (it is a SASL_PLAINTEXT listener)",),
    ),
}

#: Who is refused what, per verb: bob has no ACL at all, carol may describe topics and
#: use groups but neither write nor read (the topic exists, made by alice).
REFUSALS: dict[tuple[str, str], tuple[str, ...]] = {
    ("bob", "produce"): ("user bob is not allowed to create topic {topic}", "CREATE on topic"),
    ("bob", "consume"): ("user bob is not allowed to read topic {topic}", "READ and"),
    ("bob", "pipeline"): ("notebook 02_produce failed", "user bob is not allowed to create"),
    ("carol", "produce"): ("user carol is not allowed to write to topic {topic}", "WRITE"),
    ("carol", "consume"): ("user carol is not allowed to read topic {topic}", "READ and"),
    ("carol", "pipeline"): ("notebook 02_produce failed", "user carol is not allowed to write"),
}


@dataclass
class Run:
    """One CLI run: its exit code, output and wall time."""

    code: int
    out: str
    err: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        """The non-empty lines on stderr."""
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(verb: str, settings: Settings, timeout_s: float = 180) -> Run:
    """``marketstream <verb> -q`` in a child process with the settings in its environment."""
    if verb == "produce":
        write_csv(generate_ticks(settings.symbols, 5, seed=1), settings.csv_path)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "marketstream.cli", verb, "-q"],
        env=child_env(settings),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[tuple[str, str], tuple[float, str]]]:
    """(failure, verb) -> (seconds, the line); printed at the end of the module (with -s)."""
    found: dict[tuple[str, str], tuple[float, str]] = {}
    yield found
    print("\nfailure -> seconds from start to the one line (produce / consume / pipeline):")
    for name in dict.fromkeys(n for n, _ in found):
        times = " / ".join(
            f"{found[name, v][0]:4.1f}" if (name, v) in found else "  - " for v in VERBS
        )
        print(f"  {name:42s} {times} s")
    print("\nthe lines (consume's and pipeline's where they differ from produce's):")
    for (name, verb), (_, line) in found.items():
        first = found.get((name, "produce"), (0.0, ""))[1]
        if verb == "produce" or line != first:
            print(f"  [{name}, {verb}] {line}")


def check_one_line(run: Run, settings: Settings, says: tuple[str, ...]) -> str:
    """Exit 2, one line on stderr that says all of ``says``, no traceback, no secret."""
    output = run.out + run.err
    assert "Traceback" not in output, output
    for secret in (*SECRETS, WRONG):
        assert secret not in output, "a password reached the output"
    assert run.code == 2, output
    assert len(run.lines) == 1, run.err
    [line] = run.lines
    assert line.startswith("marketstream: error: "), line
    for part in says:
        assert part.format(topic=settings.topic, group=settings.consumer_group) in line, line
    return line.removeprefix("marketstream: error: ")


def assert_nothing_started(settings: Settings) -> None:
    """The kit started no broker of its own for these settings."""
    assert running_broker_pids(default_run_dir(settings)) == []


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("name", FAILURES)
def test_connection_failure_is_one_line(
    name: str,
    verb: str,
    request: pytest.FixtureRequest,
    certs: Certs,
    tmp_path: Path,
    timings: dict[tuple[str, str], tuple[float, str]],
) -> None:
    failure = FAILURES[name]
    if failure.broker == "kafka":  # the session's PLAINTEXT broker (tests/conftest.py)
        working: Settings = request.getfixturevalue("kafka")
    elif failure.broker is not None:
        working = request.getfixturevalue(failure.broker).settings
    else:  # no broker at all: SASL settings, so the kit must not start one either
        working = Settings.from_env().with_(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="alice",
            sasl_password=USERS["alice"],
        )
    settings = fresh(failure.settings(working, certs), tmp_path)
    run = run_cli(verb, settings)
    line = check_one_line(run, settings, failure.says)
    timings[name, verb] = (run.seconds, line)
    assert_nothing_started(settings)


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("user", ["bob", "carol"])
def test_acl_refusal_names_user_and_topic(
    user: str,
    verb: str,
    sasl_broker: Secured,
    tmp_path: Path,
    timings: dict[tuple[str, str], tuple[float, str]],
) -> None:
    """The StandardAuthorizer refuses: the line names the user, the topic (or group) and
    the ACL to ask the cluster admin for."""
    admin_side = fresh(sasl_broker.settings, tmp_path)
    if user == "carol":  # the topic exists; carol may see it, not use it
        assert ensure_topic(admin_side)
    settings = admin_side.with_(sasl_username=user, sasl_password=USERS[user])
    run = run_cli(verb, settings)
    line = check_one_line(run, settings, REFUSALS[user, verb])
    assert "ask the cluster admin for" in line
    timings[f"ACL refusal ({user})", verb] = (run.seconds, line)
