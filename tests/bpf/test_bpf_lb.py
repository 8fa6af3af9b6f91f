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
* ``enable_per_packet_lb=0`` (``per_packet_lb=False``): ``cil_from_container`` leaves a packet to a
  ClusterIP untranslated, with no conntrack service entry.
* Terminating backends (``BE_STATE_TERMINATING``, after slot ``count``): a connection pinned to one
  keeps it for its next segments, a new SYN never gets it; external IPs and LoadBalancer IPs are
  NodePort-like frontends in ``cil_from_netdev``.
* ``bpf_host.o`` on the backend node: an option naming a cluster node (``cilium_node_map``) and a
  NodePort frontend installs the CT (``CT_F_DSR_INTERNAL``) and SNAT entries, and ``cil_to_netdev``
  rewrites the pod's reply source to the frontend; an option naming anything else is ignored.

Service rows are what a node writes: ``lb_rows`` of a :class:`Service`, programmed with ``LbMaps``.
Redirects are returned by test_run, not performed: ``TcAction.REDIRECT`` plus the output frame is what
the kernel would have sent. FIB lookups use the routes and neighbours the ``ns`` fixture installs in
the test namespace (a permanent neighbour for the next hop, so the lookup succeeds and the MACs are
filled in).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from ciliumlite.bpf import TcAction
from ciliumlite.datapath.config import DatapathConfig, LbMode
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.datapath.dsr import DsrOption
from ciliumlite.datapath.lb import LbMaps
from ciliumlite.datapath.maps import CT_ANY, CT_TCP, SNAT
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.datapath.records import ENDPOINT_F_HOST, Ipv4CtTuple
from ciliumlite.node.services import lb_rows
from ciliumlite.service import Backend, Frontend, Protocol, Service
from ciliumlite.testing.datapath import DatapathFactory, DatapathObjects, EndpointRow
from ciliumlite.testing.packets import (
    ETH_HLEN,
    ETH_P_IP,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    checksum,
    eth,
    ip,
    ipv4,
    parse_eth,
    parse_ipv4,
    tcp,
    udp,
)

pytestmark = pytest.mark.bpf

TUPLE_F_OUT, TUPLE_F_SERVICE = 0, 4
CT_F_NODE_PORT, CT_F_DSR_INTERNAL = 0x20, 0x80
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01

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
HOST = EndpointRow(NODE_IP, 0, UNDERLAY_MAC, UNDERLAY_MAC, 1, ENDPOINT_F_HOST)  # the node's own address


@pytest.fixture
def ns(datapath_objects: DatapathFactory) -> DatapathFactory:
    """The test namespace: ``eth0`` (underlay, 10.0.0.12/24) and two pods' host-side devices."""
    ns = datapath_objects
    # The outside world is behind the leaf (10.0.0.254), as in a lab: frag-needed replies and DSR
    # replies are routed there.
    ns.underlay("eth0", f"{NODE_IP}/24", mac=UNDERLAY_MAC,
                neighbours={REMOTE_IP: REMOTE_MAC, "10.0.0.254": CLIENT_MAC})
    for name in ("lxccli", "lxcbe"):
        ns.veth(name)
    ns.ip("route", "add", "10.244.2.0/24", "via", REMOTE_IP)
    ns.ip("route", "add", "203.0.113.0/24", "via", "10.0.0.254")
    set_sysctl(ns.netns, "net.ipv4.ip_forward", "1")
    return ns


def client_row(ns: DatapathFactory) -> EndpointRow:
    return EndpointRow("10.244.1.2", ns.ifindex("lxccli"), "0a:12:34:56:78:02", "0e:ab:cd:ef:01:02", 0x00ABCD)


def backend_row(ns: DatapathFactory) -> EndpointRow:
    return EndpointRow("10.244.1.3", ns.ifindex("lxcbe"), "0a:12:34:56:78:03", "0e:ab:cd:ef:01:03", 0x001234)


@pytest.fixture
def client(ns: DatapathFactory) -> EndpointRow:
    return client_row(ns)


@pytest.fixture
def backend(ns: DatapathFactory) -> EndpointRow:
    return backend_row(ns)


@pytest.fixture
def eth0(ns: DatapathFactory) -> int:
    return ns.ifindex("eth0")


def load(ns: DatapathFactory, *, lb_mode: LbMode = "snat", mtu: int = 1500,
         per_packet_lb: bool = True) -> DatapathObjects:
    """bpf_lxc.o and bpf_host.o of one node (native routing), sharing its pinned maps; endpoints
    client, backend and HOST; every node of the cluster in ``cilium_node_map``."""
    cfg = DatapathConfig(node_name="worker1", pod_cidr=POD_CIDR, node_ip=NODE_IP, routing="native",
                         load_balancer_mode=lb_mode, mtu=mtu, per_packet_lb=per_packet_lb)
    dp = ns(cfg, ("lxc", "host"), native_ifindex=ns.ifindex("eth0"))
    dp.add_endpoints(client_row(ns), backend_row(ns), HOST)
    for node in (NODE_IP, LB_NODE_IP, REMOTE_IP):
        dp.maps.nodes.set(int(IPv4Address(node)), 1)
    return dp


@pytest.fixture
def node(ns: DatapathFactory) -> DatapathObjects:
    return load(ns)


@pytest.fixture
def dsr_node(ns: DatapathFactory) -> DatapathObjects:
    return load(ns, lb_mode="dsr")


def by_direction(reason: Reason, direction: Direction) -> Counter[tuple[int, int]]:
    return Counter({(int(reason), int(direction)): 1})


# -- frames ------------------------------------------------------------------------------------------------
SYN_OPTS = bytes.fromhex("020405b4 0402080a 00000001 00000000 01030307")  # MSS, SACK-ok, TS, WS: 40-byte header


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: int, *, smac: str, dmac: str,
              payload: bytes = b"", ttl: int = 64, options: bytes = SYN_OPTS) -> bytes:
    return eth(dmac, smac, ETH_P_IP) + ipv4(src, dst, tcp(src, dst, sport, dport, flags, payload, options=options),
                                            proto=IPPROTO_TCP, ttl=ttl)


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes, *, smac: str, dmac: str) -> bytes:
    return eth(dmac, smac, ETH_P_IP) + ipv4(src, dst, udp(src, dst, sport, dport, payload), proto=IPPROTO_UDP)


@dataclass(frozen=True)
class L4:
    """The L4 facts of a frame the tests check."""

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


def service(name: str, backends: list[tuple[str, int]], *, protocol: Protocol = "TCP", addr: str = CLUSTER_IP,
            port: int = SVC_PORT, node_port: int | None = None) -> Service:
    """A ClusterIP service (a NodePort one with ``node_port``) at ``addr:port``."""
    return Service(name, Frontend(addr, port, protocol), [Backend(a, p) for a, p in backends],
                   type="NodePort" if node_port else "ClusterIP", node_port=node_port)


def program(lb: LbMaps, svc: Service) -> int:
    """Write ``svc``'s rows as a node does (``lb_rows`` on this node); returns the reverse-NAT index
    of its ClusterIP frontend (the first row)."""
    rows = lb_rows(svc, NODE_IP, POD_CIDR)
    lb.program(svc.name, rows)
    return lb.revnat_id(rows[0].frontend)


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
def test_rodata_enables_per_packet_lb(node: DatapathObjects) -> None:
    assert node.objects["lxc"].rodata["enable_per_packet_lb"] == 1
    assert node.objects["host"].rodata["lb_mode"] == 0


def test_syn_to_cluster_ip_is_dnated_to_local_backend(node: DatapathObjects, client: EndpointRow,
                                                      backend: EndpointRow) -> None:
    rid = program(node.lb, service("web", [(backend.ip, BACKEND_PORT)]))
    bid = backend_id(node.lb, backend.ip, BACKEND_PORT)
    c = client
    frame = tcp_frame(c.ip, CLUSTER_IP, 40000, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
    run = node.run(frame, ifindex=c.ifindex)
    out = run.data
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    same_but_checksums(out, rewritten(frame, dmac=backend.mac, smac=backend.node_mac, dst=backend.ip,
                                      dport=BACKEND_PORT))
    l4 = parse_l4(out)
    assert (parse_ipv4(out).dst, l4.dport, l4.sport, l4.flags) == (backend.ip, BACKEND_PORT, 40000, SYN)
    assert run.by_direction == by_direction(Reason.FORWARDED, Direction.EGRESS)

    ct = node.maps.get(CT_TCP)
    svc_entry = ct.get(ct_service_key(c.ip, 40000, CLUSTER_IP, SVC_PORT))
    assert svc_entry is not None, "CT service entry (client -> frontend) pins the backend"
    assert (svc_entry.backend_id, svc_entry.rev_nat_index) == (bid, rid)
    conn = ct.get(ct_conn_key(c.ip, 40000, backend.ip, BACKEND_PORT))
    assert conn is not None, "connection entry (client -> backend) drives the reverse NAT"
    assert conn.rev_nat_index == rid and conn.flags & (CT_F_NODE_PORT | CT_F_DSR_INTERNAL) == 0
    assert conn.tx_flags_seen & SYN
    assert node.lb.revnat.get(rid) is not None and str(node.lb.revnat[rid].address) == CLUSTER_IP


def test_backend_reply_is_reverse_nated_to_the_cluster_ip(node: DatapathObjects, client: EndpointRow,
                                                          backend: EndpointRow) -> None:
    program(node.lb, service("web", [(backend.ip, BACKEND_PORT)]))
    c, b = client, backend
    syn = tcp_frame(c.ip, CLUSTER_IP, 40001, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
    assert node.run(syn, ifindex=c.ifindex).verdict == TcAction.REDIRECT
    # The backend answers from its own lxc: to the client, from its own address and port.
    synack = tcp_frame(b.ip, c.ip, BACKEND_PORT, 40001, SYN | ACK, smac=b.mac, dmac=b.node_mac)
    run = node.run(synack, ifindex=b.ifindex)
    out = run.data
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    same_but_checksums(out, rewritten(synack, dmac=c.mac, smac=c.node_mac, src=CLUSTER_IP, sport=SVC_PORT))
    l4 = parse_l4(out)
    assert (parse_ipv4(out).src, l4.sport, parse_ipv4(out).dst, l4.dport) == (CLUSTER_IP, SVC_PORT, c.ip, 40001)
    conn = node.maps.get(CT_TCP).get(ct_conn_key(c.ip, 40001, b.ip, BACKEND_PORT))
    assert conn is not None and conn.rx_flags_seen & (SYN | ACK) == SYN | ACK
    # Data in both directions keeps the same translation.
    data = tcp_frame(c.ip, CLUSTER_IP, 40001, SVC_PORT, ACK | PSH, smac=c.mac, dmac=c.node_mac, payload=b"GET /",
                     options=b"")
    run = node.run(data, ifindex=c.ifindex)
    out = run.data
    assert run.verdict == TcAction.REDIRECT
    same_but_checksums(out, rewritten(data, dmac=b.mac, smac=b.node_mac, dst=b.ip, dport=BACKEND_PORT))
    assert out[parse_l4(out).payload_off:] == b"GET /"


def test_unrelated_traffic_from_a_backend_is_not_reverse_nated(node: DatapathObjects, client: EndpointRow,
                                                               backend: EndpointRow) -> None:
    program(node.lb, service("web", [(backend.ip, BACKEND_PORT)]))
    b, c = backend, client
    # No connection was opened through the service: the backend talking to the client is plain traffic.
    frame = tcp_frame(b.ip, c.ip, BACKEND_PORT, 40002, SYN | ACK, smac=b.mac, dmac=b.node_mac)
    run = node.run(frame, ifindex=b.ifindex)
    assert run.verdict == TcAction.REDIRECT
    same_but_checksums(run.data, rewritten(frame, dmac=c.mac, smac=c.node_mac))


def test_ct_service_entry_pins_the_backend(node: DatapathObjects, client: EndpointRow) -> None:
    backends = [(f"10.244.2.{i}", BACKEND_PORT) for i in range(10, 18)]
    program(node.lb, service("web", backends))
    c = client
    ct = node.maps.get(CT_TCP)
    seen = set()
    for sport in range(41000, 41024):
        syn = tcp_frame(c.ip, CLUSTER_IP, sport, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
        run = node.run(syn, ifindex=c.ifindex)
        assert run.verdict == TcAction.REDIRECT
        first = parse_ipv4(run.data).dst
        seen.add(first)
        entry = ct[ct_service_key(c.ip, sport, CLUSTER_IP, SVC_PORT)]
        assert str(node.lb.backends[entry.backend_id].address) == first
        for _ in range(3):   # the connection's next packets go to the same backend
            ack = tcp_frame(c.ip, CLUSTER_IP, sport, SVC_PORT, ACK, smac=c.mac, dmac=c.node_mac, options=b"")
            assert parse_ipv4(node.run(ack, ifindex=c.ifindex).data).dst == first
    assert len(seen) > 1, "24 connections over 8 backends all picked one: selection is not random"


def test_remote_backend_goes_out_by_fib_and_its_reply_is_reverse_nated_on_delivery(
        node: DatapathObjects, client: EndpointRow, eth0: int) -> None:
    program(node.lb, service("web", [(REMOTE_BACKEND, BACKEND_PORT)]))
    c = client
    syn = tcp_frame(c.ip, CLUSTER_IP, 40003, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
    run = node.run(syn, ifindex=c.ifindex)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    same_but_checksums(run.data, rewritten(syn, dmac=REMOTE_MAC, smac=UNDERLAY_MAC, dst=REMOTE_BACKEND,
                                           dport=BACKEND_PORT))
    assert run.by_direction == by_direction(Reason.FIB_REDIRECT, Direction.EGRESS)
    # The reply arrives from the underlay, routed by the remote node (TTL already lowered there).
    synack = tcp_frame(REMOTE_BACKEND, c.ip, BACKEND_PORT, 40003, SYN | ACK, smac=REMOTE_MAC, dmac=UNDERLAY_MAC,
                       ttl=63)
    run = node.run(synack, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    same_but_checksums(run.data, rewritten(synack, dmac=c.mac, smac=c.node_mac, src=CLUSTER_IP, sport=SVC_PORT))


def test_cluster_ip_without_backends_answers_port_unreachable(node: DatapathObjects, client: EndpointRow) -> None:
    program(node.lb, service("empty", []))
    c = client
    syn = tcp_frame(c.ip, CLUSTER_IP, 40004, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
    run = node.run(syn, ifindex=c.ifindex)
    out = run.data
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    e, h = parse_eth(out), parse_ipv4(out)
    assert (e.dst, e.src) == (c.mac, c.node_mac)
    assert (h.src, h.dst, h.proto, h.csum_ok) == (CLUSTER_IP, c.ip, IPPROTO_ICMP, True)
    icmp = out[ETH_HLEN + 20:]
    assert (icmp[0], icmp[1]) == (3, 3) and checksum(icmp) == 0
    assert icmp[8:28] == syn[ETH_HLEN:ETH_HLEN + 20], "quotes the original IP header"
    assert run.by_direction == by_direction(Reason.DROP_NO_SERVICE, Direction.EGRESS)
    assert node.maps.get(CT_TCP).get(ct_service_key(c.ip, 40004, CLUSTER_IP, SVC_PORT)) is None


# -- a direct flow that reuses the tuple of an earlier translated one -------------------------------------
# The client opens a connection to the ClusterIP from port P (DNATed to the backend: a connection entry
# client:P -> backend with the service's rev-NAT index), then one straight to the backend from the same
# port P: the very tuple of that entry. Its replies must come back from the backend, not be
# reverse-translated to the ClusterIP (the client's socket would never see them).
def _l4_frame(proto: int, src: str, dst: str, sport: int, dport: int, *, smac: str, dmac: str, flags: int = SYN,
              ttl: int = 64) -> bytes:
    if proto == IPPROTO_TCP:
        return tcp_frame(src, dst, sport, dport, flags, smac=smac, dmac=dmac, ttl=ttl)
    frame = udp_frame(src, dst, sport, dport, b"ping", smac=smac, dmac=dmac)
    if ttl != 64:  # a routed reply: the TTL the remote node left (checksum kept valid)
        return rewritten(frame, dmac=dmac, smac=smac, ttl_dec=64 - ttl)
    return frame


@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.parametrize("proto", [IPPROTO_TCP, IPPROTO_UDP], ids=["tcp", "udp"])
def test_direct_flow_reusing_a_translated_tuple_is_not_reverse_nated(node: DatapathObjects, client: EndpointRow,
                                                                    backend: EndpointRow, eth0: int, proto: int,
                                                                    where: str) -> None:
    c = client
    b_ip = backend.ip if where == "local" else REMOTE_BACKEND
    rid = program(node.lb, service("web", [(b_ip, BACKEND_PORT)], protocol="TCP" if proto == IPPROTO_TCP else "UDP"))
    ct = node.maps.get(CT_TCP if proto == IPPROTO_TCP else CT_ANY)
    sport = 40030

    def reply(flags: int) -> tuple[TcAction, bytes]:
        # The backend's answer to the client: through the backend's lxc (local) or from the underlay,
        # routed by the backend's node (remote), reverse-NATed there on delivery.
        if where == "local":
            run = node.run(_l4_frame(proto, b_ip, c.ip, BACKEND_PORT, sport, smac=backend.mac, dmac=backend.node_mac,
                                     flags=flags), ifindex=backend.ifindex)
        else:
            run = node.run(_l4_frame(proto, b_ip, c.ip, BACKEND_PORT, sport, smac=REMOTE_MAC, dmac=UNDERLAY_MAC,
                                     flags=flags, ttl=63), "cil_from_netdev", ifindex=eth0)
        return run.verdict, run.data

    # A direct flow with no earlier connection on its tuple: no entry is made (no cost per flow).
    direct = _l4_frame(proto, c.ip, b_ip, sport, BACKEND_PORT, smac=c.mac, dmac=c.node_mac)
    assert node.run(direct, ifindex=c.ifindex).verdict == TcAction.REDIRECT
    assert ct.get(ct_conn_key(c.ip, sport, b_ip, BACKEND_PORT, proto)) is None
    # Through the ClusterIP first: translated, its replies come from the ClusterIP.
    to_vip = _l4_frame(proto, c.ip, CLUSTER_IP, sport, SVC_PORT, smac=c.mac, dmac=c.node_mac)
    run = node.run(to_vip, ifindex=c.ifindex)
    assert run.verdict == TcAction.REDIRECT and parse_ipv4(run.data).dst == b_ip, run.by_direction
    assert ct[ct_conn_key(c.ip, sport, b_ip, BACKEND_PORT, proto)].rev_nat_index == rid
    verdict, out = reply(SYN | ACK)
    assert verdict == TcAction.REDIRECT and (parse_ipv4(out).src, parse_l4(out).sport) == (CLUSTER_IP, SVC_PORT)
    if proto == IPPROTO_TCP:  # the client closes it (its FIN, the backend's FIN, the last ACK)
        fin = _l4_frame(proto, c.ip, CLUSTER_IP, sport, SVC_PORT, smac=c.mac, dmac=c.node_mac, flags=FIN | ACK)
        assert node.run(fin, ifindex=c.ifindex).verdict == TcAction.REDIRECT
        assert reply(FIN | ACK)[0] == TcAction.REDIRECT
    # Then straight to the backend from the same port: the translated connection's tuple.
    run = node.run(direct, ifindex=c.ifindex)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    if where == "local":
        same_but_checksums(run.data, rewritten(direct, dmac=backend.mac, smac=backend.node_mac))
    else:
        same_but_checksums(run.data, rewritten(direct, dmac=REMOTE_MAC, smac=UNDERLAY_MAC))
    entry = ct[ct_conn_key(c.ip, sport, b_ip, BACKEND_PORT, proto)]
    assert (entry.rev_nat_index, entry.backend_id) == (0, 0), "a fresh entry without the rev-NAT index"
    verdict, out = reply(SYN | ACK)
    assert verdict == TcAction.REDIRECT
    assert (parse_ipv4(out).src, parse_l4(out).sport, parse_ipv4(out).dst) == (b_ip, BACKEND_PORT, c.ip), \
        "the direct flow's reply was reverse-NATed to the ClusterIP"
    # A data packet of the direct flow (not a SYN) keeps the fresh entry as it is.
    if proto == IPPROTO_TCP:
        ack = _l4_frame(proto, c.ip, b_ip, sport, BACKEND_PORT, smac=c.mac, dmac=c.node_mac, flags=ACK)
        assert node.run(ack, ifindex=c.ifindex).verdict == TcAction.REDIRECT
        assert ct[ct_conn_key(c.ip, sport, b_ip, BACKEND_PORT, proto)].rev_nat_index == 0
    # And through the ClusterIP again from that port: translated again, its replies from the ClusterIP.
    run = node.run(to_vip, ifindex=c.ifindex)
    assert run.verdict == TcAction.REDIRECT and parse_ipv4(run.data).dst == b_ip
    assert ct[ct_conn_key(c.ip, sport, b_ip, BACKEND_PORT, proto)].rev_nat_index == rid
    verdict, out = reply(SYN | ACK)
    assert verdict == TcAction.REDIRECT and (parse_ipv4(out).src, parse_l4(out).sport) == (CLUSTER_IP, SVC_PORT)


# == DSR on the LB node: cil_from_netdev, lb_mode=1 =========================================================
def _nodeport(node: DatapathObjects, backends: list[tuple[str, int]], protocol: Protocol = "TCP") -> None:
    program(node.lb, service("np", backends, protocol=protocol, node_port=NODE_PORT))


def _from_outside_tcp(flags: int, sport: int = 40100, **kw: object) -> bytes:
    return tcp_frame(OUTSIDE, NODE_IP, sport, NODE_PORT, flags, smac=CLIENT_MAC, dmac=UNDERLAY_MAC, **kw)  # type: ignore[arg-type]


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


def test_dsr_rodata(dsr_node: DatapathObjects) -> None:
    ro = dsr_node.objects["host"].rodata
    assert (ro["lb_mode"], ro["routing_mode"], ro["native_mtu"]) == (1, 2, 1500)


def test_dsr_syn_to_remote_backend_carries_the_option(dsr_node: DatapathObjects, eth0: int) -> None:
    _nodeport(dsr_node, [(REMOTE_BACKEND, BACKEND_PORT)])
    syn = _from_outside_tcp(SYN)
    run = dsr_node.run(syn, "cil_from_netdev", ifindex=eth0)
    out = run.data
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    opt = DsrOption(NODE_IP, NODE_PORT).encode()
    h_in, h = parse_ipv4(syn), parse_ipv4(out)
    assert (h.ihl, h.tot_len, h.ttl) == (7, h_in.tot_len + 8, 63)
    assert out[ETH_HLEN + 20:ETH_HLEN + 28] == opt
    assert DsrOption.from_ipv4_header(h.header) == DsrOption(NODE_IP, NODE_PORT)
    assert h.csum_ok
    assert (h.src, h.dst) == (OUTSIDE, REMOTE_BACKEND), "client address kept, DNAT to the backend"
    same_but_checksums(out, _with_dsr_option(syn, opt, dmac=REMOTE_MAC, smac=UNDERLAY_MAC, dst=REMOTE_BACKEND,
                                             dport=BACKEND_PORT))
    # No connection entry on the LB node (the reply never comes back here), only the service entry.
    ct = dsr_node.maps.get(CT_TCP)
    assert ct.get(ct_service_key(OUTSIDE, 40100, NODE_IP, NODE_PORT)) is not None
    assert ct.get(ct_conn_key(OUTSIDE, 40100, REMOTE_BACKEND, BACKEND_PORT)) is None
    assert run.by_direction == by_direction(Reason.FIB_REDIRECT, Direction.INGRESS)


def test_dsr_non_syn_segment_gets_no_option(dsr_node: DatapathObjects, eth0: int) -> None:
    _nodeport(dsr_node, [(REMOTE_BACKEND, BACKEND_PORT)])
    assert dsr_node.run(_from_outside_tcp(SYN, 40101), "cil_from_netdev", ifindex=eth0).verdict == TcAction.REDIRECT
    for flags, payload in ((ACK, b""), (ACK | PSH, b"GET / HTTP/1.0\r\n\r\n")):
        seg = _from_outside_tcp(flags, 40101, payload=payload, options=b"")
        run = dsr_node.run(seg, "cil_from_netdev", ifindex=eth0)
        out = run.data
        assert run.verdict == TcAction.REDIRECT
        assert parse_ipv4(out).ihl == 5 and parse_ipv4(out).tot_len == parse_ipv4(seg).tot_len
        same_but_checksums(out, rewritten(seg, dmac=REMOTE_MAC, smac=UNDERLAY_MAC, dst=REMOTE_BACKEND,
                                          dport=BACKEND_PORT))


def test_dsr_every_udp_datagram_gets_the_option(dsr_node: DatapathObjects, eth0: int) -> None:
    _nodeport(dsr_node, [(REMOTE_BACKEND, BACKEND_PORT)], protocol="UDP")
    opt = DsrOption(NODE_IP, NODE_PORT).encode()
    for i in range(3):
        dgram = udp_frame(OUTSIDE, NODE_IP, 40200, NODE_PORT, f"query {i}".encode(), smac=CLIENT_MAC,
                          dmac=UNDERLAY_MAC)
        run = dsr_node.run(dgram, "cil_from_netdev", ifindex=eth0)
        out = run.data
        assert run.verdict == TcAction.REDIRECT, run.by_direction
        h = parse_ipv4(out)
        assert (h.ihl, h.tot_len, h.csum_ok) == (7, parse_ipv4(dgram).tot_len + 8, True)
        assert out[ETH_HLEN + 20:ETH_HLEN + 28] == opt
        same_but_checksums(out, _with_dsr_option(dgram, opt, dmac=REMOTE_MAC, smac=UNDERLAY_MAC,
                                                 dst=REMOTE_BACKEND, dport=BACKEND_PORT))


def test_dsr_local_backend_gets_no_option(dsr_node: DatapathObjects, backend: EndpointRow, eth0: int) -> None:
    _nodeport(dsr_node, [(backend.ip, BACKEND_PORT)])
    syn = _from_outside_tcp(SYN, 40102)
    run = dsr_node.run(syn, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT
    same_but_checksums(run.data, rewritten(syn, dmac=backend.mac, smac=backend.node_mac, dst=backend.ip,
                                           dport=BACKEND_PORT))


@pytest.mark.parametrize("mtu", [1500, 1400])
def test_dsr_frame_too_big_for_the_option_gets_frag_needed(ns: DatapathFactory, eth0: int, mtu: int) -> None:
    node = load(ns, lb_mode="dsr", mtu=mtu)
    _nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)], protocol="UDP")
    # IP total length mtu - 8 still fits with the option; one byte more does not.
    fits = udp_frame(OUTSIDE, NODE_IP, 40300, NODE_PORT, b"x" * (mtu - 8 - 28), smac=CLIENT_MAC,
                     dmac=UNDERLAY_MAC)
    run = node.run(fits, "cil_from_netdev", ifindex=eth0)
    out = run.data
    assert run.verdict == TcAction.REDIRECT and parse_ipv4(out).tot_len == mtu and parse_ipv4(out).ihl == 7
    big = udp_frame(OUTSIDE, NODE_IP, 40301, NODE_PORT, b"x" * (mtu - 8 - 28 + 1), smac=CLIENT_MAC,
                    dmac=UNDERLAY_MAC)
    run = node.run(big, "cil_from_netdev", ifindex=eth0)
    out = run.data
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    e, h = parse_eth(out), parse_ipv4(out)
    assert (e.dst, e.src) == (CLIENT_MAC, UNDERLAY_MAC), "sent back the way it came"
    assert (h.src, h.dst, h.proto, h.csum_ok, h.ihl) == (NODE_IP, OUTSIDE, IPPROTO_ICMP, True, 5)
    icmp = out[ETH_HLEN + 20:ETH_HLEN + h.tot_len]
    assert (icmp[0], icmp[1]) == (3, 4), "destination unreachable, fragmentation needed"
    assert struct.unpack("!H", icmp[6:8])[0] == mtu - 8
    assert checksum(icmp) == 0
    quoted = parse_ipv4(icmp[8:], 0)
    assert (quoted.src, quoted.dst) == (OUTSIDE, NODE_IP), "the quote names the frontend the client used"
    assert struct.unpack("!HH", icmp[28:32]) == (40301, NODE_PORT)
    assert run.by_direction == by_direction(Reason.DROP_FRAG_NEEDED, Direction.INGRESS)


def test_dsr_too_big_tcp_syn_gets_frag_needed_but_big_data_segment_passes(ns: DatapathFactory, eth0: int) -> None:
    node = load(ns, lb_mode="dsr", mtu=1400)
    _nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)])
    # A SYN with payload (TCP Fast Open) that only overflows with the option.
    syn = _from_outside_tcp(SYN, 40400, payload=b"y" * (1400 - 8 - 20 - 40 + 1))
    run = node.run(syn, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT and parse_ipv4(run.data).proto == IPPROTO_ICMP, run.by_direction
    # A full-size non-SYN segment gets no option, so it is forwarded as is.
    seg = _from_outside_tcp(ACK, 40400, payload=b"z" * (1400 - 40), options=b"")
    run = node.run(seg, "cil_from_netdev", ifindex=eth0)
    out = run.data
    assert run.verdict == TcAction.REDIRECT and parse_ipv4(out).proto == IPPROTO_TCP and parse_ipv4(out).ihl == 5


def test_snat_mode_adds_no_option(node: DatapathObjects, eth0: int) -> None:
    _nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)])
    run = node.run(_from_outside_tcp(SYN, 40500), "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT
    h = parse_ipv4(run.data)
    assert (h.ihl, h.src, h.dst) == (5, NODE_IP, REMOTE_BACKEND), "SNAT mode: the node's address, no option"


# == DSR on the backend node: the option's trust rule, CT + SNAT entries, reply rewrite ==================
def _dsr_arrival(backend: EndpointRow, opt: DsrOption, *, proto: int = IPPROTO_TCP, sport: int = 40600,
                 flags: int = SYN) -> bytes:
    """A frame that a DSR LB node forwarded here: client source, local backend destination, option."""
    b = backend.ip
    l4 = tcp(OUTSIDE, b, sport, BACKEND_PORT, flags, options=SYN_OPTS) if proto == IPPROTO_TCP else \
        udp(OUTSIDE, b, sport, BACKEND_PORT, b"query")
    return eth(UNDERLAY_MAC, REMOTE_MAC, ETH_P_IP) + ipv4(OUTSIDE, b, l4, proto=proto, ttl=63, options=opt.encode())


@pytest.fixture
def backend_node(dsr_node: DatapathObjects, backend: EndpointRow) -> DatapathObjects:
    # Every node has the NodePort rows: its own address and the wildcard (matched for other nodes).
    _nodeport(dsr_node, [(backend.ip, BACKEND_PORT)])
    program(dsr_node.lb, service("np-udp", [(backend.ip, BACKEND_PORT)], protocol="UDP", addr="10.96.0.11",
                                 port=53, node_port=NODE_PORT))
    return dsr_node


@pytest.mark.parametrize("proto", [IPPROTO_TCP, IPPROTO_UDP], ids=["tcp-syn", "udp"])
def test_trusted_option_installs_ct_and_snat_entries(backend_node: DatapathObjects, backend: EndpointRow,
                                                     eth0: int, proto: int) -> None:
    frame = _dsr_arrival(backend, DsrOption(LB_NODE_IP, NODE_PORT), proto=proto)
    run = backend_node.run(frame, "cil_from_netdev", ifindex=eth0)
    out = run.data
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    # Delivered to the pod with the option still in place (Cilium does not strip it).
    assert parse_ipv4(out).ihl == 7 and out[ETH_HLEN + 20:ETH_HLEN + 28] == frame[ETH_HLEN + 20:ETH_HLEN + 28]
    assert parse_eth(out).dst == backend.mac
    ct = backend_node.maps.get(CT_TCP if proto == IPPROTO_TCP else CT_ANY)
    entry = ct.get(ct_conn_key(OUTSIDE, 40600, backend.ip, BACKEND_PORT, proto))
    assert entry is not None, "CT entry for the DSR connection"
    assert entry.flags & CT_F_DSR_INTERNAL and entry.rev_nat_index == 0
    nat = backend_node.maps.get(SNAT).get(nat_key(backend.ip, BACKEND_PORT, OUTSIDE, 40600, proto))
    assert nat is not None, "SNAT entry for the reply tuple"
    assert (str(nat.to_addr), nat.to_port) == (LB_NODE_IP, NODE_PORT)


def test_dsr_reply_leaves_with_the_frontend_as_source(backend_node: DatapathObjects, backend: EndpointRow,
                                                      eth0: int) -> None:
    syn = _dsr_arrival(backend, DsrOption(LB_NODE_IP, NODE_PORT), sport=40601)
    assert backend_node.run(syn, "cil_from_netdev", ifindex=eth0).verdict == TcAction.REDIRECT
    b = backend.ip
    # The pod's reply, routed by the stack towards the leaf: leaves through cil_to_netdev.
    reply = tcp_frame(b, OUTSIDE, BACKEND_PORT, 40601, SYN | ACK, smac=UNDERLAY_MAC, dmac=CLIENT_MAC, ttl=63)
    run = backend_node.run(reply, "cil_to_netdev", ifindex=eth0)
    assert run.verdict == TcAction.OK, run.by_direction
    same_but_checksums(run.data, rewritten(reply, dmac=CLIENT_MAC, smac=UNDERLAY_MAC, src=LB_NODE_IP,
                                           sport=NODE_PORT, ttl_dec=0))
    assert run.by_direction == by_direction(Reason.NAT_EGRESS, Direction.EGRESS)


@pytest.mark.parametrize("opt", [
    pytest.param(DsrOption("10.0.0.99", NODE_PORT), id="address-not-a-cluster-node"),
    pytest.param(DsrOption(OUTSIDE, NODE_PORT), id="address-is-the-client"),
    pytest.param(DsrOption(NODE_IP, NODE_PORT), id="address-is-this-node"),
    pytest.param(DsrOption(LB_NODE_IP, 30999), id="port-not-a-nodeport"),
    pytest.param(DsrOption(LB_NODE_IP, SVC_PORT), id="port-is-the-clusterip-port"),
])
def test_untrusted_option_is_ignored(backend_node: DatapathObjects, backend: EndpointRow, eth0: int,
                                     opt: DsrOption) -> None:
    frame = _dsr_arrival(backend, opt, sport=40700)
    run = backend_node.run(frame, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT, "the packet is still delivered"
    assert parse_eth(run.data).dst == backend.mac
    assert run.by_direction == by_direction(Reason.FORWARDED, Direction.INGRESS), "and not dropped"
    nat = backend_node.maps.get(SNAT)
    assert nat.get(nat_key(backend.ip, BACKEND_PORT, OUTSIDE, 40700)) is None, "no NAT entry"
    entry = backend_node.maps.get(CT_TCP).get(ct_conn_key(OUTSIDE, 40700, backend.ip, BACKEND_PORT))
    assert entry is None or not entry.flags & CT_F_DSR_INTERNAL
    # ...and so the pod's reply leaves with its own address.
    reply = tcp_frame(backend.ip, OUTSIDE, BACKEND_PORT, 40700, SYN | ACK, smac=UNDERLAY_MAC, dmac=CLIENT_MAC)
    run = backend_node.run(reply, "cil_to_netdev", ifindex=eth0)
    assert (run.verdict, run.data) == (TcAction.OK, reply)


def test_option_from_a_node_that_left_is_ignored(backend_node: DatapathObjects, backend: EndpointRow,
                                                 eth0: int) -> None:
    backend_node.maps.nodes.delete(int(IPv4Address(LB_NODE_IP)))
    frame = _dsr_arrival(backend, DsrOption(LB_NODE_IP, NODE_PORT), sport=40800)
    assert backend_node.run(frame, "cil_from_netdev", ifindex=eth0).verdict == TcAction.REDIRECT
    assert backend_node.maps.get(SNAT).get(nat_key(backend.ip, BACKEND_PORT, OUTSIDE, 40800)) is None


def test_option_in_snat_mode_is_ignored(node: DatapathObjects, backend: EndpointRow, eth0: int) -> None:
    _nodeport(node, [(backend.ip, BACKEND_PORT)])
    frame = _dsr_arrival(backend, DsrOption(LB_NODE_IP, NODE_PORT), sport=40900)
    assert node.run(frame, "cil_from_netdev", ifindex=eth0).verdict == TcAction.REDIRECT
    assert node.maps.get(SNAT).get(nat_key(backend.ip, BACKEND_PORT, OUTSIDE, 40900)) is None


# == enable_per_packet_lb, terminating backends, external frontends ========================================
def test_per_packet_lb_off_leaves_a_cluster_ip_packet_untranslated(ns: DatapathFactory, client: EndpointRow,
                                                                    backend: EndpointRow) -> None:
    node = load(ns, per_packet_lb=False)
    assert node.objects["lxc"].rodata["enable_per_packet_lb"] == 0
    program(node.lb, service("web", [(backend.ip, BACKEND_PORT)]))
    c = client
    run = node.run(tcp_frame(c.ip, CLUSTER_IP, 40700, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac), ifindex=c.ifindex)
    assert parse_ipv4(run.data).dst == CLUSTER_IP and parse_l4(run.data).dport == SVC_PORT, "not DNATed"
    assert run.verdict != TcAction.REDIRECT, "a ClusterIP is no local pod: it goes to the stack like any direct flow"
    assert node.maps.get(CT_TCP).get(ct_service_key(c.ip, 40700, CLUSTER_IP, SVC_PORT)) is None


def test_terminating_backend_keeps_its_connections_and_gets_no_new_ones(node: DatapathObjects, client: EndpointRow,
                                                                        backend: EndpointRow) -> None:
    other = REMOTE_BACKEND
    program(node.lb, service("web", [(backend.ip, BACKEND_PORT)]))
    c = client
    syn = tcp_frame(c.ip, CLUSTER_IP, 40800, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
    assert parse_ipv4(node.run(syn, ifindex=c.ifindex).data).dst == backend.ip
    dying = Service("web", Frontend(CLUSTER_IP, SVC_PORT), [Backend(backend.ip, BACKEND_PORT, terminating=True),
                                                           Backend(other, BACKEND_PORT)])
    program(node.lb, dying)
    [front] = [e for e in node.lb.dump() if e["slot"] == 0]
    assert front["backend"] == "0.0.0.0:0 (1 backends)", "count covers the active backend only"
    bid = backend_id(node.lb, backend.ip, BACKEND_PORT)
    assert node.lb.backends[bid].flags == 1, "BE_STATE_TERMINATING, same id as when it was active"
    for _ in range(3):   # the established connection's segments still reach the terminating backend
        ack = tcp_frame(c.ip, CLUSTER_IP, 40800, SVC_PORT, ACK, smac=c.mac, dmac=c.node_mac, options=b"")
        assert parse_ipv4(node.run(ack, ifindex=c.ifindex).data).dst == backend.ip
    for sport in range(40801, 40817):   # every new connection goes to the active one
        syn = tcp_frame(c.ip, CLUSTER_IP, sport, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac)
        assert parse_ipv4(node.run(syn, ifindex=c.ifindex).data).dst == other
    # A SYN reusing the pinned tuple picks again rather than reopening on the terminating backend
    assert parse_ipv4(node.run(tcp_frame(c.ip, CLUSTER_IP, 40800, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac),
                               ifindex=c.ifindex).data).dst == other


def test_only_terminating_backends_still_serve_new_connections(node: DatapathObjects, client: EndpointRow,
                                                               backend: EndpointRow) -> None:
    program(node.lb, Service("web", Frontend(CLUSTER_IP, SVC_PORT),
                             [Backend(backend.ip, BACKEND_PORT, terminating=True)]))
    c = client
    run = node.run(tcp_frame(c.ip, CLUSTER_IP, 40900, SVC_PORT, SYN, smac=c.mac, dmac=c.node_mac), ifindex=c.ifindex)
    assert run.verdict == TcAction.REDIRECT and parse_ipv4(run.data).dst == backend.ip


@pytest.mark.parametrize("kind", ["external_ips", "load_balancer_ips"])
def test_external_and_load_balancer_ips_are_served_from_the_network(node: DatapathObjects, backend: EndpointRow,
                                                                    eth0: int, kind: str) -> None:
    addr = "198.51.100.7" if kind == "external_ips" else "192.0.2.80"
    svc = Service("ext", Frontend(CLUSTER_IP, SVC_PORT), [Backend(backend.ip, BACKEND_PORT)],
                  type="LoadBalancer" if kind == "load_balancer_ips" else "ClusterIP", **{kind: [addr]})
    program(node.lb, svc)
    frame = tcp_frame(OUTSIDE, addr, 41000, SVC_PORT, SYN, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    run = node.run(frame, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT
    same_but_checksums(run.data, rewritten(frame, dmac=backend.mac, smac=backend.node_mac, dst=backend.ip,
                                           dport=BACKEND_PORT))
    # The ClusterIP itself stays unreachable from outside
    cip = tcp_frame(OUTSIDE, CLUSTER_IP, 41001, SVC_PORT, SYN, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    assert node.run(cip, "cil_from_netdev", ifindex=eth0).by_direction == \
        by_direction(Reason.DROP_IS_CLUSTER_IP, Direction.INGRESS)


def test_external_ip_with_local_policy_and_no_local_backend_drops(node: DatapathObjects, eth0: int) -> None:
    program(node.lb, Service("ext", Frontend(CLUSTER_IP, SVC_PORT), [Backend(REMOTE_BACKEND, BACKEND_PORT)],
                             external_ips=["198.51.100.7"], external_traffic_policy="Local"))
    frame = tcp_frame(OUTSIDE, "198.51.100.7", 41100, SVC_PORT, SYN, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    run = node.run(frame, "cil_from_netdev", ifindex=eth0)
    assert run.by_direction == by_direction(Reason.DROP_NO_SERVICE, Direction.INGRESS)
