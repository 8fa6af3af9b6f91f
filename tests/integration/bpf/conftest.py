"""Helpers for the bpf SDK's integration tests: real traffic across the ``veth_pair`` fixture.

Traffic goes from ns_b (10.0.0.2) to ns_a (10.0.0.1). Sockets are created in-process inside
``netns.entered(...)``: a socket keeps the namespace it was created in.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ciliumlite.bpf import BpfObject
from ciliumlite.bpf.netns import entered
from ciliumlite.testing import VethPair

#: Datagrams per probe.
N = 5
DROP_PORT = 5000
OTHER_PORT = 5001


class Traffic:
    """UDP probes from ns_b to ns_a over the veth pair."""

    N = N
    DROP_PORT = DROP_PORT
    OTHER_PORT = OTHER_PORT

    def __init__(self, pair: VethPair) -> None:
        self.pair = pair

    def udp(self, port: int, n: int = N, timeout: float = 0.3) -> int:
        """Send ``n`` datagrams from ns_b to ip_a:port and return how many arrived within ``timeout``."""
        with entered(self.pair.ns_a):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with entered(self.pair.ns_b):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with rx, tx:
            rx.bind((self.pair.ip_a, port))
            rx.settimeout(timeout)
            for i in range(n):
                tx.sendto(b"probe %d" % i, (self.pair.ip_a, port))
            got = 0
            try:
                while got < n:
                    rx.recv(64)
                    got += 1
            except TimeoutError:
                pass
            return got


def ns_run(ns: str, *cmd: str) -> str:
    """Run a command inside a namespace and return its stdout (fails the test on a non-zero exit)."""
    res = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, f"{cmd}: {res.stderr}"
    return res.stdout


def qdiscs(ns: str, dev: str) -> str:
    """``tc qdisc show dev`` inside ``ns``."""
    return ns_run(ns, "tc", "qdisc", "show", "dev", dev)


def filters(ns: str, dev: str, direction: str) -> str:
    """``tc filter show dev <dev> <ingress|egress>`` inside ``ns``."""
    return ns_run(ns, "tc", "filter", "show", "dev", dev, direction).strip()


@pytest.fixture
def traffic(veth_pair: VethPair) -> Traffic:
    """UDP probes over the veth pair; checks that the path works before the test changes it."""
    t = Traffic(veth_pair)
    # A fresh veth drops packets until the kernel's link watcher activates its qdisc (up to ~1 s,
    # longer on a busy host): wait for the first datagram to get through, then check a full probe.
    deadline = time.monotonic() + 10
    while t.udp(DROP_PORT, n=1, timeout=0.1) != 1:
        assert time.monotonic() < deadline, "the veth pair never delivered UDP"
    assert t.udp(DROP_PORT) == N, "the veth pair does not deliver UDP before any program is attached"
    return t


@pytest.fixture
def load(test_objects: Path) -> Iterator[Callable[..., BpfObject]]:
    """``load("test_tc.o", drop_port=5000)``: a loaded object with config, closed after the test."""
    objs: list[BpfObject] = []

    def _load(name: str, **config: Any) -> BpfObject:
        obj = BpfObject.load_file(test_objects / name, config=config)
        objs.append(obj)
        return obj

    yield _load
    for obj in objs:
        obj.close()


@pytest.fixture
def ns_tools() -> Any:
    """Access to the module-level helpers (conftest modules are not importable by name)."""

    class Tools:
        run = staticmethod(ns_run)
        qdiscs = staticmethod(qdiscs)
        filters = staticmethod(filters)

    return Tools
