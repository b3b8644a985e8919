"""The one server lifecycle (marketstream.servers) on real processes: small Python
programs stand in for a server, so each rule is seen working, not mocked."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from marketstream.processes import free_port, port_open
from marketstream.servers import (
    ServerSpec,
    alive,
    claim_address,
    log_size,
    log_tail,
    running_pid,
    start_server,
    stop_pid,
    stop_server,
    wait_ready,
)
from support import fakes


class Refused(RuntimeError):
    """The error a spec names: the server's own concern's."""


@pytest.fixture
def spec(tmp_path: Path) -> Iterator[ServerSpec]:
    made = ServerSpec("the test server", tmp_path / "run", f"--marker={tmp_path}", Refused)
    yield made
    stop_server(made)  # whatever a failing test left


def _program(source: str, spec: ServerSpec) -> list[str]:
    return [sys.executable, "-c", source, spec.marker]


def test_claim_address_gives_a_free_port_and_refuses_elsewhere_or_taken(spec) -> None:
    assert claim_address("127.0.0.1", None, spec) > 0
    with pytest.raises(Refused, match="not an address of this machine"):
        claim_address("192.0.2.1", None, spec)  # TEST-NET-1: never this machine's
    with fakes.listening_port() as taken, pytest.raises(Refused, match=f"port {taken} .*taken"):
        claim_address("127.0.0.1", taken, spec)


def test_a_server_starts_is_found_by_its_marker_and_stops(spec) -> None:
    port = free_port()
    source = (
        "import http.server, sys; http.server.HTTPServer(('127.0.0.1', int(sys.argv[2])), "
        "http.server.BaseHTTPRequestHandler).serve_forever()"
    )
    child = start_server(spec, [*_program(source, spec), str(port)], {})
    wait_ready(spec, child.proc.pid, lambda: port_open("127.0.0.1", port), 30)
    assert running_pid(spec) == child.proc.pid
    spec.pid_path.unlink()  # a lost pid file: found by its marker, and written again
    assert running_pid(spec) == child.proc.pid
    assert spec.pid_path.read_text().strip() == str(child.proc.pid)
    assert stop_server(spec)
    assert child.proc.poll() is not None  # reaped: no zombie
    assert running_pid(spec) is None and not spec.pid_path.exists()
    assert not stop_server(spec)


def test_a_server_that_exits_during_start_up_is_named_with_its_last_words(spec) -> None:
    since = log_size(spec.log_path)
    child = start_server(
        spec, _program("import sys; print('bad setting: x', flush=True); sys.exit(3)", spec), {}
    )
    with pytest.raises(Refused, match=r"exited with code 3 during start-up: bad setting: x"):
        wait_ready(spec, child.proc.pid, lambda: False, 30, since=since)
    assert not spec.pid_path.exists()


def test_a_server_that_never_answers_is_stopped_and_its_log_quoted(spec) -> None:
    source = "import time; print('still loading', flush=True); time.sleep(120)"
    child = start_server(spec, _program(source, spec), {})
    with pytest.raises(Refused, match=r"did not answer within 0\.5 s and was stopped"):
        wait_ready(spec, child.proc.pid, lambda: False, 0.5)
    assert child.proc.poll() is not None


def test_a_server_ignoring_its_stop_signal_is_killed_after_the_grace(tmp_path: Path) -> None:
    spec = ServerSpec("stubborn", tmp_path / "run", f"--marker={tmp_path}", Refused, grace_s=0.5)
    source = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(120)"
    )
    child = start_server(spec, _program(source, spec), {})
    wait_ready(spec, child.proc.pid, lambda: "ready" in log_tail(spec.log_path), 30)
    stop_pid(child.proc.pid, spec)
    assert child.proc.returncode == -signal.SIGKILL
    assert not alive(child.proc.pid) or not psutil.pid_exists(child.proc.pid)


def test_a_command_without_its_marker_is_refused(spec) -> None:
    with pytest.raises(ValueError, match="lacks its marker"):
        start_server(spec, [sys.executable, "-c", "pass"], {})
