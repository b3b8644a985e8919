"""Separate hosts on this machine: network namespaces on a private /24 of this test's own.

Each host is a network namespace (``ip netns``) joined to one bridge by a veth pair;
the test process, in the machine's own namespace, reaches every host through the
bridge, and the hosts share nothing but those addresses (their processes see only
their own interface and loopback). Needs root (CI runs as root). Everything is
removed when the test ends, passed or failed: the hosts' processes are killed, then
the namespaces and the bridge deleted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

#: A private /24 of this test's own (RFC 1918), unlikely to be routed on any host.
SUBNET = "10.213.47"
#: The bridge's address, in the machine's own namespace: where the test stands.
BRIDGE_IP = f"{SUBNET}.254"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2 (CI runs as root)",
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Host:
    """One namespace: its name and address."""

    namespace: str
    address: str

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
    ) -> subprocess.Popen[bytes]:
        """A process on this host (its output in ``log``)."""
        with log.open("ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *argv],
                env=dict(env),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def run(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> str:
        """Run a command on this host to its end; its output (a failure raises with it)."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.namespace, *argv],
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def pids(self) -> list[int]:
        """Every process running on this host (in its namespace)."""
        done = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True, timeout=30
        )
        return [int(p) for p in done.stdout.split()]

    def kill_all(self) -> list[int]:
        """SIGKILL every process of this host, as pulling its plug would; the pids."""
        pids = self.pids()
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        psutil.wait_procs([p for p in map(_process, pids) if p is not None], timeout=30)
        return pids


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


@pytest.fixture
def hosts() -> Iterator[dict[str, Host]]:
    """Three hosts: ``services`` (.1), ``worker1`` (.2), ``worker2`` (.3)."""
    tag = f"ms{os.getpid() % 100000}"
    bridge = f"{tag}br"
    made: list[Host] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{BRIDGE_IP}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for number, name in enumerate(("services", "worker1", "worker2"), start=1):
            host = Host(f"{tag}{name[0]}{number}", f"{SUBNET}.{number}")
            outside, inside = f"{host.namespace}h", f"{host.namespace}n"
            _ip("netns", "add", host.namespace)
            made.append(host)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", outside, "master", bridge, "up")
            _ip("link", "set", inside, "netns", host.namespace)
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", inside)
            _ip("-n", host.namespace, "link", "set", inside, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        yield {"services": made[0], "worker1": made[1], "worker2": made[2]}
    finally:
        for host in made:
            host.kill_all()
            with suppress(subprocess.CalledProcessError):
                _ip("netns", "del", host.namespace)
        with suppress(subprocess.CalledProcessError):
            _ip("link", "del", bridge)
