"""A real etcd for tests: :class:`EtcdServer` (a child process on free loopback ports with its own
data directory, stopped by pid) and its pytest fixtures.

:class:`EtcdServer` lives in :mod:`ciliumlite.cluster.etcd_server` (the lab runs it too, without
pytest) and is re-exported here. It runs Debian's ``/usr/bin/etcd`` (``apt-get install
etcd-server``) on 127.0.0.1, or on an address inside a network namespace; the child dies with the
test process (``PR_SET_PDEATHSIG``), and the next ``EtcdServer`` removes the data dirs such runs left.
The pytest fixtures ``etcd_server`` (a fresh etcd per test) and ``etcd_server_module`` (one per
test module) are registered by :mod:`ciliumlite.testing.plugin`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from ciliumlite.cluster.etcd_server import ETCD_BINARY, EtcdServer

__all__ = ["EtcdServer", "etcd_server", "etcd_server_module"]


def _server() -> Iterator[EtcdServer]:
    if shutil.which(ETCD_BINARY) is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server etcd-client)")
    server = EtcdServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A fresh etcd for one test (:class:`EtcdServer` on 127.0.0.1, free ports, its own data dir).

    Scope: function. Stopped by pid and its data dir removed at teardown, also when the test
    failed; it dies with the test process if that crashes. Skips the test when etcd is not
    installed. No root needed.
    """
    yield from _server()


@pytest.fixture(scope="module")
def etcd_server_module() -> Iterator[EtcdServer]:
    """One etcd shared by the tests of a module (see ``etcd_server``); tests must not kill or
    pause it, and should use their own ``cluster=`` names to stay apart."""
    yield from _server()
