"""Golden packets for service load balancing with BPF_PROG_TEST_RUN (the real objects).

* ``bpf_lxc.o`` ``cil_from_container`` with ``enable_per_packet_lb=1``: a TCP SYN to a ClusterIP is
  DNATed to a backend (checksums valid), the CT service entry pins the backend, the connection entry
  carries the reverse-NAT index, and the backend's reply (through *its* lxc) leaves with the
  ClusterIP:port as source. A remote backend goes out by FIB; its reply is reverse-NATed by
  ``cil_from_netdev`` on delivery. A ClusterIP without backends answers ICMP port unreachable.
* ``bpf_host.o`` ``cil_from_netdev`` with ``lb_mode=1`` (DSR) on the LB node: the frame to a remote
  backend carries the DSR IPv4 option (IHL 7, tot_len+8, bytes = ``DsrOption(node_ip,
  node_port).encode()``) on TCP SYN and on every UDP datagram only; a frame that would exceed
  ``native_mtu`` with the option gets ICMP fragmentation-needed with ``mtu = native_mtu - 8``.
* ``bpf_host.o`` on the backend node: an option naming a cluster node (``cilium_node_map``) and a
  NodePort frontend installs the CT (``CT_F_DSR_INTERNAL``) and SNAT entries, and ``cil_to_netdev``
  rewrites the pod's reply source to the frontend; an option naming anything else is ignored.

Service rows are written with ``LbMaps`` (as a node does). Redirects are returned by test_run, not
performed: TC_ACT_REDIRECT plus the output frame is what the kernel would have sent. FIB lookups use
the routes and neighbours the fixture installs in the test namespace (a permanent neighbour for the
next hop, so the lookup succeeds and the MACs are filled in).
"""

from __future__ import annotations

import struct
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest
from packets import (
    ETH_HLEN,
    ETH_P_IP,
    IPPROTO_ICMP,
    IPPROTO_UDP,
    checksum,
    eth,
    ip,
    ipv4,
    parse_eth,
    parse_ipv4,
    udp,
)

from ciliumlite.bpf import BE32, U8, BpfObject, SkbContext
from ciliumlite.bpf.netns import entered
from ciliumlite.datapath import loader
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.datapath.dsr import DsrOption
from ciliumlite.datapath.lb import FrontendRow, LbMaps
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.datapath.records import (
    ENDPOINT_F_HOST,
    SCOPE_EXTERNAL,
    SVC_FLAG_NODEPORT,
    SVC_FLAG_ROUTABLE,
    CtEntry,
    EndpointInfo,
    EndpointKey,
    Ipv4CtTuple,
    MetricsKey,
    MetricsValue,
    NatEntry,
)

pytestmark = pytest.mark.bpf

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
IPPROTO_TCP = 6
TUPLE_F_OUT, TUPLE_F_SERVICE = 0, 4
CT_F_NODE_PORT, CT_F_DSR_INTERNAL = 0x20, 0x80
SYN, ACK, PSH = 0x02, 0x10, 0x08

NODE_IP = "10.0.0.12"           # this node
LB_NODE_IP = "10.0.0.11"        # another cluster node (the DSR LB node, seen from the backend)
REMOTE_IP = "10.0.0.13"         # the node that owns 10.244.2.0/24 (neighbour known)
REMOTE_MAC = "0e:00:00:00:00:13"
UNDERLAY_MAC = "0e:00:00:00:00:12"
CLIENT_MAC = "0e:00:00:00:00:fe"  # the leaf router, from which outside clients arrive
POD_CIDR = "10.244.1.0/24"
CLUSTER_IP, SVC_PORT = "10.96.0.10", 80
NODE_PORT = 30080
REMOTE_BACKEND = "10.244.2.7"
BACKEND_PORT = 8080
OUTSIDE = "203.0.113.10"


@dataclass(frozen=True)
class Ep:
    ip: str
    ifindex: int
    mac: str
    node_mac: str
    sec_id: int
    flags: int = 0

    def info(self, lxc_id: int) -> EndpointInfo:
        return EndpointInfo(ifindex=self.ifindex, lxc_id=lxc_id, flags=self.flags, mac=self.mac,
                            node_mac=self.node_mac, sec_id=self.sec_id)


@dataclass
class Env:
    """The test namespace: ``eth0`` (underlay, 10.0.0.12/24) and two pods' host-side devices."""

    netns: str
    pin_root: str
    eth0: int
    eth0_mac: str
    lxc_client: int
    lxc_backend: int

    @property
    def client(self) -> Ep:
        return Ep("10.244.1.2", self.lxc_client, "0a:12:34:56:78:02", "0e:ab:cd:ef:01:02", 0x00ABCD)

    @property
    def backend(self) -> Ep:
        return Ep("10.244.1.3", self.lxc_backend, "0a:12:34:56:78:03", "0e:ab:cd:ef:01:03", 0x001234)

    @property
    def host(self) -> Ep:
        return Ep(NODE_IP, 0, UNDERLAY_MAC, UNDERLAY_MAC, 1, ENDPOINT_F_HOST)


def _ip(netns: str, *args: str) -> None:
    res = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, f"ip {' '.join(args)}: {res.stderr}"


@pytest.fixture
def env(netns: str, bpffs_dir: str) -> Env:
    _ip(netns, "link", "add", "eth0", "address", UNDERLAY_MAC, "type", "veth", "peer", "name", "eth0-peer")
    for name in ("lxccli", "lxcbe"):
        _ip(netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}-peer")
    for dev in ("eth0", "eth0-peer", "lxccli", "lxccli-peer", "lxcbe", "lxcbe-peer"):
        _ip(netns, "link", "set", dev, "up")
    _ip(netns, "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
    _ip(netns, "neigh", "add", REMOTE_IP, "lladdr", REMOTE_MAC, "dev", "eth0", "nud", "permanent")
    _ip(netns, "route", "add", "10.244.2.0/24", "via", REMOTE_IP)
    # The outside world is behind the leaf (10.0.0.254), as in a lab: frag-needed replies and DSR
    # replies are routed there.
    _ip(netns, "neigh", "add", "10.0.0.254", "lladdr", CLIENT_MAC, "dev", "eth0", "nud", "permanent")
    _ip(netns, "route", "add", "203.0.113.0/24", "via", "10.0.0.254")
    set_sysctl(netns, "net.ipv4.ip_forward", "1")
    from pyroute2 import IPRoute

    with IPRoute(netns=netns) as ipr:
        idx = {n: ipr.link_lookup(ifname=n)[0] for n in ("eth0", "lxccli", "lxcbe")}
        mac = ipr.get_links(idx["eth0"])[0].get_attr("IFLA_ADDRESS")
    return Env(netns, bpffs_dir, idx["eth0"], mac, idx["lxccli"], idx["lxcbe"])


class Node:
    """bpf_lxc.o and bpf_host.o of one node, sharing its pinned maps, plus its LB maps."""

    def __init__(self, env: Env, *, lb_mode: str = "snat", mtu: int = 1500, node_ip: str = NODE_IP) -> None:
        self.env = env
        cfg = DatapathConfig(node_name="worker1", pod_cidr=POD_CIDR, node_ip=node_ip, routing="native",
                             load_balancer_mode=lb_mode, mtu=mtu)  # type: ignore[arg-type]
        self.rodata = cfg.rodata(native_ifindex=env.eth0)
        self.objs: dict[str, BpfObject] = {}
        self.lb: LbMaps | None = None
        try:
            with entered(env.netns):
                self.objs["lxc"] = loader.load("bpf_lxc", env.pin_root, {"enable_arp_responder": 1},
                                               node_config=self.rodata)
                self.objs["host"] = loader.load("bpf_host", env.pin_root, None, node_config=self.rodata)
            self.lb = LbMaps(env.pin_root, cfg.maglev_table_size)
        except BaseException:
            self.close()
            raise
        lxc = self.objs["lxc"]
        self.endpoints = lxc.map("cilium_lxc", EndpointKey, EndpointInfo)
        self.metrics = lxc.map("cilium_metrics", MetricsKey, MetricsValue)
        self.ct = lxc.map("cilium_ct4_global", Ipv4CtTuple, CtEntry)
        self.ct_any = lxc.map("cilium_ct_any4_global", Ipv4CtTuple, CtEntry)
        self.nat = self.objs["host"].map("cilium_snat_v4_external", Ipv4CtTuple, NatEntry)
        self.node_map = self.objs["host"].map("cilium_node_map", BE32, U8)
        for i, ep in enumerate((env.client, env.backend, env.host), start=1):
            self.endpoints.set(EndpointKey(ip4=ep.ip), ep.info(i))
        for node in (NODE_IP, LB_NODE_IP, REMOTE_IP):
            self.node_map.set(int(IPv4Address(node)), 1)

    def run(self, obj: str, prog: str, frame: bytes, ifindex: int) -> tuple[int, bytes, Counter[tuple[int, int]]]:
        before = self.counts()
        with entered(self.env.netns):
            res = self.objs[obj].program(prog).run(frame, ctx=SkbContext(ifindex=ifindex))
        after = self.counts()
        after.subtract(before)
        return res.retval, res.data, +after

    def counts(self) -> Counter[tuple[int, int]]:
        c: Counter[tuple[int, int]] = Counter()
        for key, per_cpu in self.metrics.items():
            c[(key.reason, key.dir)] += sum(v.count for v in per_cpu)
        return c

    def close(self) -> None:
        if self.lb is not None:
            self.lb.close()
        for o in self.objs.values():
            o.close()


@pytest.fixture
def node(env: Env) -> Iterator[Node]:
    n = Node(env)
    yield n
    n.close()


@pytest.fixture
def dsr_node(env: Env) -> Iterator[Node]:
    n = Node(env, lb_mode="dsr")
    yield n
    n.close()


# -- frames ------------------------------------------------------------------------------------------------
def tcp(src: str, dst: str, sport: int, dport: int, flags: int, payload: bytes = b"", *, seq: int = 1000,
        ack: int = 0, options: bytes = b"") -> bytes:
    """A TCP segment with a correct checksum over the IPv4 pseudo header."""
    options += b"\0" * (-len(options) % 4)
    off = (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, 64240, 0, 0) + options
    seg = hdr + payload
    pseudo = ip(src) + ip(dst) + struct.pack("!BBH", 0, IPPROTO_TCP, len(seg))
    csum = checksum(pseudo + seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


SYN_OPTS = bytes.fromhex("020405b4 0402080a 00000001 00000000 01030307")  # MSS, SACK-ok, TS, WS: 40-byte header


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: int, *, smac: str, dmac: str,
              payload: bytes = b"", ttl: int = 64, options: bytes = SYN_OPTS) -> bytes:
    return eth(dmac, smac, ETH_P_IP) + ipv4(src, dst, tcp(src, dst, sport, dport, flags, payload, options=options),
                                            proto=IPPROTO_TCP, ttl=ttl)


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes, *, smac: str, dmac: str) -> bytes:
    return eth(dmac, smac, ETH_P_IP) + ipv4(src, dst, udp(src, dst, sport, dport, payload), proto=IPPROTO_UDP)


@dataclass(frozen=True)
class L4:
    proto: int
    sport: int
    dport: int
    flags: int
    csum_ok: bool
    payload_off: int


def parse_l4(frame: bytes) -> L4:
    """Ports, TCP flags and whether the L4 checksum verifies (pseudo header from the frame's IPv4)."""
    h = parse_ipv4(frame)
    l4 = frame[ETH_HLEN + h.ihl * 4:ETH_HLEN + h.tot_len]
    sport, dport = struct.unpack_from("!HH", l4)
    pseudo = ip(h.src) + ip(h.dst) + struct.pack("!BBH", 0, h.proto, len(l4))
    if h.proto == IPPROTO_UDP and l4[6:8] == b"\0\0":
        ok = True
    else:
        ok = checksum(pseudo + l4) == 0
    flags = l4[13] if h.proto == IPPROTO_TCP else 0
    poff = (l4[12] >> 4) * 4 if h.proto == IPPROTO_TCP else 8
    return L4(h.proto, sport, dport, flags, ok, ETH_HLEN + h.ihl * 4 + poff)


def rewritten(frame: bytes, *, dmac: str, smac: str, src: str | None = None, dst: str | None = None,
              sport: int | None = None, dport: int | None = None, ttl_dec: int = 1) -> bytes:
    """``frame`` as a correct translation would emit it: new MACs/addresses/ports, TTL lowered,
    IP and L4 checksums recomputed from scratch."""
    h = parse_ipv4(frame)
    hdr = bytearray(frame[ETH_HLEN:ETH_HLEN + h.ihl * 4])
    hdr[8] -= ttl_dec
    if src:
        hdr[12:16] = ip(src)
    if dst:
        hdr[16:20] = ip(dst)
    hdr[10:12] = b"\0\0"
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    l4 = bytearray(frame[ETH_HLEN + h.ihl * 4:ETH_HLEN + h.tot_len])
    if sport is not None:
        l4[0:2] = sport.to_bytes(2, "big")
    if dport is not None:
        l4[2:4] = dport.to_bytes(2, "big")
    coff = 16 if h.proto == IPPROTO_TCP else 6
    l4[coff:coff + 2] = b"\0\0"
    pseudo = bytes(hdr[12:20]) + struct.pack("!BBH", 0, h.proto, len(l4))
    csum = checksum(pseudo + bytes(l4))
    if h.proto == IPPROTO_UDP and csum == 0:
        csum = 0xFFFF
    l4[coff:coff + 2] = csum.to_bytes(2, "big")
    return eth(dmac, smac, ETH_P_IP) + bytes(hdr) + bytes(l4) + frame[ETH_HLEN + h.tot_len:]


def same_but_checksums(out: bytes, want: bytes) -> None:
    """Byte-equal except the IP/L4 checksum fields, which must both verify (one's complement has two
    zeros, so an incremental update may legally differ from a full recomputation there)."""
    assert len(out) == len(want), (len(out), len(want))
    h = parse_ipv4(want)
    coff = ETH_HLEN + h.ihl * 4 + (16 if h.proto == IPPROTO_TCP else 6)
    masked = {ETH_HLEN + 10, ETH_HLEN + 11, coff, coff + 1}
    diff = [i for i in range(len(out)) if out[i] != want[i] and i not in masked]
    assert not diff, f"bytes differ at {diff[:8]}:\n got  {out.hex()}\n want {want.hex()}"
    assert parse_ipv4(out).csum_ok, "IPv4 header checksum"
    assert parse_l4(out).csum_ok, "L4 checksum"


def service(lb: LbMaps, name: str, addr: str, port: int, backends: list[tuple[str, int]], *, proto: int = IPPROTO_TCP,
            flags: int = 0, extra_rows: tuple[str, ...] | list[str] = ()) -> int:
    """Program one service (frontend ``addr:port``, plus NodePort rows at ``extra_rows``) with LbMaps;
    returns the frontend's reverse-NAT index."""
    bes = tuple((IPv4Address(a), p) for a, p in backends)
    rows = [FrontendRow(IPv4Address(addr), port, proto, SCOPE_EXTERNAL, flags, 0, bes)]
    rows += [FrontendRow(IPv4Address(a), NODE_PORT, proto, SCOPE_EXTERNAL, SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE, 0,
                         bes) for a in extra_rows]
    lb.program(name, rows)
    return lb.revnat_id((IPv4Address(addr), port, proto, SCOPE_EXTERNAL))


def backend_id(lb: LbMaps, addr: str, port: int) -> int:
    ids = [k for k, v in lb.backends.items() if (str(v.address), v.port) == (addr, port)]
    assert len(ids) == 1, ids
    return ids[0]


def ct_service_key(client: str, sport: int, frontend: str, fport: int, proto: int = IPPROTO_TCP) -> Ipv4CtTuple:
    # Cilium's quirk: addresses named for the reply direction, ports for the original one.
    return Ipv4CtTuple(daddr=IPv4Address(client), saddr=IPv4Address(frontend), dport=fport, sport=sport,
                       nexthdr=proto, flags=TUPLE_F_SERVICE)


def ct_conn_key(client: str, sport: int, server: str, dport: int, proto: int = IPPROTO_TCP) -> Ipv4CtTuple:
    return Ipv4CtTuple(daddr=IPv4Address(client), saddr=IPv4Address(server), dport=dport, sport=sport,
                       nexthdr=proto, flags=TUPLE_F_OUT)


def nat_key(saddr: str, sport: int, daddr: str, dport: int, proto: int = IPPROTO_TCP) -> Ipv4CtTuple:
    # NAT keys are in packet order.
    return Ipv4CtTuple(daddr=IPv4Address(daddr), saddr=IPv4Address(saddr), dport=dport, sport=sport,
                       nexthdr=proto, flags=TUPLE_F_OUT)


# == per-packet ClusterIP LB in cil_from_container =========================================================
def test_rodata_enables_per_packet_lb(node: Node) -> None:
    assert node.objs["lxc"].rodata["enable_per_packet_lb"] == 1
    assert node.objs["host"].rodata["lb_mode"] == 0


def test_syn_to_cluster_ip_is_dnated_to_local_backend(env: Env, node: Node) -> None:
    assert node.lb is not None
    rid = service(node.lb, "web", CLUSTER_IP, SVC_PORT, [(env.backend.ip, BACKEND_PORT)])
    bid = backend_id(node.lb, env.backend.ip, BACKEND_PORT)
    c = env.client
    frame = tcp_frame(c.ip, CLUSTER_IP, 40000, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
    rc, out, counted = node.run("lxc", "cil_from_container", frame, env.lxc_client)
    assert rc == TC_ACT_REDIRECT, counted
    same_but_checksums(out, rewritten(frame, dmac=env.backend.mac, smac=env.backend.node_mac, dst=env.backend.ip,
                                      dport=BACKEND_PORT))
    l4 = parse_l4(out)
    assert (parse_ipv4(out).dst, l4.dport, l4.sport, l4.flags) == (env.backend.ip, BACKEND_PORT, 40000, SYN)
    assert counted == Counter({(int(Reason.FORWARDED), int(Direction.EGRESS)): 1})

    svc_entry = node.ct.get(ct_service_key(c.ip, 40000, CLUSTER_IP, SVC_PORT))
    assert svc_entry is not None, "CT service entry (client -> frontend) pins the backend"
    assert (svc_entry.backend_id, svc_entry.rev_nat_index) == (bid, rid)
    conn = node.ct.get(ct_conn_key(c.ip, 40000, env.backend.ip, BACKEND_PORT))
    assert conn is not None, "connection entry (client -> backend) drives the reverse NAT"
    assert conn.rev_nat_index == rid and conn.flags & (CT_F_NODE_PORT | CT_F_DSR_INTERNAL) == 0
    assert conn.tx_flags_seen & SYN
    assert node.lb.revnat.get(rid) is not None and str(node.lb.revnat[rid].address) == CLUSTER_IP


def test_backend_reply_is_reverse_nated_to_the_cluster_ip(env: Env, node: Node) -> None:
    assert node.lb is not None
    service(node.lb, "web", CLUSTER_IP, SVC_PORT, [(env.backend.ip, BACKEND_PORT)])
    c, b = env.client, env.backend
    syn = tcp_frame(c.ip, CLUSTER_IP, 40001, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
    assert node.run("lxc", "cil_from_container", syn, env.lxc_client)[0] == TC_ACT_REDIRECT
    # The backend answers from its own lxc: to the client, from its own address and port.
    synack = tcp_frame(b.ip, c.ip, BACKEND_PORT, 40001, SYN | ACK, smac=b.mac, dmac=b.node_mac)
    rc, out, counted = node.run("lxc", "cil_from_container", synack, env.lxc_backend)
    assert rc == TC_ACT_REDIRECT, counted
    same_but_checksums(out, rewritten(synack, dmac=c.mac, smac=c.node_mac, src=CLUSTER_IP, sport=SVC_PORT))
    l4 = parse_l4(out)
    assert (parse_ipv4(out).src, l4.sport, parse_ipv4(out).dst, l4.dport) == (CLUSTER_IP, SVC_PORT, c.ip, 40001)
    conn = node.ct.get(ct_conn_key(c.ip, 40001, b.ip, BACKEND_PORT))
    assert conn is not None and conn.rx_flags_seen & (SYN | ACK) == SYN | ACK
    # Data in both directions keeps the same translation.
    data = tcp_frame(c.ip, CLUSTER_IP, 40001, SVC_PORT, ACK | PSH, smac=c.mac, dmac=c.node_mac, payload=b"GET /",
                     options=b"")
    rc, out, _ = node.run("lxc", "cil_from_container", data, env.lxc_client)
    assert rc == TC_ACT_REDIRECT
    same_but_checksums(out, rewritten(data, dmac=b.mac, smac=b.node_mac, dst=b.ip, dport=BACKEND_PORT))
    assert out[parse_l4(out).payload_off:] == b"GET /"


def test_unrelated_traffic_from_a_backend_is_not_reverse_nated(env: Env, node: Node) -> None:
    assert node.lb is not None
    service(node.lb, "web", CLUSTER_IP, SVC_PORT, [(env.backend.ip, BACKEND_PORT)])
    b, c = env.backend, env.client
    # No connection was opened through the service: the backend talking to the client is plain traffic.
    frame = tcp_frame(b.ip, c.ip, BACKEND_PORT, 40002, SYN | ACK, smac=b.mac, dmac=b.node_mac)
    rc, out, _ = node.run("lxc", "cil_from_container", frame, env.lxc_backend)
    assert rc == TC_ACT_REDIRECT
    same_but_checksums(out, rewritten(frame, dmac=c.mac, smac=c.node_mac))


def test_ct_service_entry_pins_the_backend(env: Env, node: Node) -> None:
    assert node.lb is not None
    backends = [(f"10.244.2.{i}", BACKEND_PORT) for i in range(10, 18)]
    service(node.lb, "web", CLUSTER_IP, SVC_PORT, backends)
    c = env.client
    seen = set()
    for sport in range(41000, 41024):
        syn = tcp_frame(c.ip, CLUSTER_IP, sport, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
        rc, out, _ = node.run("lxc", "cil_from_container", syn, env.lxc_client)
        assert rc == TC_ACT_REDIRECT
        first = parse_ipv4(out).dst
        seen.add(first)
        entry = node.ct[ct_service_key(c.ip, sport, CLUSTER_IP, SVC_PORT)]
        assert str(node.lb.backends[entry.backend_id].address) == first
        for _ in range(3):   # the connection's next packets go to the same backend
            ack = tcp_frame(c.ip, CLUSTER_IP, sport, SVC_PORT, ACK, smac=c.mac, dmac=c.node_mac, options=b"")
            assert parse_ipv4(node.run("lxc", "cil_from_container", ack, env.lxc_client)[1]).dst == first
    assert len(seen) > 1, "24 connections over 8 backends all picked one: selection is not random"


def test_remote_backend_goes_out_by_fib_and_its_reply_is_reverse_nated_on_delivery(env: Env, node: Node) -> None:
    assert node.lb is not None
    service(node.lb, "web", CLUSTER_IP, SVC_PORT, [(REMOTE_BACKEND, BACKEND_PORT)])
    c = env.client
    syn = tcp_frame(c.ip, CLUSTER_IP, 40003, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
    rc, out, counted = node.run("lxc", "cil_from_container", syn, env.lxc_client)
    assert rc == TC_ACT_REDIRECT, counted
    same_but_checksums(out, rewritten(syn, dmac=REMOTE_MAC, smac=env.eth0_mac, dst=REMOTE_BACKEND,
                                      dport=BACKEND_PORT))
    assert counted == Counter({(int(Reason.FIB_REDIRECT), int(Direction.EGRESS)): 1})
    # The reply arrives from the underlay, routed by the remote node (TTL already lowered there).
    synack = tcp_frame(REMOTE_BACKEND, c.ip, BACKEND_PORT, 40003, SYN | ACK, smac=REMOTE_MAC, dmac=env.eth0_mac,
                       ttl=63)
    rc, out, counted = node.run("host", "cil_from_netdev", synack, env.eth0)
    assert rc == TC_ACT_REDIRECT, counted
    same_but_checksums(out, rewritten(synack, dmac=c.mac, smac=c.node_mac, src=CLUSTER_IP, sport=SVC_PORT))


def test_cluster_ip_without_backends_answers_port_unreachable(env: Env, node: Node) -> None:
    assert node.lb is not None
    service(node.lb, "empty", CLUSTER_IP, SVC_PORT, [])
    c = env.client
    syn = tcp_frame(c.ip, CLUSTER_IP, 40004, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
    rc, out, counted = node.run("lxc", "cil_from_container", syn, env.lxc_client)
    assert rc == TC_ACT_REDIRECT, counted
    e, h = parse_eth(out), parse_ipv4(out)
    assert (e.dst, e.src) == (c.mac, c.node_mac)
    assert (h.src, h.dst, h.proto, h.csum_ok) == (CLUSTER_IP, c.ip, IPPROTO_ICMP, True)
    icmp = out[ETH_HLEN + 20:]
    assert (icmp[0], icmp[1]) == (3, 3) and checksum(icmp) == 0
    assert icmp[8:28] == syn[ETH_HLEN:ETH_HLEN + 20], "quotes the original IP header"
    assert counted == Counter({(int(Reason.DROP_NO_SERVICE), int(Direction.EGRESS)): 1})
    assert node.ct.get(ct_service_key(c.ip, 40004, CLUSTER_IP, SVC_PORT)) is None


# == DSR on the LB node: cil_from_netdev, lb_mode=1 =========================================================
def _nodeport(node: Node, backends: list[tuple[str, int]], proto: int = IPPROTO_TCP) -> None:
    assert node.lb is not None
    service(node.lb, "np", CLUSTER_IP, SVC_PORT, backends, proto=proto, extra_rows=[NODE_IP, "0.0.0.0"])


def _from_outside_tcp(env: Env, flags: int, sport: int = 40100, **kw: object) -> bytes:
    return tcp_frame(OUTSIDE, NODE_IP, sport, NODE_PORT, flags, smac=CLIENT_MAC, dmac=env.eth0_mac, **kw)  # type: ignore[arg-type]


def _with_dsr_option(frame: bytes, opt: bytes, *, dmac: str, smac: str, dst: str, dport: int) -> bytes:
    """What dsr_set_opt4 + fib_redirect_v4 must emit: DNAT, option after the 20-byte header, IHL 7,
    tot_len + 8, TTL - 1, checksums valid."""
    base = rewritten(frame, dmac=dmac, smac=smac, dst=dst, dport=dport)
    hdr = bytearray(base[ETH_HLEN:ETH_HLEN + 20])
    hdr[0] = 0x47
    hdr[2:4] = (struct.unpack("!H", hdr[2:4])[0] + 8).to_bytes(2, "big")
    hdr[10:12] = b"\0\0"
    full = bytes(hdr) + opt
    full = full[:10] + checksum(full).to_bytes(2, "big") + full[12:]
    return base[:ETH_HLEN] + full + base[ETH_HLEN + 20:]


def test_dsr_rodata(dsr_node: Node) -> None:
    ro = dsr_node.objs["host"].rodata
    assert (ro["lb_mode"], ro["routing_mode"], ro["native_mtu"]) == (1, 2, 1500)


def test_dsr_syn_to_remote_backend_carries_the_option(env: Env, dsr_node: Node) -> None:
    _nodeport(dsr_node, [(REMOTE_BACKEND, BACKEND_PORT)])
    syn = _from_outside_tcp(env, SYN)
    rc, out, counted = dsr_node.run("host", "cil_from_netdev", syn, env.eth0)
    assert rc == TC_ACT_REDIRECT, counted
    opt = DsrOption(NODE_IP, NODE_PORT).encode()
    h_in, h = parse_ipv4(syn), parse_ipv4(out)
    assert (h.ihl, h.tot_len, h.ttl) == (7, h_in.tot_len + 8, 63)
    assert out[ETH_HLEN + 20:ETH_HLEN + 28] == opt
    assert DsrOption.from_ipv4_header(h.header) == DsrOption(NODE_IP, NODE_PORT)
    assert h.csum_ok
    assert (h.src, h.dst) == (OUTSIDE, REMOTE_BACKEND), "client address kept, DNAT to the backend"
    same_but_checksums(out, _with_dsr_option(syn, opt, dmac=REMOTE_MAC, smac=env.eth0_mac, dst=REMOTE_BACKEND,
                                             dport=BACKEND_PORT))
    # No connection entry on the LB node (the reply never comes back here), only the service entry.
    assert dsr_node.ct.get(ct_service_key(OUTSIDE, 40100, NODE_IP, NODE_PORT)) is not None
    assert dsr_node.ct.get(ct_conn_key(OUTSIDE, 40100, REMOTE_BACKEND, BACKEND_PORT)) is None
    assert counted == Counter({(int(Reason.FIB_REDIRECT), int(Direction.INGRESS)): 1})


def test_dsr_non_syn_segment_gets_no_option(env: Env, dsr_node: Node) -> None:
    _nodeport(dsr_node, [(REMOTE_BACKEND, BACKEND_PORT)])
    assert dsr_node.run("host", "cil_from_netdev", _from_outside_tcp(env, SYN, 40101), env.eth0)[0] == TC_ACT_REDIRECT
    for flags, payload in ((ACK, b""), (ACK | PSH, b"GET / HTTP/1.0\r\n\r\n")):
        seg = _from_outside_tcp(env, flags, 40101, payload=payload, options=b"")
        rc, out, _ = dsr_node.run("host", "cil_from_netdev", seg, env.eth0)
        assert rc == TC_ACT_REDIRECT
        assert parse_ipv4(out).ihl == 5 and parse_ipv4(out).tot_len == parse_ipv4(seg).tot_len
        same_but_checksums(out, rewritten(seg, dmac=REMOTE_MAC, smac=env.eth0_mac, dst=REMOTE_BACKEND,
                                          dport=BACKEND_PORT))


def test_dsr_every_udp_datagram_gets_the_option(env: Env, dsr_node: Node) -> None:
    _nodeport(dsr_node, [(REMOTE_BACKEND, BACKEND_PORT)], proto=IPPROTO_UDP)
    opt = DsrOption(NODE_IP, NODE_PORT).encode()
    for i in range(3):
        dgram = udp_frame(OUTSIDE, NODE_IP, 40200, NODE_PORT, f"query {i}".encode(), smac=CLIENT_MAC,
                          dmac=env.eth0_mac)
        rc, out, counted = dsr_node.run("host", "cil_from_netdev", dgram, env.eth0)
        assert rc == TC_ACT_REDIRECT, counted
        h = parse_ipv4(out)
        assert (h.ihl, h.tot_len, h.csum_ok) == (7, parse_ipv4(dgram).tot_len + 8, True)
        assert out[ETH_HLEN + 20:ETH_HLEN + 28] == opt
        same_but_checksums(out, _with_dsr_option(dgram, opt, dmac=REMOTE_MAC, smac=env.eth0_mac,
                                                 dst=REMOTE_BACKEND, dport=BACKEND_PORT))


def test_dsr_local_backend_gets_no_option(env: Env, dsr_node: Node) -> None:
    _nodeport(dsr_node, [(env.backend.ip, BACKEND_PORT)])
    syn = _from_outside_tcp(env, SYN, 40102)
    rc, out, _ = dsr_node.run("host", "cil_from_netdev", syn, env.eth0)
    assert rc == TC_ACT_REDIRECT
    same_but_checksums(out, rewritten(syn, dmac=env.backend.mac, smac=env.backend.node_mac, dst=env.backend.ip,
                                      dport=BACKEND_PORT))


@pytest.mark.parametrize("mtu", [1500, 1400])
def test_dsr_frame_too_big_for_the_option_gets_frag_needed(env: Env, mtu: int) -> None:
    node = Node(env, lb_mode="dsr", mtu=mtu)
    try:
        _nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)], proto=IPPROTO_UDP)
        # IP total length mtu - 8 still fits with the option; one byte more does not.
        fits = udp_frame(OUTSIDE, NODE_IP, 40300, NODE_PORT, b"x" * (mtu - 8 - 28), smac=CLIENT_MAC,
                         dmac=env.eth0_mac)
        rc, out, _ = node.run("host", "cil_from_netdev", fits, env.eth0)
        assert rc == TC_ACT_REDIRECT and parse_ipv4(out).tot_len == mtu and parse_ipv4(out).ihl == 7
        big = udp_frame(OUTSIDE, NODE_IP, 40301, NODE_PORT, b"x" * (mtu - 8 - 28 + 1), smac=CLIENT_MAC,
                        dmac=env.eth0_mac)
        rc, out, counted = node.run("host", "cil_from_netdev", big, env.eth0)
        assert rc == TC_ACT_REDIRECT, counted
        e, h = parse_eth(out), parse_ipv4(out)
        assert (e.dst, e.src) == (CLIENT_MAC, env.eth0_mac), "sent back the way it came"
        assert (h.src, h.dst, h.proto, h.csum_ok, h.ihl) == (NODE_IP, OUTSIDE, IPPROTO_ICMP, True, 5)
        icmp = out[ETH_HLEN + 20:ETH_HLEN + h.tot_len]
        assert (icmp[0], icmp[1]) == (3, 4), "destination unreachable, fragmentation needed"
        assert struct.unpack("!H", icmp[6:8])[0] == mtu - 8
        assert checksum(icmp) == 0
        quoted = parse_ipv4(icmp[8:], 0)
        assert (quoted.src, quoted.dst) == (OUTSIDE, NODE_IP), "the quote names the frontend the client used"
        assert struct.unpack("!HH", icmp[28:32]) == (40301, NODE_PORT)
        assert counted == Counter({(int(Reason.DROP_FRAG_NEEDED), int(Direction.INGRESS)): 1})
    finally:
        node.close()


def test_dsr_too_big_tcp_syn_gets_frag_needed_but_big_data_segment_passes(env: Env) -> None:
    node = Node(env, lb_mode="dsr", mtu=1400)
    try:
        _nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)])
        # A SYN with payload (TCP Fast Open) that only overflows with the option.
        syn = _from_outside_tcp(env, SYN, 40400, payload=b"y" * (1400 - 8 - 20 - 40 + 1))
        rc, out, counted = node.run("host", "cil_from_netdev", syn, env.eth0)
        assert rc == TC_ACT_REDIRECT and parse_ipv4(out).proto == IPPROTO_ICMP, counted
        # A full-size non-SYN segment gets no option, so it is forwarded as is.
        seg = _from_outside_tcp(env, ACK, 40400, payload=b"z" * (1400 - 40), options=b"")
        rc, out, _ = node.run("host", "cil_from_netdev", seg, env.eth0)
        assert rc == TC_ACT_REDIRECT and parse_ipv4(out).proto == IPPROTO_TCP and parse_ipv4(out).ihl == 5
    finally:
        node.close()


def test_snat_mode_adds_no_option(env: Env, node: Node) -> None:
    _nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)])
    rc, out, _ = node.run("host", "cil_from_netdev", _from_outside_tcp(env, SYN, 40500), env.eth0)
    assert rc == TC_ACT_REDIRECT
    h = parse_ipv4(out)
    assert (h.ihl, h.src, h.dst) == (5, NODE_IP, REMOTE_BACKEND), "SNAT mode: the node's address, no option"


# == DSR on the backend node: the option's trust rule, CT + SNAT entries, reply rewrite ==================
def _dsr_arrival(env: Env, opt: DsrOption, *, proto: int = IPPROTO_TCP, sport: int = 40600,
                 flags: int = SYN) -> bytes:
    """A frame that a DSR LB node forwarded here: client source, local backend destination, option."""
    b = env.backend.ip
    l4 = tcp(OUTSIDE, b, sport, BACKEND_PORT, flags, options=SYN_OPTS) if proto == IPPROTO_TCP else \
        udp(OUTSIDE, b, sport, BACKEND_PORT, b"query")
    return eth(env.eth0_mac, REMOTE_MAC, ETH_P_IP) + ipv4(OUTSIDE, b, l4, proto=proto, ttl=63, options=opt.encode())


@pytest.fixture
def backend_node(env: Env, dsr_node: Node) -> Node:
    # Every node has the NodePort rows: its own address and the wildcard (matched for other nodes).
    _nodeport(dsr_node, [(env.backend.ip, BACKEND_PORT)])
    assert dsr_node.lb is not None
    service(dsr_node.lb, "np-udp", "10.96.0.11", 53, [(env.backend.ip, BACKEND_PORT)], proto=IPPROTO_UDP,
            extra_rows=[NODE_IP, "0.0.0.0"])
    return dsr_node


@pytest.mark.parametrize("proto", [IPPROTO_TCP, IPPROTO_UDP], ids=["tcp-syn", "udp"])
def test_trusted_option_installs_ct_and_snat_entries(env: Env, backend_node: Node, proto: int) -> None:
    frame = _dsr_arrival(env, DsrOption(LB_NODE_IP, NODE_PORT), proto=proto)
    rc, out, counted = backend_node.run("host", "cil_from_netdev", frame, env.eth0)
    assert rc == TC_ACT_REDIRECT, counted
    # Delivered to the pod with the option still in place (Cilium does not strip it).
    assert parse_ipv4(out).ihl == 7 and out[ETH_HLEN + 20:ETH_HLEN + 28] == frame[ETH_HLEN + 20:ETH_HLEN + 28]
    assert parse_eth(out).dst == env.backend.mac
    ct = backend_node.ct if proto == IPPROTO_TCP else backend_node.ct_any
    entry = ct.get(ct_conn_key(OUTSIDE, 40600, env.backend.ip, BACKEND_PORT, proto))
    assert entry is not None, "CT entry for the DSR connection"
    assert entry.flags & CT_F_DSR_INTERNAL and entry.rev_nat_index == 0
    nat = backend_node.nat.get(nat_key(env.backend.ip, BACKEND_PORT, OUTSIDE, 40600, proto))
    assert nat is not None, "SNAT entry for the reply tuple"
    assert (str(nat.to_addr), nat.to_port) == (LB_NODE_IP, NODE_PORT)


def test_dsr_reply_leaves_with_the_frontend_as_source(env: Env, backend_node: Node) -> None:
    syn = _dsr_arrival(env, DsrOption(LB_NODE_IP, NODE_PORT), sport=40601)
    assert backend_node.run("host", "cil_from_netdev", syn, env.eth0)[0] == TC_ACT_REDIRECT
    b = env.backend.ip
    # The pod's reply, routed by the stack towards the leaf: leaves through cil_to_netdev.
    reply = tcp_frame(b, OUTSIDE, BACKEND_PORT, 40601, SYN | ACK, smac=env.eth0_mac, dmac=CLIENT_MAC, ttl=63)
    rc, out, counted = backend_node.run("host", "cil_to_netdev", reply, env.eth0)
    assert rc == TC_ACT_OK, counted
    same_but_checksums(out, rewritten(reply, dmac=CLIENT_MAC, smac=env.eth0_mac, src=LB_NODE_IP, sport=NODE_PORT,
                                      ttl_dec=0))
    assert counted == Counter({(int(Reason.NAT_EGRESS), int(Direction.EGRESS)): 1})


@pytest.mark.parametrize("opt", [
    pytest.param(DsrOption("10.0.0.99", NODE_PORT), id="address-not-a-cluster-node"),
    pytest.param(DsrOption(OUTSIDE, NODE_PORT), id="address-is-the-client"),
    pytest.param(DsrOption(NODE_IP, NODE_PORT), id="address-is-this-node"),
    pytest.param(DsrOption(LB_NODE_IP, 30999), id="port-not-a-nodeport"),
    pytest.param(DsrOption(LB_NODE_IP, SVC_PORT), id="port-is-the-clusterip-port"),
])
def test_untrusted_option_is_ignored(env: Env, backend_node: Node, opt: DsrOption) -> None:
    frame = _dsr_arrival(env, opt, sport=40700)
    rc, out, counted = backend_node.run("host", "cil_from_netdev", frame, env.eth0)
    assert rc == TC_ACT_REDIRECT, "the packet is still delivered"
    assert parse_eth(out).dst == env.backend.mac
    assert counted == Counter({(int(Reason.FORWARDED), int(Direction.INGRESS)): 1}), "and not dropped"
    assert backend_node.nat.get(nat_key(env.backend.ip, BACKEND_PORT, OUTSIDE, 40700)) is None, "no NAT entry"
    entry = backend_node.ct.get(ct_conn_key(OUTSIDE, 40700, env.backend.ip, BACKEND_PORT))
    assert entry is None or not entry.flags & CT_F_DSR_INTERNAL
    # ...and so the pod's reply leaves with its own address.
    reply = tcp_frame(env.backend.ip, OUTSIDE, BACKEND_PORT, 40700, SYN | ACK, smac=env.eth0_mac, dmac=CLIENT_MAC)
    rc, out, _ = backend_node.run("host", "cil_to_netdev", reply, env.eth0)
    assert (rc, out) == (TC_ACT_OK, reply)


def test_option_from_a_node_that_left_is_ignored(env: Env, backend_node: Node) -> None:
    backend_node.node_map.delete(int(IPv4Address(LB_NODE_IP)))
    frame = _dsr_arrival(env, DsrOption(LB_NODE_IP, NODE_PORT), sport=40800)
    assert backend_node.run("host", "cil_from_netdev", frame, env.eth0)[0] == TC_ACT_REDIRECT
    assert backend_node.nat.get(nat_key(env.backend.ip, BACKEND_PORT, OUTSIDE, 40800)) is None


def test_option_in_snat_mode_is_ignored(env: Env, node: Node) -> None:
    _nodeport(node, [(env.backend.ip, BACKEND_PORT)])
    frame = _dsr_arrival(env, DsrOption(LB_NODE_IP, NODE_PORT), sport=40900)
    assert node.run("host", "cil_from_netdev", frame, env.eth0)[0] == TC_ACT_REDIRECT
    assert node.nat.get(nat_key(env.backend.ip, BACKEND_PORT, OUTSIDE, 40900)) is None
