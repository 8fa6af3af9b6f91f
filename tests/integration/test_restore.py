"""Restart, hot replacement and restore refusals on the real kernel, under counted traffic.

The topology and the clients are ``restore_topo.py``'s. Two VXLAN nodes (A and B, namespaces
joined by one veth ``ul0``), pods a1 (the traffic client) and a2 on A, b1 on B, echo servers in a2
and b1, and a ClusterIP service backed by b1 (on another port, see ``SVC_PORT``). Both modes of
attaching run: tcx links (``auto``) and clsact filters. Node A is built and owned by a child
process (``restore_child.py``); B by this process. The client keeps long-lived TCP connections to
a2 (same node) and b1 (across the overlay), opens new connections to both and to the ClusterIP in
a loop and sends numbered UDP datagrams to both; a second client in node B's own namespace keeps
long-lived and new connections to a NodePort on A (SNAT, Maglev), whose backend is b1 on B. Each
test counts broken connections, failed connects and lost datagrams and prints them; the bar is
0/0/0.

The module's topology is shared by its tests, in order: kill -9 of A's owner and restore in this
process; 20 reloads in a row; bad state refused with the datapath untouched; 200 detach/restore
cycles (and reloads) leaving no extra fds, links, pins or programs. A's datapath is removed at
the end (restored here if its owner died), and everything is removed also when a test fails.

The same pods, services and traffic run over native routing too (the ``native`` fixture): A and B
on a bridge in a third namespace (the fabric, whose own address is the NodePort client: an outside
host), ``load_balancer_mode="dsr"`` on both (A forwards the NodePort request to b1 with the DSR
option and B answers the client straight), and the nodes reach each other's pods either by static
routes (``static``) or by BGP (``bgp``: each node's datapath runs bird, A and B peer with each
other). There: kill -9 of A's owner and restore (a BGP node's bird adopted by its pidfile, its
routes kept), 20 reloads, then ``close(remove=True)`` of the restored node (its routes, and bird,
gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from restore_topo import (
    A2,
    B1,
    B_CIDR,
    SVC_PORT,
    Topo,
    Traffic,
    _bird_pid,
    _check,
    _need_bird,
    _probe,
    _routes_to,
    _service,
    _topology,
)

from ciliumlite.bpf import inventory
from ciliumlite.node import Datapath
from ciliumlite.node import state as state_mod
from ciliumlite.node.state import StateError
from ciliumlite.service import Backend

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]


@pytest.fixture(scope="module", params=["auto", "clsact"])
def topo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topo]:
    """The two nodes with tcx links (``auto`` on this kernel) or classic tc filters (``clsact``)."""
    with _topology("vxlan", request.param, tmp_path_factory.mktemp("restore")) as topo:
        yield topo


@pytest.fixture(scope="module", params=["static", "bgp"])
def native(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topo]:
    """The two nodes over native routing with DSR NodePort: static routes or BGP between them."""
    if request.param == "bgp":
        _need_bird()
    with _topology(request.param, "auto", tmp_path_factory.mktemp("restore")) as topo:
        yield topo


def _kernel_view(topo: Topo) -> tuple[set[int], set[int], list[str]]:
    """Node A as the kernel has it: its link ids, the ids of the programs it runs, its pins (only
    A's: other suites on this host load and attach theirs meanwhile)."""
    pins = sorted(str(p.relative_to(topo.cfg_a.pin_dir)) for p in Path(topo.cfg_a.pin_dir).rglob("*"))
    return _node_links(topo), _node_progs(topo), pins


def _node_links(topo: Topo) -> set[int]:
    from ciliumlite.bpf.link import FdLink

    links_dir = Path(topo.cfg_a.pin_dir, "links")
    out = set()
    for pin in links_dir.iterdir() if links_dir.is_dir() else []:
        with contextlib.closing(FdLink.open_pinned(str(pin))) as link:
            out.add(link.info.id)
    return out


def _node_progs(topo: Topo) -> set[int]:
    """The ids of the programs node A runs: behind its pinned links, or its tc filters."""
    from ciliumlite.bpf.link import FdLink

    out = set()
    links_dir = Path(topo.cfg_a.pin_dir, "links")
    for pin in links_dir.iterdir() if links_dir.is_dir() else []:
        with contextlib.closing(FdLink.open_pinned(str(pin))) as link:
            out.add(link.info.prog_id)
    devs = json.loads(subprocess.run(["ip", "-n", topo.ns_a, "-j", "link", "show"], capture_output=True, text=True,
                                     check=True, timeout=10).stdout)
    for dev in devs:
        for direction in ("ingress", "egress"):
            res = subprocess.run(["tc", "-n", topo.ns_a, "-j", "filter", "show", "dev", dev["ifname"], direction],
                                 capture_output=True, text=True, timeout=10)
            for f in json.loads(res.stdout or "[]") if res.returncode == 0 else []:
                prog = (f.get("options") or {}).get("prog") or {}
                if f.get("kind") == "bpf" and "id" in prog:
                    out.add(int(prog["id"]))
    return out


@contextlib.contextmanager
def adopted(topo: Topo) -> Iterator[Datapath]:
    """Node A owned by this process for one test, detached again at its end (it keeps running):
    the per-test leak check then sees no fd of it."""
    if topo.dp_a is None:
        topo.dp_a = Datapath.restore(topo.cfg_a, netns=topo.ns_a)
    try:
        yield topo.dp_a
    finally:
        topo.dp_a.detach()
        topo.dp_a = None


def test_kill9_then_restore_keeps_every_connection(topo: Topo) -> None:
    _kill9_then_restore(topo)


def _kill9_then_restore(topo: Topo) -> None:
    routes = _routes_to(topo.ns_a, B_CIDR)  # native: static or learnt over BGP; VXLAN: none
    bird = _bird_pid(topo) if topo.routes == "bgp" else None
    assert routes or topo.routes == "vxlan"
    assert bird is not None or topo.routes != "bgp"
    assert topo.routes != "bgp" or {r.get("protocol") for r in routes} == {"bird"}, routes  # learnt, not static
    traffic = Traffic(topo)
    time.sleep(1.5)
    assert topo.child is not None
    os.kill(topo.child.pid, signal.SIGKILL)  # our own child, by pid
    topo.child.wait(timeout=10)
    topo.child = None
    time.sleep(1.5)  # nobody owns A now: its pinned links keep forwarding (and its bird routing)
    started = time.monotonic()
    topo.dp_a = Datapath.restore(topo.cfg_a, netns=topo.ns_a)
    restore_s = time.monotonic() - started
    with adopted(topo) as dp:  # detached again at the end, also when a check fails
        time.sleep(1.5)
        counts = traffic.stop()
        print(f"\nrestore took {restore_s * 1000:.0f} ms ({topo.routes})")
        _check(f"kill -9 + restore ({topo.routes})", counts)
        _after_restore(topo, dp)
        assert _routes_to(topo.ns_a, B_CIDR) == routes  # the very routes: nothing re-written
        if bird is not None:
            # The bird the dead owner started, adopted by its pidfile: not a second one.
            assert (getattr(dp.routing, "adopted", None), _bird_pid(topo)) == (True, bird)
            assert dp.status()["routes"] == "bgp"


def _after_restore(topo: Topo, dp: Datapath) -> None:
    assert [e.name for e in dp.endpoints()] == ["a1", "a2"]
    assert [s.name for s in dp.services()] == ["echo", "np"] and list(dp.remote_nodes) == [topo.cfg_b.node_name]
    assert dp.lb_maps is not None and dp.lb_maps.revnat_ids()
    # The restored node goes on changing: a service update goes through the same allocations.
    dp.upsert_service(replace(_service(), backends=[Backend(B1, SVC_PORT), Backend(A2, SVC_PORT)]))
    dp.upsert_service(_service())
    _probe(topo)


# A reload replaces the node's programs by design (new program ids that outlive the test): the
# test checks its own leaks instead (the same links, the replaced programs freed).
@pytest.mark.no_leak_check
def test_twenty_reloads_under_traffic(topo: Topo) -> None:
    with adopted(topo) as dp:
        _twenty_reloads(topo, dp)


def _twenty_reloads(topo: Topo, dp: Datapath) -> None:
    links_before = {lk.point.kind for lk in dp.attachments()}
    traffic = Traffic(topo)
    started = time.monotonic()
    for i in range(20):
        dp.reload(replace(dp.config, monitor_trace=bool(i % 2)) if i >= 18 else None)
    took = time.monotonic() - started
    time.sleep(0.5)
    counts = traffic.stop()
    print(f"\n20 reloads took {took:.1f} s ({took / 20 * 1000:.0f} ms each)")
    _check(f"20 reloads ({topo.routes})", counts)
    assert {lk.point.kind for lk in dp.attachments()} == links_before
    assert dp.config.monitor_trace is True
    topo.cfg_a = dp.config  # what a restore must name from now on (or the node's name)
    with pytest.raises(StateError, match="monitor_trace") as exc:
        Datapath.restore(replace(dp.config, monitor_trace=False))
    assert exc.value.reason == "config"
    _probe(topo)


def _refused(topo: Topo, reason: str) -> StateError:
    before = _kernel_view(topo)
    with pytest.raises(StateError) as exc:
        Datapath.restore(topo.cfg_a, netns=topo.ns_a)
    assert exc.value.reason == reason, exc.value
    assert _kernel_view(topo) == before  # nothing detached, unpinned or loaded
    _probe(topo)
    return exc.value


def test_bad_state_is_refused_and_the_datapath_is_untouched(topo: Topo) -> None:
    with adopted(topo):  # writes the state of the running node, then lets it go
        pass
    path = Path(state_mod.state_path(topo.cfg_a))
    good = path.read_text()
    ep_path = Path(state_mod.item_path(topo.cfg_a, "endpoints", "1"))  # a1's file
    good_ep = ep_path.read_text()
    try:
        path.write_text(good[: len(good) // 2])
        print("\ntruncated:", _refused(topo, "corrupt"))
        path.write_text(good[:-1])  # only the closing brace is missing
        _refused(topo, "corrupt")
        path.write_text(json.dumps({**json.loads(good), "version": state_mod.STATE_VERSION + 1}))
        print("future version:", _refused(topo, "version"))
        path.write_text(good)
        # One endpoint's file cut short, or of a newer version: the whole restore is refused.
        ep_path.write_text(good_ep[: len(good_ep) // 2])
        print("truncated endpoint file:", _refused(topo, "corrupt"))
        ep_path.write_text(json.dumps({**json.loads(good_ep), "version": state_mod.STATE_VERSION + 1}))
        _refused(topo, "version")
        ep_path.write_text(good_ep)
        # Another node's pins: the state names B's pin directory (and B's config otherwise A's).
        st = json.loads(good)
        st["config"]["pin_root"] = topo.cfg_b.pin_dir
        st["pins"]["pin_dir"] = topo.cfg_b.pin_dir
        path.write_text(json.dumps(st))
        with pytest.raises(StateError) as exc:
            Datapath.restore(topo.cfg_a.node_name)
        assert exc.value.reason == "other-node", exc.value
        print("other node's pins:", exc.value)
        path.write_text(good)
        # A missing object: the state names a link pin (a tc filter's device) that does not exist.
        ep = json.loads(good_ep)
        if ep["value"]["link"]["kind"] == "fd":
            ep["value"]["link"]["pin"] += "-gone"
        else:
            ep["value"]["link"]["point"]["ifindex"] = 99999
        ep_path.write_text(json.dumps(ep))
        print("missing pin:", _refused(topo, "pins"))
        ep_path.write_text(good_ep)
        # The file of another node, and an endpoint file of another node.
        st = json.loads(good)
        st["node"] = topo.cfg_b.node_name
        path.write_text(json.dumps(st))
        _refused(topo, "other-node")
        path.write_text(good)
        ep_path.write_text(json.dumps({**json.loads(good_ep), "node": topo.cfg_b.node_name}))
        _refused(topo, "other-node")
    finally:
        path.write_text(good)
        ep_path.write_text(good_ep)
    for d in (path.parent, ep_path.parent):
        assert not any(p.name.startswith(".") for p in d.iterdir())  # no temp file left


def test_a_version_1_state_file_is_read_and_migrated(topo: Topo) -> None:
    # What ciliumlite wrote before the state directory: one file holding everything. A restore
    # reads it; the restored node's first save writes the item files, then the version-2 node file.
    with adopted(topo):
        pass
    st = state_mod.read(topo.cfg_a)
    v1 = {**{k: v for k, v in st.items() if k != "end"}, "version": 1, "end": True}
    services, endpoints = dict(st["services"]), list(st["endpoints"])
    state_mod.remove(topo.cfg_a)
    os.makedirs(state_mod.state_dir(topo.cfg_a))
    Path(state_mod.state_path(topo.cfg_a)).write_text(json.dumps(v1))
    with adopted(topo) as dp:
        assert [e.name for e in dp.endpoints()] == ["a1", "a2"] and [s.name for s in dp.services()] == ["echo", "np"]
        _probe(topo)
    again = state_mod.read(topo.cfg_a)
    assert again["version"] == 2 and again["services"] == services and again["endpoints"] == endpoints


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.no_leak_check  # its reloads replace programs; it checks fds, links, pins and programs itself
def test_restore_and_reload_cycles_leave_nothing(topo: Topo) -> None:
    topo.dp_a = dp = Datapath.restore(topo.cfg_a)
    before = (_fds(), *_kernel_view(topo))
    n_links = len(dp.attachments())
    # Adopting a clsact filter reads it over netlink in the node's namespace (pyroute2 forks a
    # helper for that): 20 cycles there keep the file's time small; tcx links are adopted by pin.
    cycles = 200 if topo.cfg_a.tc_mode == "auto" else 20
    traffic = Traffic(topo)
    t0 = time.monotonic()
    for _ in range(cycles):  # one cycle: the owner lets go, a new one adopts, then replaces every program
        dp.detach()
        topo.dp_a = dp = Datapath.restore(topo.cfg_a)
        dp.reload()
    counts = traffic.stop()
    _check(f"{cycles} restore + reload cycles ({topo.cfg_a.tc_mode}, {time.monotonic() - t0:.1f} s)", counts)
    dp.detach()
    topo.dp_a = None
    after = (_fds(), *_kernel_view(topo))
    print(f"\nfds {before[0]} -> {after[0]}, links {len(before[1])} -> {len(after[1])}, programs "
          f"{len(before[2])} -> {len(after[2])}, pins {len(before[3])} -> {len(after[3])}")
    assert after[0] == before[0] - n_opened(topo, n_links) and after[3] == before[3]  # before: A's fds open
    assert after[1] == before[1]  # the very same links
    # Programs: each reload replaced the node's programs (same number, all new); every one it
    # replaced is gone from the kernel (other suites load theirs concurrently: only ids compared).
    assert len(after[2]) == len(before[2]) and not after[2] & before[2]
    assert not before[2] & inventory.prog_ids()


def n_opened(topo: Topo, n_links: int) -> int:
    """The fds a restored node A holds: its maps (endpoints, tunnel, the five LB maps) and one per
    BPF link (clsact filters have none): a restore opens nothing else."""
    return 7 + (n_links if topo.cfg_a.tc_mode == "auto" else 0)


# -- native routing with DSR NodePort: static routes and BGP -------------------------------------------
def test_native_kill9_then_restore_keeps_every_connection(native: Topo) -> None:
    _kill9_then_restore(native)


@pytest.mark.no_leak_check  # reloads replace programs: checked by _twenty_reloads itself
def test_native_twenty_reloads_under_traffic(native: Topo) -> None:
    with adopted(native) as dp:
        _twenty_reloads(native, dp)


def test_native_close_after_restore_removes_the_node(native: Topo) -> None:
    # The last test of the topology: the restored node goes for good, with its routes (static:
    # deleted; BGP: its bird stopped, which withdraws them) and pins.
    assert _routes_to(native.ns_a, B_CIDR)
    bird = _bird_pid(native) if native.routes == "bgp" else None
    native.dp_a = dp = Datapath.restore(native.cfg_a, netns=native.ns_a)
    native.dp_a = None
    dp.close(remove=True)
    assert not os.path.exists(native.cfg_a.pin_dir)
    if bird is not None:
        assert _bird_pid(native) is None and not os.path.exists(f"/proc/{bird}/cmdline"), "bird still runs"
    deadline = time.monotonic() + 10  # bird removes its kernel routes as it exits
    while _routes_to(native.ns_a, B_CIDR) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _routes_to(native.ns_a, B_CIDR) == []
