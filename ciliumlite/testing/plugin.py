"""pytest plugin: namespaces, veth pairs, cgroups, pin directories and datapath objects that clean
up, plus a leak check."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ciliumlite.bpf import features, fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.testing.datapath import DatapathFactory
from ciliumlite.testing.resources import Snapshot, VethPair, leaks_after, unique_name

STRICT = os.environ.get("CILIUMLITE_TEST_STRICT") == "1"


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers."""
    for line in (
        "unit: no privileges needed",
        "bpf: loads real programs (root)",
        "integration: network namespaces and real traffic (root)",
        "slow: takes more than a few seconds",
        "requires_root: skipped unless running as root",
        "requires_feature(name): skipped unless the kernel has the feature (see ciliumlite.bpf.features)",
        "no_leak_check: do not run the leak check after this test",
    ):
        config.addinivalue_line("markers", line)


def _skip_or_fail(reason: str) -> None:
    if STRICT:
        pytest.fail(f"{reason} (CILIUMLITE_TEST_STRICT=1 turns this skip into a failure)")
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply requires_root / requires_feature, and require root for bpf and integration tests."""
    needs_root = any(item.get_closest_marker(n) for n in ("requires_root", "bpf", "integration"))
    if needs_root and os.geteuid() != 0:
        _skip_or_fail("needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")
    for mark in item.iter_markers(name="requires_feature"):
        for name in mark.args:
            if not features.PROBES[name]():
                _skip_or_fail(f"kernel lacks {name}")


@pytest.fixture(autouse=True)
def leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a bpf/integration test that leaves a namespace, pin, cgroup, program, link, child or fd."""
    node = request.node
    active = (any(node.get_closest_marker(n) for n in ("bpf", "integration"))
              and node.get_closest_marker("no_leak_check") is None and os.geteuid() == 0)
    if not active:
        yield
        return
    before = Snapshot.take()
    yield
    leaks = leaks_after(before)
    if leaks:
        pytest.fail("left behind: " + "; ".join(leaks), pytrace=False)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, uniquely named network namespace with ``lo`` up; removed afterwards."""
    name = nsmod.create(unique_name("ns"))
    try:
        yield name
    finally:
        nsmod.remove(name)


@pytest.fixture
def veth_pair() -> Iterator[VethPair]:
    """Two namespaces joined by a veth pair (10.0.0.1/24 <-> 10.0.0.2/24); removed afterwards."""
    pair = VethPair.create()
    try:
        yield pair
    finally:
        pair.remove()


@pytest.fixture
def cgroup() -> Iterator[str]:
    """A child cgroup (never the root) for socket hooks; removed with the processes tests put in it."""
    path = fs.make_cgroup(unique_name("cg"))
    try:
        yield path
    finally:
        fs.remove_cgroup(path, kill_pids=fs.cgroup_pids(path))


@pytest.fixture
def bpffs_dir() -> Iterator[str]:
    """A private directory on bpffs for pins; removed with everything in it."""
    path = fs.make_pin_dir(unique_name("pins"))
    try:
        yield path
    finally:
        fs.remove_pin_dir(path)


@pytest.fixture
def datapath_objects(netns: str, bpffs_dir: str) -> Iterator[DatapathFactory]:
    """Loads a node's datapath objects for ``BPF_PROG_TEST_RUN`` (:mod:`ciliumlite.testing.datapath`).

    Scope: function. Built on ``netns`` (programs run there; make the node's devices with
    :meth:`~DatapathFactory.veth` / :meth:`~DatapathFactory.ip` before loading, since their
    ifindexes are ``.rodata``) and ``bpffs_dir`` (every object pins its maps there, so objects
    loaded in one test share them). Yields a :class:`~ciliumlite.testing.datapath.DatapathFactory`:
    ``datapath_objects(DatapathConfig(...), ("lxc", "host"), native_ifindex=...)`` returns a loaded
    :class:`~ciliumlite.testing.datapath.DatapathObjects`. Each call raises what loading raises
    (``ValidationError``, ``LayoutError``, ``NotSupportedError``, ``VerifierError``, ``BpfError``).
    Teardown closes every object, map and ring it made, newest first, also when the test failed;
    then ``bpffs_dir`` and ``netns`` remove the pins and the namespace. Needs root.
    """
    factory = DatapathFactory(netns, bpffs_dir)
    try:
        yield factory
    finally:
        factory.close()
from ciliumlite.testing.etcd import etcd_server, etcd_server_module  # noqa: E402, F401  (etcd fixtures)
