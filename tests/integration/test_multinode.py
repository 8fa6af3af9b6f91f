"""Pods on different nodes, real kernel and real packets, in VXLAN and in native routing mode.

One lab per routing mode is shared by the module (``topo``): three nodes (k8s-master, worker1,
worker3) on the fabric bridge, two pods each, an echo server already running in every pod. The
tests only add what they remove again (a node, a capture, a flow), so the per-test leak check sees
the shared lab as pre-existing and still catches what a test leaves behind.

What is checked beyond "packets arrive": which datapath path carried them (metrics by reason and
direction, the destination lxc's TX counter), what went over the underlay (a capture on the
fabric: VXLAN with the sender's identity as VNI, or plain IPv4), the pod MTU, and the control
plane (tunnel map / BGP routes) as nodes join and leave.
"""

from __future__ import annotations

import json
import re
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pyroute2 import IPRoute

from ciliumlite.bpf import netns as nsmod
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.lab import Lab, LabCluster, Node, Pod

pytestmark = pytest.mark.integration

NODES = ["k8s-master", "worker1", "worker3"]
TAG = {"k8s-master": "m", "worker1": "w1", "worker3": "w3", "worker4": "w4"}
PORT = 8080
VXLAN_PORT = 8472


@dataclass
class Topo:
    lab: Lab
    cl: LabCluster
    mode: str

    def pod(self, node: str, which: str = "a") -> Pod:
        return self.cl.node(node).pods[TAG[node] + which]

    @property
    def egress_reason(self) -> Reason:
        """How cil_from_container sends a packet to a remote pod in this mode."""
        return Reason.ENCAPSULATED if self.mode == "vxlan" else Reason.FIB_REDIRECT


@pytest.fixture(scope="module", params=["vxlan", "native"])
def topo(request: pytest.FixtureRequest) -> Iterator[Topo]:
    with Lab(f"mn-{request.param[:3]}") as lab:
        cl = lab.cluster(nodes=NODES, routing=request.param)
        for node in cl.nodes():
            quiet_ipv6(node)
            for which in "ab":
                node.add_pod(TAG[node.name] + which).ensure_echo_server(PORT)
        yield Topo(lab, cl, request.param)


def quiet_ipv6(node: Node) -> None:
    # The host side of a veth sends IPv6 MLD reports / router solicitations now and then; ciliumlite is
    # IPv4-only, so IPv6 goes off in the node namespace to keep the TX counters about our traffic.
    for key in ("all", "default"):
        assert node.run("sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1").returncode == 0


def dp_count(node: Node, reason: Reason, direction: Direction) -> int:
    assert node.datapath is not None
    return node.datapath.count(reason, direction)


def link_stats(netns: str, ifname: str) -> dict[str, int]:
    """IFLA_STATS64 of a device as its own namespace sees it."""
    with IPRoute(netns=netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        return dict(ipr.get_links(idx)[0].get_attr("IFLA_STATS64"))


def link_mac(netns: str, ifname: str) -> str:
    with IPRoute(netns=netns) as ipr:
        return str(ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0].get_attr("IFLA_ADDRESS"))


def kernel_routes(node: Node) -> list[str]:
    res = node.run("ip", "-4", "route", "show")
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g}s: {what}")
        time.sleep(0.1)


def cross_node_pairs(t: Topo) -> list[tuple[Pod, Pod]]:
    one_way = [(t.pod("k8s-master", "a"), t.pod("worker1", "a")),
               (t.pod("worker1", "b"), t.pod("worker3", "a")),
               (t.pod("worker3", "b"), t.pod("k8s-master", "b"))]
    return one_way + [(b, a) for a, b in one_way]


# -- background helpers (each started with the lab's process group, ended here by pid) -----------------------
SNIFF = r"""
import json, select, socket, sys, time
seconds, want = float(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL: bridge ports too
print("ready", flush=True)
out, end = [], time.monotonic() + seconds
while len(out) < want and (left := end - time.monotonic()) > 0:
    if not select.select([s], [], [], left)[0]:
        break
    frame, addr = s.recvfrom(65535)
    if addr[2] == 4 or frame[12:14] != b"\x08\x00":   # PACKET_OUTGOING (leaving another port), not IPv4
        continue
    ihl = (frame[14] & 15) * 4
    if frame[23] == 6 and 179 in (int.from_bytes(frame[14 + ihl:16 + ihl], "big"),
                                  int.from_bytes(frame[16 + ihl:18 + ihl], "big")):
        continue                # BGP keepalives of native mode
    out.append([addr[0], frame.hex()])
print(json.dumps(out), flush=True)
"""

TCP_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
while data := c.recv(4096):
    c.sendall(data)
"""

TCP_CLIENT = r"""
import json, socket, sys, time
ok, err = 0, ""
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.settimeout(2)
print("ready", flush=True)
try:
    while True:
        msg = ok.to_bytes(8, "big")
        s.sendall(msg)
        got = b""
        while len(got) < 8:
            chunk = s.recv(8 - len(got))
            if not chunk:
                raise ConnectionError("closed by the server")
            got += chunk
        if got != msg:
            raise ValueError(f"echo mismatch {got!r} != {msg!r}")
        ok += 1
        time.sleep(0.02)
except KeyboardInterrupt:
    pass
except Exception as exc:
    err = f"{type(exc).__name__}: {exc}"
print(json.dumps({"ok": ok, "error": err}), flush=True)
"""


BULK_CLIENT = r"""
import json, socket, sys, threading
ip, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = bytes(i % 251 for i in range(size))
s = socket.create_connection((ip, port), timeout=10)
got, err = bytearray(), []

def read():
    try:
        while chunk := s.recv(65536):
            got.extend(chunk)
    except OSError as exc:
        err.append(f"{type(exc).__name__}: {exc}")

reader = threading.Thread(target=read)
reader.start()
s.sendall(data)
s.shutdown(socket.SHUT_WR)
reader.join(30)
print(json.dumps({"sent": size, "got": len(got), "same": bytes(got) == data, "error": "".join(err)}))
"""


def started(proc: subprocess.Popen[str], what: str) -> subprocess.Popen[str]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    line = proc.stdout.readline() if ready else ""
    assert line.strip() == "ready", f"{what} did not start: {line!r}"
    return proc


def interrupt_and_collect(lab: Lab, proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """SIGINT one process we started, wait for its summary, reap it; its stdout."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=timeout)
    finally:
        lab.processes.stop(proc)
    return out


def capture(t: Topo, frames: int, traffic: Callable[[], None], seconds: float = 8.0) -> list[tuple[str, bytes]]:
    """Every IPv4 frame the fabric bridge receives from a node port (BGP left out) while ``traffic`` runs."""
    assert t.lab.fabric is not None
    proc = started(t.lab.processes.popen(t.lab.fabric.netns, [sys.executable, "-c", SNIFF, str(seconds),
                                                                str(frames)]), "fabric capture")
    try:
        traffic()
        out, err = proc.communicate(timeout=seconds + 5)
    finally:
        t.lab.processes.stop(proc)
    assert proc.returncode == 0, err
    return [(port, bytes.fromhex(h)) for port, h in json.loads(out.strip().splitlines()[-1])]


@dataclass(frozen=True)
class Ip4:
    src: str
    dst: str
    proto: int
    ttl: int
    hlen: int


def ip4_at(frame: bytes, off: int) -> Ip4:
    vihl, ttl, proto = frame[off], frame[off + 8], frame[off + 9]
    src, dst = (".".join(map(str, frame[off + i:off + i + 4])) for i in (12, 16))
    return Ip4(src, dst, proto, ttl, (vihl & 15) * 4)


def mac_at(frame: bytes, off: int) -> str:
    return ":".join(f"{b:02x}" for b in frame[off:off + 6])


# -- connectivity --------------------------------------------------------------------------------------------
def test_icmp_across_nodes_both_ways(topo: Topo) -> None:
    for src, dst in cross_node_pairs(topo):
        sent = dp_count(src.node, topo.egress_reason, Direction.EGRESS)
        delivered = dp_count(dst.node, Reason.FORWARDED, Direction.INGRESS)
        res = src.ping(dst, count=3, interval=0.05)
        assert res.ok, f"{topo.mode}: {src} -> {dst}: {res.output}"
        # One routing hop in VXLAN mode (the receiver's delivery), two in native mode (sender's FIB
        # redirect and the receiver's delivery): the reply arrives with TTL 63 or 62.
        ttl = 63 if topo.mode == "vxlan" else 62
        assert re.search(rf"ttl={ttl}\b", res.output), res.output
        # The datapath carried it: encapsulated / FIB-redirected by the sender, delivered by the receiver.
        assert dp_count(src.node, topo.egress_reason, Direction.EGRESS) - sent >= 3
        assert dp_count(dst.node, Reason.FORWARDED, Direction.INGRESS) - delivered >= 3


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_tcp_udp_across_nodes_both_ways(topo: Topo, proto: str) -> None:
    for src, dst in cross_node_pairs(topo):
        payload = f"{proto}-{src.name}-to-{dst.name}"
        res = (src.tcp_echo if proto == "tcp" else src.udp_echo)(dst, PORT, payload)
        assert res.ok, f"{topo.mode} {proto} {src} -> {dst}: {res.error}"
        assert (res.reply, res.server) == (payload, dst.name)
        # No NAT between nodes: each side sees the other's pod address.
        assert res.seen_client.rsplit(":", 1)[0] == src.ip
        assert res.peer == (dst.ip, PORT)


def test_tcp_bulk_transfer_across_nodes(topo: Topo) -> None:
    # A megabyte each way over one connection: segments far above the pod MTU (GSO/GRO), many of them.
    src, dst = topo.pod("k8s-master", "b"), topo.pod("worker3", "b")
    server = started(dst.popen(sys.executable, "-c", TCP_SERVER, "9100"), "tcp server")
    try:
        res = src.run(sys.executable, "-c", BULK_CLIENT, dst.ip, "9100", str(1 << 20), timeout=60)
    finally:
        topo.lab.processes.stop(server)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"sent": 1 << 20, "got": 1 << 20, "same": True, "error": ""}, out


# -- which path carried the packets --------------------------------------------------------------------------
def test_same_node_stays_on_redirect_peer(topo: Topo) -> None:
    a, b = topo.pod("worker1", "a"), topo.pod("worker1", "b")
    node = a.node
    n = 20
    assert a.ping(b, count=1).ok and b.ping(a, count=1).ok     # warm up ARP (that reply *is* sent by lxc)
    lxc_b, eth0_b = link_stats(node.netns, b.endpoint.ifname), link_stats(b.netns, "eth0")
    arp = dp_count(node, Reason.ARP_REPLY, Direction.EGRESS)
    fwd = dp_count(node, Reason.FORWARDED, Direction.EGRESS)
    remote = dp_count(node, topo.egress_reason, Direction.EGRESS)
    res = a.ping(b, count=n, interval=0.02)
    assert res.ok, res.output
    assert re.search(r"ttl=63\b", res.output), "same node: exactly one TTL decrement"
    tx = link_stats(node.netns, b.endpoint.ifname)["tx_packets"] - lxc_b["tx_packets"]
    assert link_stats(b.netns, "eth0")["rx_packets"] - eth0_b["rx_packets"] >= n
    # The only packets an lxc sends itself are proxy-ARP replies (a neighbour re-probe may fall into the
    # window on a long-lived lab): anything beyond those means the pod traffic went through its xmit.
    tx -= dp_count(node, Reason.ARP_REPLY, Direction.EGRESS) - arp
    assert tx <= 0, f"bpf_redirect_peer must bypass {b.endpoint.ifname}'s xmit, yet it sent {tx} packets"
    assert dp_count(node, Reason.FORWARDED, Direction.EGRESS) - fwd >= 2 * n   # requests and replies
    assert dp_count(node, topo.egress_reason, Direction.EGRESS) == remote, "same-node traffic left the node"


def test_remote_delivery_bypasses_both_lxcs(topo: Topo) -> None:
    # cil_from_overlay / cil_from_netdev deliver with bpf_redirect_peer as well: neither pod's lxc transmits.
    a, b = topo.pod("k8s-master", "a"), topo.pod("worker3", "a")
    n = 20
    assert a.ping(b, count=1).ok
    before = {p.name: link_stats(p.node.netns, p.endpoint.ifname)["tx_packets"] for p in (a, b)}
    arp = {p.name: dp_count(p.node, Reason.ARP_REPLY, Direction.EGRESS) for p in (a, b)}
    delivered = {p.name: dp_count(p.node, Reason.FORWARDED, Direction.INGRESS) for p in (a, b)}
    res = a.ping(b, count=n, interval=0.02)
    assert res.ok, res.output
    for p in (a, b):
        tx = link_stats(p.node.netns, p.endpoint.ifname)["tx_packets"] - before[p.name]
        tx -= dp_count(p.node, Reason.ARP_REPLY, Direction.EGRESS) - arp[p.name]   # see the test above
        assert tx <= 0, f"{topo.mode}: {p.endpoint.ifname} of {p.name} transmitted {tx} packets"
        assert dp_count(p.node, Reason.FORWARDED, Direction.INGRESS) - delivered[p.name] >= n


# -- what goes over the underlay -----------------------------------------------------------------------------
def test_underlay_capture(topo: Topo) -> None:
    src, dst = topo.pod("worker1", "a"), topo.pod("worker3", "b")
    sn, dn = src.node, dst.node
    assert src.endpoint.identity != dst.endpoint.identity, "pods need distinct identities for this test"
    frames = capture(topo, 6, lambda: None if src.ping(dst, count=3, interval=0.05).ok else pytest.fail("ping"))
    assert len(frames) == 6, [(p, f.hex()) for p, f in frames]
    requests = [f for port, f in frames if port == f"n{sn.index}"]
    replies = [f for port, f in frames if port == f"n{dn.index}"]
    assert (len(requests), len(replies)) == (3, 3), [p for p, _ in frames]
    for frame, (a, b, a_node, b_node) in [(f, (src, dst, sn, dn)) for f in requests] + \
                                         [(f, (dst, src, dn, sn)) for f in replies]:
        outer = ip4_at(frame, 14)
        if topo.mode == "vxlan":
            assert (outer.src, outer.dst, outer.proto) == (a_node.ip, b_node.ip, 17)
            udp_off = 14 + outer.hlen
            _sport, dport, _ulen, ucsum = struct.unpack_from("!HHHH", frame, udp_off)
            assert dport == VXLAN_PORT
            assert ucsum == 0, "BPF_F_ZERO_CSUM_TX: the outer UDP checksum is left 0"
            assert outer.ttl == 64
            flags, vni = frame[udp_off + 8], int.from_bytes(frame[udp_off + 12:udp_off + 15], "big")
            assert flags == 0x08, "VXLAN I flag (a valid VNI)"
            assert vni == a.endpoint.identity, f"VNI {vni} is not {a.name}'s identity {a.endpoint.identity}"
            inner_off = udp_off + 16 + 14
            inner = ip4_at(frame, inner_off)
            assert (inner.src, inner.dst, inner.proto) == (a.ip, b.ip, 1)
            assert inner.ttl == 64, "no TTL decrement before encapsulation"
        else:
            assert (outer.src, outer.dst, outer.proto) == (a.ip, b.ip, 1), "native: the pod packet itself"
            assert outer.ttl == 63, "decremented once by the sender's FIB redirect"
            # L2: from the sender node's underlay MAC to the next hop's (the receiving node).
            assert mac_at(frame, 6) == link_mac(a_node.netns, "eth0")
            assert mac_at(frame, 0) == link_mac(b_node.netns, "eth0")


def test_no_vxlan_on_the_underlay_in_native_mode_and_no_plain_pod_ips_in_vxlan_mode(topo: Topo) -> None:
    src, dst = topo.pod("k8s-master", "b"), topo.pod("worker1", "b")
    frames = capture(topo, 2, lambda: None if src.udp_echo(dst, PORT, "x").ok else pytest.fail("udp"))
    assert len(frames) >= 2
    for _port, frame in frames:
        outer = ip4_at(frame, 14)
        is_vxlan = outer.proto == 17 and struct.unpack_from("!H", frame, 14 + outer.hlen + 2)[0] == VXLAN_PORT
        if topo.mode == "vxlan":
            assert is_vxlan and {outer.src, outer.dst} == {src.node.ip, dst.node.ip}
        else:
            assert not is_vxlan
            assert {outer.src, outer.dst} == {src.ip, dst.ip}


# -- MTU -----------------------------------------------------------------------------------------------------
def test_dont_fragment_at_the_pod_mtu(topo: Topo) -> None:
    mtu = 1450 if topo.mode == "vxlan" else 1500
    a, b = topo.pod("worker1", "b"), topo.pod("k8s-master", "a")
    assert a.node.datapath is not None and a.node.datapath.config.pod_mtu == mtu
    assert f"mtu {mtu} " in a.run("ip", "link", "show", "eth0").stdout
    for x, y in ((a, b), (b, a)):
        fits = x.ping(y, count=2, interval=0.05, size=mtu - 28, dont_fragment=True)
        assert fits.ok, f"{topo.mode}: a {mtu}-byte DF packet must cross nodes: {fits.output}"
        over = x.ping(y, count=2, interval=0.05, size=mtu - 27, dont_fragment=True)
        assert over.received == 0
        assert over.too_big and over.errors >= 1, f"{mtu + 1} bytes DF must be refused, not lost: {over.output}"
    # Without DF the pod fragments, and every fragment fits the tunnel.
    big = a.ping(b, count=2, interval=0.05, size=4000)
    assert big.ok, big.output


# -- control plane ---------------------------------------------------------------------------------------------
def test_control_plane_state(topo: Topo) -> None:
    nodes = topo.cl.nodes()
    for node in nodes:
        assert node.datapath is not None
        others = [o for o in nodes if o is not node]
        routes = kernel_routes(node)
        if topo.mode == "vxlan":
            assert node.bird is None
            want = {o.datapath.config.network.network_address.exploded: o.ip for o in others if o.datapath}
            assert node.datapath.tunnel.entries() == want
            # Pods are reached by BPF; the node's own traffic to remote pods uses encap routes through
            # cilium_vxlan (never plain routes via the underlay).
            for o in others:
                assert o.datapath is not None
                assert any(r.startswith(o.datapath.config.pod_cidr) and f"dst {o.ip}" in r and "dev cilium_vxlan" in r
                           for r in routes), f"{node.name} lacks the tunnel route to {o.name}: {routes}"
            assert not [r for r in routes if r.startswith("10.244.") and "dev eth0" in r], routes
        else:
            assert node.datapath.tunnel is None, "native routing has no tunnel (no tunnel entries)"
            sessions = [s for s in node.bird.status() if s.is_bgp]
            assert [(s.name, s.established) for s in sessions] == [("leaf", True)], sessions
            for o in others:
                assert o.datapath is not None
                assert any(re.match(rf"{re.escape(o.datapath.config.pod_cidr)} via {o.ip} dev eth0 proto bird\b", r)
                           for r in routes), f"{node.name} lacks a BGP route to {o.name}: {routes}"
            own = node.datapath.config.pod_cidr
            assert not [r for r in routes if r.startswith(own) and "proto bird" in r], "own CIDR learnt back"
    if topo.mode == "native":
        leaf = topo.lab.leaf_bird
        leaf_sessions = [s for s in leaf.status() if s.is_bgp]
        assert len(leaf_sessions) == len(nodes) and all(s.established for s in leaf_sessions), leaf_sessions
        assert set(leaf.routes()) >= {n.datapath.config.pod_cidr for n in nodes if n.datapath}


def _knows(node: Node, new: Node, mode: str) -> bool:
    assert node.datapath is not None and new.datapath is not None
    cidr = new.datapath.config.pod_cidr
    if mode == "vxlan":
        return node.datapath.tunnel.entries().get(cidr.split("/")[0]) == new.ip
    return any(r.startswith(f"{cidr} via {new.ip} ") and "proto bird" in r for r in kernel_routes(node))


def _forgot(node: Node, cidr: str, mode: str) -> bool:
    assert node.datapath is not None
    if mode == "vxlan":
        return cidr.split("/")[0] not in node.datapath.tunnel.entries()
    return not any(r.startswith(cidr) for r in kernel_routes(node))


def test_node_add_and_remove_keeps_existing_flows(topo: Topo) -> None:
    lab, cl, mode = topo.lab, topo.cl, topo.mode
    ma, w3a = topo.pod("k8s-master", "a"), topo.pod("worker3", "a")
    # Traffic between two nodes that stay: a continuous ping and one long-lived TCP connection.
    server = started(w3a.popen(sys.executable, "-c", TCP_SERVER, "9099"), "tcp server")
    client = started(ma.popen(sys.executable, "-c", TCP_CLIENT, w3a.ip, "9099"), "tcp client")
    pinger = ma.popen("ping", "-n", "-i", "0.05", "-W", "1", w3a.ip)
    try:
        new = cl.add_node("worker4")
        quiet_ipv6(new)
        p4 = new.add_pod("w4a")
        assert new.ip == "10.0.0.14" and new.datapath is not None
        cidr = new.datapath.config.pod_cidr
        others = [n for n in cl.nodes() if n is not new]
        for n in others:
            wait_for(f"{n.name} learns {cidr} ({mode})", lambda n=n: _knows(n, new, mode))
            wait_for(f"{new.name} learns {n.name}", lambda n=n: _knows(new, n, mode))
        if mode == "native":
            leaf = {s.name: s for s in lab.leaf_bird.status() if s.is_bgp}
            assert leaf["worker4"].established, leaf
        for n in others:
            pod = n.pods[TAG[n.name] + "a"]
            res = pod.ping(p4, count=2, interval=0.05)
            assert res.ok, f"{pod} -> {p4}: {res.output}"
            back = p4.tcp_echo(pod, PORT, "from-worker4")
            assert back.ok and back.server == pod.name and back.seen_client.startswith(p4.ip + ":"), back

        removed_ns = new.netns
        cl.remove_node("worker4")
        assert "worker4" not in lab.nodes and "worker4" not in cl.members
        assert removed_ns not in nsmod.list_all()
        for n in others:
            wait_for(f"{n.name} forgets {cidr} ({mode})", lambda n=n: _forgot(n, cidr, mode))
        assert not ma.ping(p4.ip, count=1, timeout=1).ok
    finally:
        flow = json.loads(interrupt_and_collect(lab, client).strip().splitlines()[-1])
        lab.processes.stop(server)
        pings = interrupt_and_collect(lab, pinger)
    assert flow["error"] == "" and flow["ok"] > 10, f"the TCP connection master->worker3 broke: {flow}"
    m = re.search(r"(\d+) packets transmitted, (\d+) received", pings)
    assert m, pings
    assert int(m[1]) > 10 and m[1] == m[2], f"ping master->worker3 lost packets while worker4 came and went: {m[0]}"
    # The cluster still works as before.
    assert ma.ping(w3a, count=1).ok
