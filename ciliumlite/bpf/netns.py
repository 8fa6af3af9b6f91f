"""Network namespaces as a parameter: resolve ``netns=`` and enter one for the calling thread.

Some kernel interfaces take an ifindex that is looked up in the *calling thread's* network namespace
(bpf link_create for tcx and XDP). ``entered(netns)`` switches only the current thread and always
switches back, so one process can drive many namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable, Iterator
from typing import Any

from ciliumlite.bpf.errors import BpfError, ValidationError
from ciliumlite.bpf.offloop import off_event_loop

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000

#: A namespace: None (the caller's), a name under /var/run/netns, a path, or an open fd.
NetnsRef = str | int | None

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(netns: NetnsRef) -> str | None:
    """The filesystem path of a namespace reference (None for the caller's namespace or an fd)."""
    if netns is None or isinstance(netns, int):
        return None
    if "/" in netns:
        return netns
    if not netns:
        raise ValidationError("empty network namespace name")
    return os.path.join(NETNS_RUN_DIR, netns)


def netns_name(netns: NetnsRef) -> str | None:
    """The name pyroute2 expects for ``IPRoute(netns=...)``; None for the current namespace."""
    if netns is None:
        return None
    if isinstance(netns, int):
        return f"/proc/self/fd/{netns}"
    return netns


def iproute(netns: NetnsRef) -> Any:
    """A pyroute2 ``IPRoute`` socket in ``netns`` (the caller closes it).

    pyroute2 *creates* a named namespace that does not exist; a datapath closing after its
    namespace was removed (or a reader racing a removal) would bring an empty one back. So a
    missing namespace raises :class:`FileNotFoundError` here instead.
    """
    from pyroute2 import IPRoute

    path = netns_path(netns)
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "network namespace does not exist", path)
    name = netns_name(netns)
    return IPRoute(netns=name) if name else IPRoute()


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise BpfError("setns", ctypes.get_errno(), target=what)


@contextlib.contextmanager
def entered(netns: NetnsRef) -> Iterator[None]:
    """Run the body with the calling thread inside ``netns`` (no-op for None)."""
    if netns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if isinstance(netns, int):
            _setns(netns, f"netns fd {netns}")
        else:
            path = netns_path(netns)
            assert path is not None
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError as exc:
                raise ValidationError(f"network namespace {netns!r} does not exist ({path})") from exc
            try:
                _setns(fd, path)
            finally:
                os.close(fd)
        try:
            yield
        finally:
            _setns(own, "the original network namespace")
    finally:
        os.close(own)


def netns_inode(netns: NetnsRef) -> int:
    """The inode that identifies a namespace (to compare two references)."""
    if netns is None:
        return os.stat("/proc/thread-self/ns/net").st_ino
    if isinstance(netns, int):
        return os.fstat(netns).st_ino
    path = netns_path(netns)
    assert path is not None
    return os.stat(path).st_ino


@off_event_loop
def create(name: str) -> str:
    """Create a named network namespace (bind-mounted under /var/run/netns) with ``lo`` up."""
    from pyroute2 import IPRoute
    from pyroute2 import netns as _pr_netns

    if os.path.exists(os.path.join(NETNS_RUN_DIR, name)):
        raise ValidationError(f"network namespace {name!r} exists already")
    _pr_netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    except BaseException:
        _pr_netns.remove(name)
        raise
    return name


@off_event_loop
def remove(name: str) -> None:
    """Remove a named network namespace (no error if it is gone already)."""
    from pyroute2 import netns as _pr_netns

    if os.path.exists(os.path.join(NETNS_RUN_DIR, name)):
        _pr_netns.remove(name)


def list_all() -> list[str]:
    """Names of the namespaces under /var/run/netns."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def preexec(netns: NetnsRef, cgroup: str | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that joins ``cgroup`` (first: /sys/fs/cgroup is hidden in other netns views)
    and then enters ``netns``; /sys stays the host's, unlike ``ip netns exec``."""
    path = netns_path(netns)

    def _enter() -> None:
        if cgroup:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        if path:
            fd = os.open(path, os.O_RDONLY)
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                os._exit(127)
            os.close(fd)
        elif isinstance(netns, int):
            _libc.setns(netns, CLONE_NEWNET)

    return _enter
