"""ICMP errors about translated connections, through the real objects with BPF_PROG_TEST_RUN.

An ICMP error (destination unreachable, fragmentation needed in particular, or time exceeded) quotes
the packet it is about. When that packet was translated (NodePort DNAT and SNAT, DSR, per-packet
ClusterIP DNAT, masquerade) the quote and the error's address are the translated ones; the datapath
must hand the error to the endpoint that owns the connection as if nothing had been translated
(``csrc/include/ciliumlite/icmp_err.h``, ``tail_icmp_err_from_netdev`` and ``icmp4_err_to_netdev``
in ``bpf_host.c``, the related lookup in ``bpf_lxc.c`` and at delivery). Each test makes the
connection with its real first packet, crafts the error a router or the backend would send, and
checks the frame that leaves byte for byte against one built from scratch (quoted header checksum,
ICMP checksum and outer header checksum recomputed; the quoted L4 checksum left as quoted, as
documented), and checks every checksum again with scapy's own ``checksum``, independent of the
project's packet builder.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
import test_bpf_lb
from scapy.layers.inet import ICMP, IP, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import Ether
from scapy.utils import checksum as scapy_checksum
from test_bpf_lb import (
    ACK,
    BACKEND_PORT,
    CLIENT_MAC,
    CLUSTER_IP,
    HOST,
    LB_NODE_IP,
    NODE_IP,
    NODE_PORT,
    OUTSIDE,
    POD_CIDR,
    REMOTE_BACKEND,
    REMOTE_IP,
    REMOTE_MAC,
    SVC_PORT,
    SYN,
    UNDERLAY_MAC,
    _dsr_arrival,
    _nodeport,
    backend_row,
    by_direction,
    client_row,
    parse_l4,
    program,
    service,
    tcp_frame,
    udp_frame,
)

from ciliumlite.bpf import TcAction
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.dsr import DsrOption
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.testing.datapath import DatapathFactory, DatapathObjects, EndpointRow
from ciliumlite.testing.packets import (
    ETH_HLEN,
    ETH_P_IP,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    checksum,
    eth,
    ipv4,
    tcp,
    udp,
)

pytestmark = pytest.mark.bpf

# test_bpf_lb's namespace, node and endpoint fixtures, shared as they are.
ns = test_bpf_lb.ns
node = test_bpf_lb.node
dsr_node = test_bpf_lb.dsr_node
backend_node = test_bpf_lb.backend_node
client = test_bpf_lb.client
backend = test_bpf_lb.backend
eth0 = test_bpf_lb.eth0

ROUTER = "10.0.0.254"        # the leaf: between the node and the outside client
FRAG_NEEDED = (3, 4)
PORT_UNREACH = (3, 3)
TTL_EXCEEDED = (11, 0)
MTU = 1200
QUOTE_MAX = 548              # what Linux quotes: 576 - outer IP - ICMP header


# -- frames ------------------------------------------------------------------------------------------------
def quote(src: str, dst: str, sport: int, dport: int, proto: int, *, size: int = 1400, ttl: int = 63,
          options: bytes = b"") -> bytes:
    """The packet an error is about, truncated as a router quotes it (TCP ACK or UDP, ``size`` bytes
    of payload: bigger than the error's MTU)."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    l4 = tcp(src, dst, sport, dport, ACK, payload) if proto == IPPROTO_TCP else udp(src, dst, sport, dport,
                                                                                     payload)
    return ipv4(src, dst, l4, proto=proto, ttl=ttl, options=options)[:QUOTE_MAX]


def translated_quote(q: bytes, *, src: str | None = None, dst: str | None = None, sport: int | None = None,
                     dport: int | None = None) -> bytes:
    """``q`` as a correct translation leaves it: addresses and ports replaced, the quoted IPv4
    header checksum recomputed, the quoted L4 checksum as quoted."""
    ihl = (q[0] & 0xF) * 4
    hdr = bytearray(q[:ihl])
    if src:
        hdr[12:16] = bytes(map(int, src.split(".")))
    if dst:
        hdr[16:20] = bytes(map(int, dst.split(".")))
    hdr[10:12] = b"\0\0"
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    l4 = bytearray(q[ihl:])
    if sport is not None:
        l4[0:2] = sport.to_bytes(2, "big")
    if dport is not None:
        l4[2:4] = dport.to_bytes(2, "big")
    return bytes(hdr) + bytes(l4)


def icmp_error(src: str, dst: str, q: bytes, kind: tuple[int, int], *, smac: str, dmac: str,
               ttl: int = 64) -> bytes:
    """An ICMP error from ``src`` to ``dst`` quoting ``q``; checksums computed from scratch."""
    typ, code = kind
    body = struct.pack("!BBHHH", typ, code, 0, 0, MTU if kind == FRAG_NEEDED else 0) + q
    body = body[:2] + checksum(body).to_bytes(2, "big") + body[4:]
    return eth(dmac, smac, ETH_P_IP) + ipv4(src, dst, body, proto=IPPROTO_ICMP, ttl=ttl, ident=0x5151, frag=0)


def check_with_scapy(frame: bytes, *, src: str, dst: str, qsrc: str, qdst: str, qsport: int, qdport: int,
                     kind: tuple[int, int]) -> None:
    """Decode ``frame`` with scapy and verify the outer IPv4, ICMP and quoted IPv4 checksums with
    scapy's checksum (not the project's)."""
    p = Ether(frame)
    outer = frame[ETH_HLEN:]
    ihl = (outer[0] & 0xF) * 4
    assert scapy_checksum(outer[:ihl]) == 0, "outer IPv4 header checksum"
    icmp = outer[ihl:p[IP].len]
    assert scapy_checksum(icmp) == 0, "ICMP checksum over the rewritten quote"
    qihl = (icmp[8] & 0xF) * 4
    assert scapy_checksum(icmp[8:8 + qihl]) == 0, "quoted IPv4 header checksum"
    assert (p[IP].src, p[IP].dst, p[ICMP].type, p[ICMP].code) == (src, dst, *kind)
    inner = p[IPerror]
    l4 = inner[TCPerror] if inner.proto == IPPROTO_TCP else inner[UDPerror]
    assert (inner.src, inner.dst, l4.sport, l4.dport) == (qsrc, qdst, qsport, qdport)


def quoted_l4_csum(frame: bytes) -> bytes:
    outer = frame[ETH_HLEN:]
    ihl = (outer[0] & 0xF) * 4
    q = outer[ihl + 8:]
    qihl = (q[0] & 0xF) * 4
    off = 16 if q[9] == IPPROTO_TCP else 6
    return q[qihl + off:qihl + off + 2]


def expect(run_data: bytes, want: bytes, **scapy_kw: object) -> None:
    assert run_data == want, f"\n got  {run_data[:90].hex()}\n want {want[:90].hex()}"
    check_with_scapy(run_data, **scapy_kw)  # type: ignore[arg-type]


# == cil_from_netdev: errors to the node's address ===========================================================
@pytest.mark.parametrize("kind", [FRAG_NEEDED, TTL_EXCEEDED], ids=["frag-needed", "ttl-exceeded"])
def test_router_error_about_a_nodeport_reply_reaches_the_local_backend(node: DatapathObjects, backend: EndpointRow,
                                                                       eth0: int, kind: tuple[int, int]) -> None:
    """The reply of a NodePort connection (local backend) is too big for the router towards the client:
    its frag-needed to the NodePort address reaches the backend pod, quoting backend -> client."""
    _nodeport(node, [(backend.ip, BACKEND_PORT)])
    syn = tcp_frame(OUTSIDE, NODE_IP, 40100, NODE_PORT, SYN, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    assert node.run(syn, "cil_from_netdev", ifindex=eth0).verdict == TcAction.REDIRECT
    q = quote(NODE_IP, OUTSIDE, NODE_PORT, 40100, IPPROTO_TCP)
    err = icmp_error(ROUTER, NODE_IP, q, kind, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    run = node.run(err, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    want = icmp_error(ROUTER, backend.ip, translated_quote(q, src=backend.ip, sport=BACKEND_PORT), kind,
                      smac=backend.node_mac, dmac=backend.mac, ttl=63)
    expect(run.data, want, src=ROUTER, dst=backend.ip, qsrc=backend.ip, qdst=OUTSIDE, qsport=BACKEND_PORT,
           qdport=40100, kind=kind)
    assert quoted_l4_csum(run.data) == quoted_l4_csum(err), "quoted L4 checksum left as quoted"
    assert run.by_direction == by_direction(Reason.FORWARDED, Direction.INGRESS)


def test_router_error_about_a_snat_nodeport_reply_reaches_the_remote_backend(node: DatapathObjects,
                                                                             eth0: int) -> None:
    """NodePort SNAT to a remote backend: the frag-needed about the reply (frontend -> client) goes to
    the backend quoting the reply as the backend sent it, backend -> node_ip:P."""
    _nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)])
    syn = tcp_frame(OUTSIDE, NODE_IP, 40200, NODE_PORT, SYN, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    run = node.run(syn, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    snat_port = parse_l4(run.data).sport
    q = quote(NODE_IP, OUTSIDE, NODE_PORT, 40200, IPPROTO_TCP)
    err = icmp_error(ROUTER, NODE_IP, q, FRAG_NEEDED, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    run = node.run(err, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    tq = translated_quote(q, src=REMOTE_BACKEND, sport=BACKEND_PORT, dst=NODE_IP, dport=snat_port)
    want = icmp_error(ROUTER, REMOTE_BACKEND, tq, FRAG_NEEDED, smac=UNDERLAY_MAC, dmac=REMOTE_MAC, ttl=63)
    expect(run.data, want, src=ROUTER, dst=REMOTE_BACKEND, qsrc=REMOTE_BACKEND, qdst=NODE_IP,
           qsport=BACKEND_PORT, qdport=snat_port, kind=FRAG_NEEDED)
    assert run.by_direction == by_direction(Reason.FIB_REDIRECT, Direction.INGRESS)


def test_backend_error_about_a_snat_nodeport_request_reaches_the_outside_client(node: DatapathObjects,
                                                                                 eth0: int) -> None:
    """NodePort SNAT to a remote backend, UDP: the backend's port unreachable (to node_ip, quoting
    node_ip:P -> backend) reaches the client from the NodePort address, quoting client -> frontend."""
    _nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)], protocol="UDP")
    dgram = udp_frame(OUTSIDE, NODE_IP, 40300, NODE_PORT, b"query", smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    run = node.run(dgram, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    snat_port = parse_l4(run.data).sport
    q = quote(NODE_IP, REMOTE_BACKEND, snat_port, BACKEND_PORT, IPPROTO_UDP, size=5)
    err = icmp_error(REMOTE_BACKEND, NODE_IP, q, PORT_UNREACH, smac=REMOTE_MAC, dmac=UNDERLAY_MAC, ttl=63)
    run = node.run(err, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    tq = translated_quote(q, src=OUTSIDE, sport=40300, dst=NODE_IP, dport=NODE_PORT)
    want = icmp_error(NODE_IP, OUTSIDE, tq, PORT_UNREACH, smac=UNDERLAY_MAC, dmac=CLIENT_MAC, ttl=62)
    expect(run.data, want, src=NODE_IP, dst=OUTSIDE, qsrc=OUTSIDE, qdst=NODE_IP, qsport=40300,
           qdport=NODE_PORT, kind=PORT_UNREACH)
    assert quoted_l4_csum(run.data) == quoted_l4_csum(err), "quoted L4 checksum left as quoted"
    assert run.by_direction == by_direction(Reason.FIB_REDIRECT, Direction.INGRESS)


def test_router_error_about_a_dsr_reply_reaches_the_remote_backend(dsr_node: DatapathObjects, eth0: int) -> None:
    """DSR: the backend's node sends the reply from the frontend; a frag-needed about it comes to the
    LB node (the frontend's owner), whose CT service entry names the backend."""
    _nodeport(dsr_node, [(REMOTE_BACKEND, BACKEND_PORT)])
    syn = tcp_frame(OUTSIDE, NODE_IP, 40700, NODE_PORT, SYN, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    assert dsr_node.run(syn, "cil_from_netdev", ifindex=eth0).verdict == TcAction.REDIRECT
    q = quote(NODE_IP, OUTSIDE, NODE_PORT, 40700, IPPROTO_TCP)
    err = icmp_error(ROUTER, NODE_IP, q, FRAG_NEEDED, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    run = dsr_node.run(err, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    tq = translated_quote(q, src=REMOTE_BACKEND, sport=BACKEND_PORT)
    want = icmp_error(ROUTER, REMOTE_BACKEND, tq, FRAG_NEEDED, smac=UNDERLAY_MAC, dmac=REMOTE_MAC, ttl=63)
    expect(run.data, want, src=ROUTER, dst=REMOTE_BACKEND, qsrc=REMOTE_BACKEND, qdst=OUTSIDE,
           qsport=BACKEND_PORT, qdport=40700, kind=FRAG_NEEDED)


@pytest.mark.parametrize("q", [
    pytest.param(quote(NODE_IP, "198.51.100.7", NODE_PORT, 5555, IPPROTO_TCP), id="no-connection"),
    pytest.param(quote(NODE_IP, "198.51.100.7", 40000, 443, IPPROTO_UDP), id="snat-port-without-mapping"),
    pytest.param(quote("10.0.0.99", OUTSIDE, 80, 40000, IPPROTO_TCP), id="quote-not-from-this-node"),
])
def test_error_about_an_untranslated_connection_passes_unchanged(node: DatapathObjects, eth0: int,
                                                                 q: bytes) -> None:
    err = icmp_error(ROUTER, NODE_IP, q, FRAG_NEEDED, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    run = node.run(err, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.OK and run.data == err
    assert run.by_direction == by_direction(Reason.TO_STACK, Direction.INGRESS)


# == cil_from_container: errors from a backend pod ============================================================
def test_backend_port_unreachable_reaches_a_cluster_ip_client_from_the_service(
        node: DatapathObjects, client: EndpointRow, backend: EndpointRow) -> None:
    program(node.lb, service("dns", [(backend.ip, BACKEND_PORT)], protocol="UDP"))
    c, b = client, backend
    dgram = udp_frame(c.ip, CLUSTER_IP, 40400, SVC_PORT, b"query", smac=c.mac, dmac=c.node_mac)
    assert node.run(dgram, ifindex=c.ifindex).verdict == TcAction.REDIRECT
    q = quote(c.ip, b.ip, 40400, BACKEND_PORT, IPPROTO_UDP, size=5)
    err = icmp_error(b.ip, c.ip, q, PORT_UNREACH, smac=b.mac, dmac=b.node_mac)
    run = node.run(err, ifindex=b.ifindex)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    tq = translated_quote(q, dst=CLUSTER_IP, dport=SVC_PORT)
    want = icmp_error(CLUSTER_IP, c.ip, tq, PORT_UNREACH, smac=c.node_mac, dmac=c.mac, ttl=63)
    expect(run.data, want, src=CLUSTER_IP, dst=c.ip, qsrc=c.ip, qdst=CLUSTER_IP, qsport=40400, qdport=SVC_PORT,
           kind=PORT_UNREACH)
    assert run.by_direction == by_direction(Reason.FORWARDED, Direction.EGRESS)


def test_backend_port_unreachable_reaches_the_nodeport_client_from_the_node(node: DatapathObjects,
                                                                            backend: EndpointRow,
                                                                            eth0: int) -> None:
    _nodeport(node, [(backend.ip, BACKEND_PORT)], protocol="UDP")
    dgram = udp_frame(OUTSIDE, NODE_IP, 40500, NODE_PORT, b"query", smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    assert node.run(dgram, "cil_from_netdev", ifindex=eth0).verdict == TcAction.REDIRECT
    b = backend
    q = quote(OUTSIDE, b.ip, 40500, BACKEND_PORT, IPPROTO_UDP, size=5)
    err = icmp_error(b.ip, OUTSIDE, q, PORT_UNREACH, smac=b.mac, dmac=b.node_mac)
    run = node.run(err, ifindex=b.ifindex)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    tq = translated_quote(q, dst=NODE_IP, dport=NODE_PORT)
    want = icmp_error(NODE_IP, OUTSIDE, tq, PORT_UNREACH, smac=UNDERLAY_MAC, dmac=CLIENT_MAC, ttl=63)
    expect(run.data, want, src=NODE_IP, dst=OUTSIDE, qsrc=OUTSIDE, qdst=NODE_IP, qsport=40500,
           qdport=NODE_PORT, kind=PORT_UNREACH)
    assert run.by_direction == by_direction(Reason.FIB_REDIRECT, Direction.EGRESS)


def test_unrelated_error_from_a_pod_is_untouched(node: DatapathObjects, client: EndpointRow) -> None:
    c = client
    q = quote("198.51.100.7", c.ip, 443, 40000, IPPROTO_TCP)
    err = icmp_error(c.ip, "198.51.100.7", q, PORT_UNREACH, smac=c.mac, dmac=c.node_mac)
    run = node.run(err, ifindex=c.ifindex)
    assert run.verdict == TcAction.OK and run.data == err


# == delivery: an error from a remote backend arriving for a local client ====================================
def test_remote_backend_error_is_translated_on_delivery(node: DatapathObjects, client: EndpointRow,
                                                        eth0: int) -> None:
    program(node.lb, service("dns", [(REMOTE_BACKEND, BACKEND_PORT)], protocol="UDP"))
    c = client
    dgram = udp_frame(c.ip, CLUSTER_IP, 40800, SVC_PORT, b"query", smac=c.mac, dmac=c.node_mac)
    assert node.run(dgram, ifindex=c.ifindex).verdict == TcAction.REDIRECT
    q = quote(c.ip, REMOTE_BACKEND, 40800, BACKEND_PORT, IPPROTO_UDP, size=5)
    err = icmp_error(REMOTE_BACKEND, c.ip, q, PORT_UNREACH, smac=REMOTE_MAC, dmac=UNDERLAY_MAC, ttl=63)
    run = node.run(err, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    tq = translated_quote(q, dst=CLUSTER_IP, dport=SVC_PORT)
    want = icmp_error(CLUSTER_IP, c.ip, tq, PORT_UNREACH, smac=c.node_mac, dmac=c.mac, ttl=62)
    expect(run.data, want, src=CLUSTER_IP, dst=c.ip, qsrc=c.ip, qdst=CLUSTER_IP, qsport=40800, qdport=SVC_PORT,
           kind=PORT_UNREACH)


# == cil_to_netdev: errors a pod sends about DSR and masqueraded connections =================================
def test_dsr_backend_port_unreachable_leaves_from_the_frontend(backend_node: DatapathObjects,
                                                               backend: EndpointRow, eth0: int) -> None:
    arrival = _dsr_arrival(backend, DsrOption(LB_NODE_IP, NODE_PORT), proto=IPPROTO_UDP, sport=40610)
    assert backend_node.run(arrival, "cil_from_netdev", ifindex=eth0).verdict == TcAction.REDIRECT
    b = backend
    q = arrival[ETH_HLEN:]          # as the pod got it: IHL 7, the DSR option in the quote
    err = icmp_error(b.ip, OUTSIDE, q, PORT_UNREACH, smac=UNDERLAY_MAC, dmac=CLIENT_MAC, ttl=63)
    run = backend_node.run(err, "cil_to_netdev", ifindex=eth0)
    assert run.verdict == TcAction.OK, run.by_direction
    tq = translated_quote(q, dst=LB_NODE_IP, dport=NODE_PORT)
    want = icmp_error(LB_NODE_IP, OUTSIDE, tq, PORT_UNREACH, smac=UNDERLAY_MAC, dmac=CLIENT_MAC, ttl=63)
    expect(run.data, want, src=LB_NODE_IP, dst=OUTSIDE, qsrc=OUTSIDE, qdst=LB_NODE_IP, qsport=40610,
           qdport=NODE_PORT, kind=PORT_UNREACH)
    assert run.by_direction == by_direction(Reason.NAT_EGRESS, Direction.EGRESS)


@pytest.fixture
def masq_node(ns: DatapathFactory) -> DatapathObjects:
    cfg = DatapathConfig(node_name="worker1", pod_cidr=POD_CIDR, node_ip=NODE_IP, routing="native",
                         bpf_masquerade=True)
    dp = ns(cfg, ("lxc", "host"), native_ifindex=ns.ifindex("eth0"))
    dp.add_endpoints(client_row(ns), backend_row(ns), HOST)
    for n in (NODE_IP, LB_NODE_IP, REMOTE_IP):
        dp.maps.nodes.set(int(IPv4Address(n)), 1)
    return dp


def test_masquerade_both_directions(masq_node: DatapathObjects, client: EndpointRow, eth0: int) -> None:
    """A masqueraded pod flow: a router's frag-needed about the pod's request (quoting node_ip:P ->
    server) reaches the pod quoting pod -> server; the pod's own error about the server's packet
    leaves from node_ip, quoting server -> node_ip:P."""
    c, server = client, "198.51.100.7"
    out = tcp_frame(c.ip, server, 40900, 443, SYN, smac=UNDERLAY_MAC, dmac=CLIENT_MAC, ttl=63)
    run = masq_node.run(out, "cil_to_netdev", ifindex=eth0)
    assert run.verdict == TcAction.OK, run.by_direction
    port = parse_l4(run.data).sport
    q = quote(NODE_IP, server, port, 443, IPPROTO_TCP)
    err = icmp_error(ROUTER, NODE_IP, q, FRAG_NEEDED, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    run = masq_node.run(err, "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.REDIRECT, run.by_direction
    want = icmp_error(ROUTER, c.ip, translated_quote(q, src=c.ip, sport=40900), FRAG_NEEDED, smac=c.node_mac,
                      dmac=c.mac, ttl=63)
    expect(run.data, want, src=ROUTER, dst=c.ip, qsrc=c.ip, qdst=server, qsport=40900, qdport=443,
           kind=FRAG_NEEDED)

    q2 = quote(server, c.ip, 443, 40900, IPPROTO_TCP, size=10)
    err2 = icmp_error(c.ip, server, q2, PORT_UNREACH, smac=UNDERLAY_MAC, dmac=CLIENT_MAC, ttl=63)
    run = masq_node.run(err2, "cil_to_netdev", ifindex=eth0)
    assert run.verdict == TcAction.OK, run.by_direction
    want2 = icmp_error(NODE_IP, server, translated_quote(q2, dst=NODE_IP, dport=port), PORT_UNREACH,
                       smac=UNDERLAY_MAC, dmac=CLIENT_MAC, ttl=63)
    expect(run.data, want2, src=NODE_IP, dst=server, qsrc=server, qdst=NODE_IP, qsport=443, qdport=port,
           kind=PORT_UNREACH)
    assert run.by_direction == by_direction(Reason.NAT_EGRESS, Direction.EGRESS)
