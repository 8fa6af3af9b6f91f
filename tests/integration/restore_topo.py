"""The topology and traffic of test_restore.py (and test_upgrade.py, which reuses them).

Two nodes A and B, each a network namespace with a datapath: pods a1 and a2 on A, b1 on B, echo
servers (``restore_traffic.py server``) in a2 and b1, a ClusterIP service and a Maglev NodePort
backed by b1. A is built and owned by a child process (``restore_child.py``), B by the caller.
``_topology(routes, tc_mode, run)`` builds it and removes everything at the end, also on failure:

- ``routes="vxlan"``: A and B joined by one veth ``ul0``, VXLAN between them, SNAT NodePort
  reached from node B's own namespace;
- ``routes="static"`` / ``"bgp"``: native routing with ``load_balancer_mode="dsr"``; A and B on a
  bridge in a third namespace (the fabric), whose own address is the NodePort client, an outside
  host that B answers straight; routes between the pod CIDRs are static (the datapath's
  ``StaticRoutes``) or learnt over BGP (each datapath runs bird, A and B peer with each other).

:class:`Traffic` runs the counted clients (``restore_traffic.py client``); :func:`_check` prints
the counts and holds them to 0 broken / 0 failed / 0 lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ciliumlite.bpf import fs
from ciliumlite.cluster.store import NodeInfo
from ciliumlite.datapath import registry
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.lab import owned
from ciliumlite.node import Datapath
from ciliumlite.node import state as state_mod
from ciliumlite.service import Backend, Frontend, Service
from ciliumlite.testing.resources import session_record, unique_name

HERE = Path(__file__).parent
PORT = 7000
#: The service's backends listen on another port than the one the client reaches them on
#: directly. A direct connection reusing the client port of a finished ClusterIP one is handled by
#: the datapath (docs/design.md, "A direct flow never inherits a service connection's reverse
#: NAT"); what per-packet LB cannot handle is two *live* flows with one tuple after DNAT: the kernel
#: may give a new ClusterIP connection the port of a long-lived direct one to the same backend, and
#: one of them breaks (measured with one port: 2 long-lived connections broken in 1 of 3 runs).
SVC_PORT = 7001
CLUSTER_IP = "10.96.77.10"
NODE_PORT = 30077
A_IP, B_IP = "192.168.250.1", "192.168.250.2"
A_CIDR, B_CIDR = "10.244.61.0/24", "10.244.62.0/24"
A1, A2, B1 = "10.244.61.10", "10.244.61.11", "10.244.62.10"
CLIENT_IP = "192.168.250.3"  # the fabric's own address: the NodePort client over native routing
A_ASN, B_ASN = 65161, 65162
ZERO = {"broken": 0, "connect_failed": 0, "udp_lost": 0}


@dataclass
class Topo:
    prefix: str
    ns_a: str
    ns_b: str
    pods: dict[str, str]
    cfg_a: DatapathConfig
    cfg_b: DatapathConfig
    #: The namespace of the NodePort client: node B's own (VXLAN, SNAT) or the fabric (native, DSR).
    np_client: str = ""
    #: How the nodes reach each other's pods: ``vxlan``, ``static`` or ``bgp`` (native routing).
    routes: str = "vxlan"
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
            topo.dp_a.close(remove=True)
        topo.dp_a = None
    # What a failed restore left: the pins, state, bird and registry entry go by name.
    if topo.routes == "bgp":
        from ciliumlite.bgp import Bird
        from ciliumlite.node.routing import BgpRoutes

        bird = Bird.attach(topo.ns_a, BgpRoutes.bgp_config(topo.cfg_a), os.path.join(topo.cfg_a.run_dir, "bird"))
        if bird is not None:
            bird.stop()  # by the pid in its pidfile, checked against its command line
    if os.path.isdir(topo.cfg_a.pin_dir):
        fs.remove_pin_dir(topo.cfg_a.pin_dir)
    state_mod.remove(topo.cfg_a)
    registry.release(topo.cfg_a.node_name)


def _need_bird() -> None:
    from ciliumlite import bgp
    from ciliumlite.bpf.errors import NotSupportedError

    try:
        bgp._binaries()
    except NotSupportedError as exc:
        if os.environ.get("CILIUMLITE_TEST_STRICT") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _underlay(routes: str, ns_a: str, ns_b: str, fabric: str | None) -> None:
    """``ul0`` in A and B: one veth pair (VXLAN), or both on the fabric's bridge, whose own address
    is the outside client's (native)."""
    if fabric is None:
        _ip("link", "add", "ul0", "netns", ns_a, "type", "veth", "peer", "name", "ul0", "netns", ns_b)
    else:
        _ip("-n", fabric, "link", "add", "br0", "type", "bridge")
        for ns, peer in ((ns_a, "va"), (ns_b, "vb")):
            _ip("link", "add", "ul0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", fabric)
            _ip("-n", fabric, "link", "set", peer, "master", "br0", "up")
        _ip("-n", fabric, "addr", "add", f"{CLIENT_IP}/24", "dev", "br0")
        _ip("-n", fabric, "link", "set", "br0", "up")
        _ip("-n", fabric, "link", "set", "lo", "up")
    for ns, addr in ((ns_a, A_IP), (ns_b, B_IP)):
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "ul0")
        _ip("-n", ns, "link", "set", "ul0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")


def _configs(prefix: str, routes: str, tc_mode: str, run: Path) -> tuple[DatapathConfig, DatapathConfig]:
    common: dict[str, Any] = {"underlay_device": "ul0", "kube_proxy_replacement": True, "tc_mode": tc_mode}
    if routes == "vxlan":
        common["routing"] = "vxlan"
    else:  # DSR needs native routing (docs/dsr.md)
        common.update(routing="native", load_balancer_mode="dsr")
    bgp_a: dict[str, Any] = {}
    bgp_b: dict[str, Any] = {}
    if routes == "bgp":
        from ciliumlite.bgp import BgpPeer

        # A and B peer with each other directly (no router between them: they share the bridge).
        bgp_a = {"bgp_asn": A_ASN, "bgp_peers": (BgpPeer("node_b", B_IP, B_ASN),)}
        bgp_b = {"bgp_asn": B_ASN, "bgp_peers": (BgpPeer("node_a", A_IP, A_ASN),)}
    return (DatapathConfig(node_name=f"{prefix}-a", pod_cidr=A_CIDR, node_ip=A_IP, state_dir=str(run / "a"),
                           **common, **bgp_a),
            DatapathConfig(node_name=f"{prefix}-b", pod_cidr=B_CIDR, node_ip=B_IP, state_dir=str(run / "b"),
                           **common, **bgp_b))


@contextlib.contextmanager
def _topology(routes: str, tc_mode: str, run: Path) -> Iterator[Topo]:
    """Build the module's two nodes (see the module docstring); everything goes at the end."""
    record = session_record()
    prefix = unique_name("rs")
    made: list[str] = []
    try:
        ns_a, ns_b = (owned.make_netns(record, f"{prefix}-{n}") for n in "ab")
        made += [ns_a, ns_b]
        fabric = None
        if routes != "vxlan":
            fabric = owned.make_netns(record, f"{prefix}-f")
            made.append(fabric)
        pods = {}
        for name in ("a1", "a2", "b1"):
            pods[name] = owned.make_netns(record, f"{prefix}-{name}")
            made.append(pods[name])
        _underlay(routes, ns_a, ns_b, fabric)
        cfg_a, cfg_b = _configs(prefix, routes, tc_mode, run)
        topo = Topo(prefix, ns_a, ns_b, pods, cfg_a, cfg_b, np_client=fabric or ns_b, routes=routes)
        try:
            topo.dp_b = Datapath(cfg_b, netns=ns_b)
            topo.dp_b.add_endpoint(pods["b1"], name="b1", ip=B1)
            topo.dp_b.add_remote_node(NodeInfo(cfg_a.node_name, A_IP, A_CIDR))
            if routes != "vxlan":
                # DSR: B answers for a frontend of A only if it knows that NodePort too (its trust
                # check), as every node of a cluster does.
                topo.dp_b.upsert_service(_node_port())
            child = _start_child(topo)
            _expect_line(child, "ready")
            if routes == "bgp":
                _wait_bgp_routes(topo)
            for pod in ("a2", "b1"):
                for port in sorted({PORT, SVC_PORT}):
                    _expect_line(topo.spawn(pods[pod], str(HERE / "restore_traffic.py"), "server", str(port)),
                                 "ready")
            yield topo
        finally:
            for proc in topo.procs:
                _stop(proc)
            _remove_node_a(topo)
            if topo.dp_b is not None:
                topo.dp_b.close(remove=True)
    finally:
        for ns in reversed(made):
            owned.remove_netns(record, ns)
        shutil.rmtree(run, ignore_errors=True)


def _routes_to(ns: str, cidr: str) -> list[dict[str, Any]]:
    """The kernel's routes to ``cidr`` in namespace ``ns``."""
    res = subprocess.run(["ip", "-n", ns, "-j", "route", "show", cidr], capture_output=True, text=True, timeout=10)
    return json.loads(res.stdout or "[]") if res.returncode == 0 else []  # type: ignore[no-any-return]


def _wait_bgp_routes(topo: Topo, timeout: float = 30.0) -> None:
    """Until each node's bird has installed the route to the other's pods (learnt over BGP)."""
    assert topo.dp_b is not None
    topo.dp_b.routing.wait_established(timeout=timeout)  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _routes_to(topo.ns_a, B_CIDR) and _routes_to(topo.ns_b, A_CIDR):
            return
        time.sleep(0.1)
    raise AssertionError(f"no BGP routes after {timeout:g} s: A {_routes_to(topo.ns_a, B_CIDR)}, "
                         f"B {_routes_to(topo.ns_b, A_CIDR)}")


def _bird_pid(topo: Topo) -> int | None:
    """The pid of node A's running bird (from its pidfile, checked as bird's), or None."""
    from ciliumlite.bgp import Bird
    from ciliumlite.node.routing import BgpRoutes

    workdir = os.path.join(topo.cfg_a.run_dir, "bird")
    bird = Bird.attach(topo.ns_a, BgpRoutes.bgp_config(topo.cfg_a), workdir)
    return bird.pid if bird is not None else None


class Traffic:
    """The clients: in a1 (same node, across the overlay or the native routes, ClusterIP) and in
    ``topo.np_client`` (NodePort on A, backend on B). Start them, do something, stop them and read
    the counts."""

    def __init__(self, topo: Topo, *, long: int = 8, max_seconds: float = 90) -> None:
        pod = {"long": long, "max_seconds": max_seconds,
               "long_targets": [[A2, PORT], [B1, PORT]],
               "new_targets": [[A2, PORT], [B1, PORT], [CLUSTER_IP, PORT]],
               "udp_targets": [[A2, PORT], [B1, PORT]]}
        node = {"long": long // 2, "max_seconds": max_seconds, "long_targets": [[A_IP, NODE_PORT]],
                "new_targets": [[A_IP, NODE_PORT]], "udp_targets": []}  # the service is TCP
        self.procs = [topo.spawn(ns, str(HERE / "restore_traffic.py"), "client", json.dumps(spec))
                      for ns, spec in ((topo.pods["a1"], pod), (topo.np_client or topo.ns_b, node))]
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
