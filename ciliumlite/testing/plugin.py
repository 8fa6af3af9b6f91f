"""pytest plugin: namespaces, veth pairs, cgroups, pin directories, labs and datapath objects that
clean up, plus a leak check.

Nothing a killed test run left breaks the next one: at session start (as root) the plugin removes
the orphans of earlier runs (``ciliumlite lab destroy --orphans``: labs and test sessions whose
owner died, then the leftovers of datapaths in named namespaces whose process died, as
``ciliumlite cleanup --netns``). ``--ciliumlite-orphans=warn`` (or ``CILIUMLITE_TEST_ORPHANS=warn``)
only reports them, ``ignore`` skips the check. The fixtures record what they make in the
session's own record (:func:`ciliumlite.testing.resources.session_record`), so a run killed in the
middle leaves an orphan that the next run removes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from ciliumlite.bpf import features, fs
from ciliumlite.lab import owned
from ciliumlite.testing.datapath import DatapathFactory
from ciliumlite.testing.resources import (
    Snapshot,
    VethPair,
    close_session_record,
    leaks_after,
    session_record,
    sweep_orphans,
    unique_name,
)

if TYPE_CHECKING:
    from ciliumlite.lab import Lab

STRICT = os.environ.get("CILIUMLITE_TEST_STRICT") == "1"
ORPHANS_ENV = "CILIUMLITE_TEST_ORPHANS"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--ciliumlite-orphans=remove|warn|ignore``: what to do with earlier runs' orphans at session start."""
    parser.addoption("--ciliumlite-orphans", choices=("remove", "warn", "ignore"), default=None,
                     help="orphans of earlier crashed runs (labs, test sessions, datapaths): remove them "
                          f"(default), only warn, or ignore; also ${ORPHANS_ENV}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove (or report) what earlier, killed runs left, before any test can trip over it."""
    mode = session.config.getoption("--ciliumlite-orphans") or os.environ.get(ORPHANS_ENV, "remove")
    if mode == "ignore" or os.geteuid() != 0:
        return
    lines = sweep_orphans(remove=mode != "warn")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None:
            reporter.write_line(f"ciliumlite: {line}", yellow=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The session's record goes once its fixtures have removed everything."""
    close_session_record()


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
        "replaces_objects: the test swaps programs or links a longer-lived fixture owns (reload, "
        "re-attach); the leak check compares their counts, not their ids",
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
    leaks = leaks_after(before, replaced=node.get_closest_marker("replaces_objects") is not None)
    if leaks:
        pytest.fail("left behind: " + "; ".join(leaks), pytrace=False)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, uniquely named network namespace with ``lo`` up; removed afterwards (recorded in the
    session's record meanwhile)."""
    record = session_record()
    name = owned.make_netns(record, unique_name("ns"))
    try:
        yield name
    finally:
        owned.remove_netns(record, name)


@pytest.fixture
def veth_pair() -> Iterator[VethPair]:
    """Two namespaces joined by a veth pair (10.0.0.1/24 <-> 10.0.0.2/24); removed afterwards."""
    pair = VethPair.create(record=session_record())
    try:
        yield pair
    finally:
        pair.remove()


@pytest.fixture
def cgroup() -> Iterator[str]:
    """A child cgroup (never the root) for socket hooks; removed with the processes tests put in it."""
    record = session_record()
    path = owned.make_cgroup(record, unique_name("cg"))
    try:
        yield path
    finally:
        owned.remove_cgroup(record, path)


@pytest.fixture
def bpffs_dir() -> Iterator[str]:
    """A private directory on bpffs for pins; removed with everything in it."""
    record = session_record()
    name = unique_name("pins")
    entry = owned.claim(record, "pin_dirs", os.path.join(fs.BPFFS, name))
    path = fs.make_pin_dir(name)
    owned.settle(record, "pin_dirs", entry, path)
    try:
        yield path
    finally:
        fs.remove_pin_dir(path)
        record.drop("pin_dirs", entry)


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A :class:`~ciliumlite.lab.Lab` named after the test; closed afterwards, also when the test
    (or its setup of nodes and pods) failed half-way. Fails the test if the lab's record still
    lists something after closing (the lab could not remove it). Needs root.
    """
    from ciliumlite.lab import Lab

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:16].strip("-") or "lab"
    the_lab = Lab(name)
    try:
        yield the_lab
    finally:
        the_lab.close()
    if os.path.exists(the_lab.record.path):
        with open(the_lab.record.path) as f:
            pytest.fail(f"the lab left {the_lab.record.path}: {f.read()[:400]}", pytrace=False)


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
