"""The host resources a test can leave behind, and how to make, record and snapshot them.

The fixtures record what they make in one ownership record per test session
(:func:`session_record`, named ``pytest-<run id>-<pid>``, prefix ``cl<run id>``), so that what a
killed run left is an orphan :func:`sweep_orphans` removes at the start of the next one.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from ciliumlite.bpf import fs, inventory
from ciliumlite.bpf import netns as nsmod
from ciliumlite.datapath import registry
from ciliumlite.datapath.config import RUN_BASE
from ciliumlite.lab import owned
from ciliumlite.lab.naming import RUN_ID, is_ours, unique_name
from ciliumlite.ownership.record import Record

__all__ = ["RUN_ID", "Snapshot", "VethPair", "close_session_record", "is_ours", "leaks_after", "session_record",
           "sweep_orphans", "unique_name"]

_session: Record | None = None
_session_lock = threading.Lock()


def session_record() -> Record:
    """This test session's ownership record, made on first use (prefix ``cl<run id>``: every name
    :func:`unique_name` gives). Raises ``OSError`` if the record directory cannot be written."""
    global _session
    with _session_lock:
        if _session is None or _session.path != _session_path():
            _session = Record(f"pytest-{RUN_ID}-{os.getpid()}", prefix=f"cl{RUN_ID}", kind="test-session")
        return _session


def _session_path() -> str:
    from ciliumlite.ownership.record import record_path

    return record_path(f"pytest-{RUN_ID}-{os.getpid()}")


def close_session_record() -> None:
    """Remove the session's record if it lists nothing any more (else it stays for the next run)."""
    global _session
    with _session_lock:
        if _session is not None:
            _session.close()
            _session = None


def sweep_orphans(*, remove: bool = True) -> list[str]:
    """What earlier, killed runs left: labs and test sessions whose owner died without keeping them,
    then datapaths in named namespaces whose process died (never the host's own namespace).

    With ``remove`` they are removed (as ``ciliumlite lab destroy --orphans`` and ``ciliumlite
    cleanup --netns``); otherwise only listed. Returns one line per orphan; never raises.
    """
    from ciliumlite.datapath import registry
    from ciliumlite.lab.destroy import destroy_selected, select
    from ciliumlite.ownership import sweep
    from ciliumlite.ownership.host import plan_cleanup

    lines: list[str] = []
    try:
        sel = select(orphans=True)
        for out in destroy_selected(sel, dry_run=not remove):
            verb = "removed" if remove else "found (not removed)"
            lines.append(f"orphan {out.name} of an earlier run: {verb} {len(out.removed)} things"
                         + (f"; failed: {'; '.join(out.failed)}" if out.failed else ""))
        namespaces = sorted({s["netns"] for _, s in registry.read_records()
                             if s is not None and isinstance(s.get("netns"), str)})
        for ns in namespaces:
            plans, _ = plan_cleanup(ns)
            for p in plans:
                done = sweep.execute(p, dry_run=not remove)
                lines.append(f"orphaned datapath {p.name} (netns {ns}): "
                             f"{'removed' if remove else 'found (not removed)'} {len(done.removed)} things")
    except Exception as exc:  # a broken leftover must not stop the test run: say so and go on
        lines.append(f"looking for orphans failed: {type(exc).__name__}: {exc}")
    return lines


@dataclass(frozen=True)
class VethPair:
    """Two namespaces joined by a veth pair, each end up with an address from 10.0.0.0/24."""

    ns_a: str
    ns_b: str
    dev_a: str = "veth-a"
    dev_b: str = "veth-b"
    ip_a: str = "10.0.0.1"
    ip_b: str = "10.0.0.2"
    record: Record | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(cls, prefix: str = "vp", *, record: Record | None = None) -> VethPair:
        """Make both namespaces and the pair; remove everything again if any step fails.

        With ``record`` both namespaces are recorded there while they exist. Raises as
        ``netns.create`` and pyroute2's ``NetlinkError``.
        """
        from pyroute2 import IPRoute

        pair = cls(unique_name(prefix + "a"), unique_name(prefix + "b"), record=record)
        pair._make(pair.ns_a)
        try:
            pair._make(pair.ns_b)
            with IPRoute(netns=pair.ns_a) as ipa:
                ipa.link("add", ifname=pair.dev_a, kind="veth", peer={"ifname": pair.dev_b, "net_ns_fd": pair.ns_b})
                ia = ipa.link_lookup(ifname=pair.dev_a)[0]
                ipa.addr("add", index=ia, address=pair.ip_a, prefixlen=24)
                ipa.link("set", index=ia, state="up")
            with IPRoute(netns=pair.ns_b) as ipb:
                ib = ipb.link_lookup(ifname=pair.dev_b)[0]
                ipb.addr("add", index=ib, address=pair.ip_b, prefixlen=24)
                ipb.link("set", index=ib, state="up")
            pair._wait_up()
        except BaseException:
            pair.remove()
            raise
        return pair

    def _wait_up(self, timeout: float = 5.0) -> None:
        # A veth carries traffic only once both ends are operationally UP (the qdisc is active).
        from pyroute2 import IPRoute

        deadline = time.monotonic() + timeout
        for ns, dev in ((self.ns_a, self.dev_a), (self.ns_b, self.dev_b)):
            with IPRoute(netns=ns) as ipr:
                idx = ipr.link_lookup(ifname=dev)[0]
                while ipr.get_links(idx)[0].get_attr("IFLA_OPERSTATE") != "UP" and time.monotonic() < deadline:
                    time.sleep(0.02)

    def _make(self, name: str) -> None:
        if self.record is not None:
            owned.make_netns(self.record, name)
        else:
            nsmod.create(name)

    def remove(self) -> None:
        """Delete both namespaces (the veth goes with them)."""
        for name in (self.ns_a, self.ns_b):
            if self.record is not None:
                owned.remove_netns(self.record, name)
            else:
                nsmod.remove(name)


def _bpffs_entries() -> set[str]:
    out: set[str] = set()
    for d, dirs, files in os.walk(fs.BPFFS):
        for n in dirs + files:
            p = os.path.join(d, n)
            if p.count("/") <= 6 and not p.startswith(("/sys/fs/bpf/ip", "/sys/fs/bpf/tc", "/sys/fs/bpf/xdp")):
                out.add(p)
    return {p for p in out if not p.endswith((".debug",))}


def _cgroups() -> set[str]:
    try:
        root = fs.cgroup2_root()
    except Exception:
        return set()
    return {os.path.join(d, n) for d, ns, _ in os.walk(root) for n in ns}


def _run_entries() -> set[str]:
    # Node run dirs (state, agent socket and endpoint table) and registry entries under /run/ciliumlite.
    out: set[str] = set()
    for d in (RUN_BASE, str(registry.run_dir())):
        if os.path.isdir(d):
            out |= {os.path.join(d, n) for n in os.listdir(d)}
    return out


def _children() -> set[int]:
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                    out.add(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


@dataclass
class Snapshot:
    """Namespaces, pins, cgroups, run dirs, BPF programs and links, child processes and fds at one moment."""

    netns: set[str] = field(default_factory=set)
    pins: set[str] = field(default_factory=set)
    cgroups: set[str] = field(default_factory=set)
    run: set[str] = field(default_factory=set)
    progs: set[int] = field(default_factory=set)
    links: set[int] = field(default_factory=set)
    children: set[int] = field(default_factory=set)
    fds: int = 0

    @classmethod
    def take(cls) -> Snapshot:
        """Read the current state of the host."""
        # Only names this process made count: other runs on the machine come and go.
        return cls({n for n in nsmod.list_all() if is_ours(n)}, {p for p in _bpffs_entries() if is_ours(p)},
                   {c for c in _cgroups() if is_ours(c)}, {r for r in _run_entries() if is_ours(r)},
                   inventory.prog_ids(),
                   inventory.link_ids(), _children(), len(os.listdir("/proc/self/fd")))

    def leaks_since(self, before: Snapshot, fd_slack: int = 0, *, replaced: bool = False) -> list[str]:
        """What exists now that did not exist in ``before``.

        Program and link ids are host-wide: with ``CILIUMLITE_TEST_SHARED_HOST=1`` (several suites
        running at once on one machine) they are not compared, since the other runs' come and go.
        ``replaced``: the test swaps programs or links that a longer-lived fixture owns (a reload,
        a re-attach), so new ids are expected; only *more* programs or links than before are a leak.
        """
        out = []
        shared = os.environ.get("CILIUMLITE_TEST_SHARED_HOST") == "1"
        kinds = ("netns", "pins", "cgroups", "run", "children") if shared else \
            ("netns", "pins", "cgroups", "run", "progs", "links", "children")
        for what in kinds:
            now, then = getattr(self, what), getattr(before, what)
            if replaced and what in ("progs", "links"):
                if len(now) > len(then):
                    out.append(f"{what}: {len(then)} -> {len(now)} (new: {sorted(now - then)[:10]})")
                continue
            new = now - then
            if new:
                out.append(f"{what}: {sorted(new)[:10]}")
        if self.fds > before.fds + fd_slack:
            out.append(f"fds: {before.fds} -> {self.fds}")
        return out


def leaks_after(before: Snapshot, *, settle_s: float = 3.0, fd_slack: int = 0, replaced: bool = False) -> list[str]:
    """Leaks compared with ``before`` (``replaced``: see :meth:`Snapshot.leaks_since`); waits a
    moment for the kernel's deferred frees of programs."""
    deadline = time.monotonic() + settle_s
    while True:
        leaks = Snapshot.take().leaks_since(before, fd_slack, replaced=replaced)
        if not leaks or time.monotonic() > deadline:
            return leaks
        time.sleep(0.1)
