"""Restart, hot replacement and restore refusals on the real kernel, under counted traffic.

Two VXLAN nodes (A and B, namespaces joined by one veth ``ul0``), pods a1 (the traffic client) and
a2 on A, b1 on B, echo servers in a2 and b1, and a ClusterIP service backed by b1 (on another
port, see ``SVC_PORT``). Both modes of attaching run: tcx links (``auto``) and clsact filters. Node A is
built and owned by a child process (``restore_child.py``); B by this process. The client keeps
long-lived TCP connections to a2 (same node) and b1 (across the overlay), opens new connections to
both and to the ClusterIP in a loop and sends numbered UDP datagrams to both; a second client in
node B's own namespace keeps long-lived and new connections to a NodePort on A (SNAT, Maglev),
whose backend is b1 on B. Each test counts
broken connections, failed connects and lost datagrams and prints them; the bar is 0/0/0.

The module's topology is shared by its tests, in order: kill -9 of A's owner and restore in this
process; 20 reloads in a row; bad state refused with the datapath untouched; 200 detach/restore
cycles (and reloads) leaving no extra fds, links, pins or programs. A's datapath is removed at
the end (restored here if its owner died), and everything is removed also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from ciliumlite.bpf import fs, inventory
from ciliumlite.cluster.store import NodeInfo
from ciliumlite.datapath import registry
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.lab import owned
from ciliumlite.node import Datapath
from ciliumlite.node import state as state_mod
from ciliumlite.node.state import StateError
from ciliumlite.service import Backend, Frontend, Service
from ciliumlite.testing.resources import session_record, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

HERE = Path(__file__).parent
PORT = 7000
#: The service's backends listen on another port than the one the client reaches them on
#: directly: a translated connection's conntrack entry (client port -> backend, with its rev-NAT
#: index) must never be met by a direct connection that happens to reuse the client port, whose
#: replies would then be reverse-translated to the ClusterIP and lost.
SVC_PORT = 7001
CLUSTER_IP = "10.96.77.10"
NODE_PORT = 30077
A_IP, B_IP = "192.168.250.1", "192.168.250.2"
A_CIDR, B_CIDR = "10.244.61.0/24", "10.244.62.0/24"
A1, A2, B1 = "10.244.61.10", "10.244.61.11", "10.244.62.10"
ZERO = {"broken": 0, "connect_failed": 0, "udp_lost": 0}


@dataclass
class Topo:
    prefix: str
    ns_a: str
    ns_b: str
    pods: dict[str, str]
    cfg_a: DatapathConfig
    cfg_b: DatapathConfig
    dp_b: Datapath | None = None
    dp_a: Datapath | None = None
    child: subprocess.Popen[str] | None = None
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def spawn(self, netns: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _expect_line(proc: subprocess.Popen[str], want: str, timeout: float = 60.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    import select

    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == want:
                return
            if not line:
                break
    err = proc.stderr.read() if proc.stderr is not None and proc.poll() is not None else ""
    raise AssertionError(f"no {want!r} from {proc.args}: {err[-3000:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()  # by its own pid: a process this module started
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def _start_child(topo: Topo, **extra: Any) -> subprocess.Popen[str]:
    spec = {"config": asdict(topo.cfg_a), "netns": topo.ns_a, "cgroup": None,
            "pods": [[topo.pods["a1"], "a1", A1], [topo.pods["a2"], "a2", A2]],
            "remote": [asdict(NodeInfo(topo.cfg_b.node_name, B_IP, B_CIDR))],
            "services": [_service().to_dict(), _node_port().to_dict()], **extra}
    proc = subprocess.Popen([sys.executable, str(HERE / "restore_child.py"), json.dumps(spec)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    topo.child = proc
    return proc


def _service() -> Service:
    return Service(name="echo", frontend=Frontend(CLUSTER_IP, PORT), backends=[Backend(B1, SVC_PORT)])


def _node_port() -> Service:
    # Reached from node B's own namespace at A's address: A's bpf_host translates and SNATs it to
    # the backend on B (through the tunnel), with Maglev picking the backend.
    return Service(name="np", frontend=Frontend("10.96.77.11", PORT), type="NodePort", node_port=NODE_PORT,
                   maglev=True, backends=[Backend(B1, SVC_PORT)])


def _remove_node_a(topo: Topo) -> None:
    # Whoever owns A now: this process, a dead child (restore it to remove it) or nobody.
    if topo.child is not None:
        _stop(topo.child)
        topo.child = None
    if topo.dp_a is None:
        with contextlib.suppress(Exception):
            topo.dp_a = Datapath.restore(topo.cfg_a)
    if topo.dp_a is not None:
        with contextlib.suppress(Exception):
            topo.dp_a.close()
        topo.dp_a = None
    # What a failed restore left: the pins, state and registry entry go by name.
    if os.path.isdir(topo.cfg_a.pin_dir):
        fs.remove_pin_dir(topo.cfg_a.pin_dir)
    state_mod.remove(topo.cfg_a)
    registry.release(topo.cfg_a.node_name)


@pytest.fixture(scope="module", params=["auto", "clsact"])
def topo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topo]:
    """The two nodes with tcx links (``auto`` on this kernel) or classic tc filters (``clsact``)."""
    record = session_record()
    prefix = unique_name("rs")
    made: list[str] = []
    run = tmp_path_factory.mktemp("restore")
    try:
        ns_a, ns_b = (owned.make_netns(record, f"{prefix}-{n}") for n in "ab")
        made += [ns_a, ns_b]
        pods = {}
        for name in ("a1", "a2", "b1"):
            pods[name] = owned.make_netns(record, f"{prefix}-{name}")
            made.append(pods[name])
        _ip("link", "add", "ul0", "netns", ns_a, "type", "veth", "peer", "name", "ul0", "netns", ns_b)
        for ns, addr in ((ns_a, A_IP), (ns_b, B_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "ul0")
            _ip("-n", ns, "link", "set", "ul0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        common = {"routing": "vxlan", "underlay_device": "ul0", "kube_proxy_replacement": True,
                  "tc_mode": request.param}
        cfg_a = DatapathConfig(node_name=f"{prefix}-a", pod_cidr=A_CIDR, node_ip=A_IP, state_dir=str(run / "a"),
                               **common)  # type: ignore[arg-type]
        cfg_b = DatapathConfig(node_name=f"{prefix}-b", pod_cidr=B_CIDR, node_ip=B_IP, state_dir=str(run / "b"),
                               **common)  # type: ignore[arg-type]
        topo = Topo(prefix, ns_a, ns_b, pods, cfg_a, cfg_b)
        try:
            topo.dp_b = Datapath(cfg_b, netns=ns_b)
            topo.dp_b.add_endpoint(pods["b1"], name="b1", ip=B1)
            topo.dp_b.add_remote_node(NodeInfo(cfg_a.node_name, A_IP, A_CIDR))
            child = _start_child(topo)
            _expect_line(child, "ready")
            for pod in ("a2", "b1"):
                for port in (PORT, SVC_PORT):
                    _expect_line(topo.spawn(pods[pod], str(HERE / "restore_traffic.py"), "server", str(port)),
                                 "ready")
            yield topo
        finally:
            for proc in topo.procs:
                _stop(proc)
            _remove_node_a(topo)
            if topo.dp_b is not None:
                topo.dp_b.close()
    finally:
        for ns in reversed(made):
            owned.remove_netns(record, ns)
        shutil.rmtree(run, ignore_errors=True)


class Traffic:
    """The clients: in a1 (same node, across the overlay, ClusterIP) and in node B's namespace
    (NodePort on A, backend on B). Start them, do something, stop them and read the counts."""

    def __init__(self, topo: Topo, *, long: int = 8, max_seconds: float = 90) -> None:
        pod = {"long": long, "max_seconds": max_seconds,
               "long_targets": [[A2, PORT], [B1, PORT]],
               "new_targets": [[A2, PORT], [B1, PORT], [CLUSTER_IP, PORT]],
               "udp_targets": [[A2, PORT], [B1, PORT]]}
        node = {"long": long // 2, "max_seconds": max_seconds, "long_targets": [[A_IP, NODE_PORT]],
                "new_targets": [[A_IP, NODE_PORT]], "udp_targets": []}  # the service is TCP
        self.procs = [topo.spawn(ns, str(HERE / "restore_traffic.py"), "client", json.dumps(spec))
                      for ns, spec in ((topo.pods["a1"], pod), (topo.ns_b, node))]
        for proc in self.procs:
            _expect_line(proc, "running", timeout=20)

    def stop(self) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for proc in self.procs:
            out, _ = proc.communicate(timeout=30)  # closing its stdin stops it
            for k, v in json.loads(out.strip().splitlines()[-1]).items():
                total[k] = total.get(k, 0 if isinstance(v, int) else []) + v
        return total


def _check(what: str, counts: dict[str, Any]) -> None:
    print(f"\n{what}: broken={counts['broken']} connect_failed={counts['connect_failed']} "
          f"udp_lost={counts['udp_lost']} (of {counts['udp_sent']} datagrams; {counts['long']} long-lived "
          f"connections, {counts['exchanges']} exchanges, {counts['new_ok']} new connections)")
    assert {k: counts[k] for k in ZERO} == ZERO, counts["errors"]
    assert counts["long"] == 20 and counts["new_ok"] > 20 and counts["udp_sent"] > 100, counts


def _probe(topo: Topo) -> None:
    """One new connection a1 -> b1 and a1 -> a2 (the datapath forwards)."""
    code = (f"import socket,sys\nfor h in sys.argv[1:]:\n print(h, file=sys.stderr)\n"
            f" s=socket.create_connection((h,{PORT}),timeout=3)\n"
            " s.sendall(b'x'); assert s.recv(1)==b'x'; s.close()")
    res = subprocess.run(["ip", "netns", "exec", topo.pods["a1"], sys.executable, "-c", code, B1, A2, CLUSTER_IP],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr  # the last address it names is the one that failed


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
    traffic = Traffic(topo)
    time.sleep(1.5)
    assert topo.child is not None
    os.kill(topo.child.pid, signal.SIGKILL)  # our own child, by pid
    topo.child.wait(timeout=10)
    topo.child = None
    time.sleep(1.5)  # nobody owns A now: its pinned links keep forwarding
    started = time.monotonic()
    topo.dp_a = Datapath.restore(topo.cfg_a, netns=topo.ns_a)
    restore_s = time.monotonic() - started
    with adopted(topo) as dp:  # detached again at the end, also when a check fails
        time.sleep(1.5)
        counts = traffic.stop()
        print(f"\nrestore took {restore_s * 1000:.0f} ms")
        _check("kill -9 + restore", counts)
        _after_restore(topo, dp)


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
    _check("20 reloads", counts)
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
    for i in range(cycles):
        dp.detach()
        topo.dp_a = dp = Datapath.restore(topo.cfg_a)
        if i % (cycles // 4) == cycles // 4 - 1:
            dp.reload()
    counts = traffic.stop()
    _check(f"{cycles} restore cycles + 4 reloads ({topo.cfg_a.tc_mode})", counts)
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
