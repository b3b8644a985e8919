"""The whole pipeline against real secured brokers, one per kind of security.

Why: the README says the kit works with a secured cluster when the
``KAFKA_SECURITY_PROTOCOL``/``KAFKA_SASL_*``/``KAFKA_SSL_*`` settings are set,
and the recorders of ``tests/test_security.py`` only show that the options
reach kafka-python. Here brokers started from the kit's own jars check the
logins and certificates for real: SASL_PLAINTEXT with PLAIN and with
SCRAM-SHA-512 (users formatted in with Kafka's StorageTool), SSL with a
trustme CA, mTLS (a client certificate whose key is password-protected, so
``KAFKA_SSL_PASSWORD`` is used) and SASL_SSL with SCRAM. Each run must land
exactly 150 ticks in DuckDB through the four notebooks, start no broker of its
own, and leave no secret in the executed notebooks, the JSON log, the
broker's logs or the command line of anything the kit started.

Measured on the 2-core machine (``-s`` prints them): each secured broker is up
5-9 s after its start (StorageTool format included; 13-33 s while another
suite's brokers shared the cores), and a pipeline run takes 12-22 s in every
mode, as with PLAINTEXT: the security costs a TLS handshake and a SASL round
trip per connection, not throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from marketstream.broker import running_broker_pids
from marketstream.pipeline import run_pipeline
from marketstream.settings import Settings
from support.processes import CommandLines
from support.secured import SECRETS, Certs, Secured, fresh

#: mode -> (broker fixture, client settings for that broker's super user)
MODES: dict[str, tuple[str, Callable[[Secured], Settings]]] = {
    "SASL_PLAINTEXT+PLAIN": ("sasl_broker", lambda b: b.settings.with_(sasl_mechanism="PLAIN")),
    "SASL_PLAINTEXT+SCRAM-SHA-512": ("sasl_broker", lambda b: b.settings),
    "SSL": ("ssl_broker", lambda b: b.settings),
    "mTLS": ("mtls_broker", lambda b: b.settings),
    "SASL_SSL+SCRAM-SHA-512": ("sasl_ssl_broker", lambda b: b.settings),
}


def assert_no_secret(texts: dict[str, str]) -> None:
    """No secret of the session in any of the named texts."""
    leaks = [name for name, text in texts.items() for secret in SECRETS if secret in text]
    assert not leaks, f"a secret appears in {sorted(set(leaks))}"


def _files(folder: Path, pattern: str) -> dict[str, str]:
    return {str(p): p.read_text(encoding="utf-8", errors="replace") for p in folder.glob(pattern)}


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, float]]:
    """Pipeline wall times by mode, printed at the end of the module (run with -s)."""
    found: dict[str, float] = {}
    yield found
    print("\npipeline wall time per secured mode:")
    for mode, seconds in found.items():
        print(f"  {mode:30s} {seconds:5.1f} s")


@pytest.mark.parametrize("mode", MODES)
def test_pipeline_end_to_end(
    mode: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    certs: Certs,
    timings: dict[str, float],
) -> None:
    fixture, client = MODES[mode]
    secured: Secured = request.getfixturevalue(fixture)
    settings = fresh(client(secured), tmp_path).with_(ticks_per_symbol=50, seed=7)
    assert len(settings.symbols) == 3
    with CommandLines() as seen:
        started = time.perf_counter()
        summary = run_pipeline(settings, progress=False)
        timings[mode] = time.perf_counter() - started
    print(f"\n{mode}: broker up in {secured.start_s:.1f} s, pipeline {timings[mode]:.1f} s")
    assert summary.rows == 150
    assert summary.broker_started is False  # it used the secured broker, started none
    assert len(summary.outputs) == 4
    assert seen.seen, "no child process was seen (the kernels should have been)"
    assert_no_secret(
        {
            "command lines": "\n".join(seen.seen),
            "summary": summary.describe(),
            "JSON log": settings.log_path.read_text(encoding="utf-8"),
            **_files(settings.output_dir, "*.ipynb"),
            **_files(settings.output_dir, "kernels.log"),
        }
    )
    assert (settings.output_dir / "kernels.log").is_file()  # the kernels' stderr went there


@pytest.mark.parametrize("fixture", ["sasl_broker", "ssl_broker", "mtls_broker", "sasl_ssl_broker"])
def test_broker_keeps_its_secrets(fixture: str, request: pytest.FixtureRequest) -> None:
    """The JVM's command line and Kafka's own logs hold no password; the files that must
    hold them (server.properties, the keystore) are readable by their owner only."""
    secured: Secured = request.getfixturevalue(fixture)
    [pid] = running_broker_pids(secured.run_dir)
    assert_no_secret(
        {
            "JVM command line": " ".join(psutil.Process(pid).cmdline()),
            "repr of the listener security": repr(secured.security),
            "repr of the settings": repr(secured.settings),
            **_files(secured.run_dir, "server.log*"),
            **_files(secured.run_dir, "broker.out"),
        }
    )
    assert not (secured.run_dir / ".format.args").exists()
    for name in ("server.properties", "client-listener.keystore.pem"):
        path = secured.run_dir / name
        if path.exists():
            assert path.stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    if secured.security.users:
        text = (secured.run_dir / "server.properties").read_text(encoding="utf-8")
        assert "sasl.jaas.config" in text
