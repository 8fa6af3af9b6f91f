"""Golden packets for ``bpf_xdp.o`` (``cil_xdp_entry``) with BPF_PROG_TEST_RUN.

* Prefilter: a source in a denied /24 (LPM trie) or /32 (hash) is XDP_DROP, counted
  ``DROP_PREFILTER`` in file ``bpf_xdp.c``; a miss, non-IPv4 and truncated frames are XDP_PASS
  with nothing counted.
* NodePort acceleration (native routing, remote backend): SNAT mode rewrites a SYN to the backend
  (DNAT + SNAT, MACs from the FIB, TTL-1, valid checksums) and returns XDP_TX; the backend's reply is
  reverse-translated to the client, XDP_TX too; DSR mode adds the IPv4 option instead. XDP and tc
  share the maps: a connection XDP started is continued by ``cil_from_netdev`` with the same backend
  and port, and Maglev picks the same backend in both.
* Everything XDP must leave to tc passes untouched: a local backend, a ClusterIP, a frontend without
  backends, an unresolved next hop, a frame for another MAC, the knob off.

The namespace, routes and neighbours are those of ``test_bpf_lb.py``'s ``ns`` fixture (copied
here: fixtures are not shared between modules).
"""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address

import pytest
from test_bpf_lb import (
    ACK,
    BACKEND_PORT,
    CLIENT_MAC,
    CLUSTER_IP,
    CT_F_NODE_PORT,
    HOST,
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
    _with_dsr_option,
    backend_row,
    client_row,
    ct_conn_key,
    ct_service_key,
    nat_key,
    parse_l4,
    program,
    rewritten,
    same_but_checksums,
    service,
    tcp_frame,
    udp_frame,
)

from ciliumlite.bpf import TcAction, XdpAction
from ciliumlite.datapath.config import DatapathConfig, LbMode
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.datapath.dsr import DsrOption
from ciliumlite.datapath.maps import CT_TCP, PREFILTER_DYN, PREFILTER_FIX, SNAT
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.datapath.records import Cidr4Key, Cidr4Value
from ciliumlite.service import Backend, Frontend, Service
from ciliumlite.testing.datapath import DatapathFactory, DatapathObjects, Tally, source_file_id
from ciliumlite.testing.packets import ETH_HLEN, ETH_P_IP, arp_frame, eth, icmp_echo, ipv4, parse_ipv4

pytestmark = pytest.mark.bpf

UNRESOLVED_BACKEND = "10.244.3.7"   # routed via 10.0.0.14, whose neighbour entry does not exist
DENIED_NET = "198.51.100.0/24"
DENIED_HOST = "198.51.100.7"
DENIED_32 = "192.0.2.99"
XDP_FILE = source_file_id("bpf_xdp.c")


@pytest.fixture
def ns(datapath_objects: DatapathFactory) -> DatapathFactory:
    ns = datapath_objects
    ns.underlay("eth0", f"{NODE_IP}/24", mac=UNDERLAY_MAC,
                neighbours={REMOTE_IP: REMOTE_MAC, "10.0.0.254": CLIENT_MAC})
    for name in ("lxccli", "lxcbe"):
        ns.veth(name)
    ns.ip("route", "add", "10.244.2.0/24", "via", REMOTE_IP)
    ns.ip("route", "add", "10.244.3.0/24", "via", "10.0.0.14")
    for world in ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"):
        ns.ip("route", "add", world, "via", "10.0.0.254")
    set_sysctl(ns.netns, "net.ipv4.ip_forward", "1")
    return ns


def load(ns: DatapathFactory, *, lb_mode: LbMode = "snat", nodeport: bool = True,
         native_mac: str | None = UNDERLAY_MAC) -> DatapathObjects:
    """bpf_lxc, bpf_host and bpf_xdp of one node, sharing its pins (as a node loads them)."""
    cfg = DatapathConfig(node_name="worker1", pod_cidr=POD_CIDR, node_ip=NODE_IP, routing="native",
                         load_balancer_mode=lb_mode, acceleration="native" if nodeport else "disabled")
    dp = ns(cfg, ("lxc", "host", "xdp"), native_ifindex=ns.ifindex("eth0"), xdp_nodeport=nodeport,
            native_mac=native_mac)
    dp.add_endpoints(client_row(ns), backend_row(ns), HOST)
    for node in (NODE_IP, REMOTE_IP):
        dp.maps.nodes.set(int(IPv4Address(node)), 1)
    return dp


@pytest.fixture
def node(ns: DatapathFactory) -> DatapathObjects:
    return load(ns)


@pytest.fixture
def eth0(ns: DatapathFactory) -> int:
    return ns.ifindex("eth0")


def xdp(node: DatapathObjects, frame: bytes, eth0: int):  # type: ignore[no-untyped-def]
    return node.run(frame, "cil_xdp_entry", ifindex=eth0)


def deny(node: DatapathObjects, cidr: str) -> None:
    addr, plen = cidr.split("/")
    spec = PREFILTER_FIX if plen == "32" else PREFILTER_DYN
    node.maps.get(spec).set(Cidr4Key(int(plen), IPv4Address(addr)), Cidr4Value())


def from_outside(flags: int, sport: int = 41000, src: str = OUTSIDE, dport: int = NODE_PORT, **kw: object) -> bytes:
    return tcp_frame(src, NODE_IP, sport, dport, flags, smac=CLIENT_MAC, dmac=UNDERLAY_MAC, **kw)  # type: ignore[arg-type]


def nodeport(node: DatapathObjects, backends: list[tuple[str, int]], **kw: object) -> None:
    program(node.lb, service("np", backends, node_port=NODE_PORT, **kw))  # type: ignore[arg-type]


# == prefilter ===============================================================================================
def test_prefilter_lpm_hit_is_dropped_and_counted_at_xdp(node: DatapathObjects, eth0: int) -> None:
    deny(node, DENIED_NET)
    frame = eth(UNDERLAY_MAC, CLIENT_MAC, ETH_P_IP) + ipv4(DENIED_HOST, NODE_IP, icmp_echo())
    run = xdp(node, frame, eth0)
    assert run.xdp_action == XdpAction.DROP
    assert run.counted == Counter({Tally(Reason.DROP_PREFILTER, Direction.INGRESS, XDP_FILE): 1})


def test_prefilter_exact_hit_is_dropped(node: DatapathObjects, eth0: int) -> None:
    deny(node, f"{DENIED_32}/32")
    hit = from_outside(SYN, src=DENIED_32)
    miss = from_outside(SYN, src="192.0.2.98", dport=9)
    assert xdp(node, hit, eth0).xdp_action == XdpAction.DROP
    run = xdp(node, miss, eth0)
    assert run.xdp_action == XdpAction.PASS and run.data == miss and not run.counted


def test_prefilter_miss_passes_untouched(node: DatapathObjects, eth0: int) -> None:
    deny(node, DENIED_NET)
    frame = eth(UNDERLAY_MAC, CLIENT_MAC, ETH_P_IP) + ipv4("198.51.101.7", NODE_IP, icmp_echo())
    run = xdp(node, frame, eth0)
    assert (run.xdp_action, run.data, run.counted) == (XdpAction.PASS, frame, Counter())


def test_prefilter_checks_the_source_not_the_destination(node: DatapathObjects, eth0: int) -> None:
    deny(node, DENIED_NET)
    frame = eth(UNDERLAY_MAC, CLIENT_MAC, ETH_P_IP) + ipv4(OUTSIDE, DENIED_HOST, icmp_echo())
    assert xdp(node, frame, eth0).xdp_action == XdpAction.PASS


@pytest.mark.parametrize("frame", [
    pytest.param(eth(UNDERLAY_MAC, CLIENT_MAC, ETH_P_IP), id="ethernet-only"),
    pytest.param(eth(UNDERLAY_MAC, CLIENT_MAC, ETH_P_IP) + ipv4(DENIED_HOST, NODE_IP, icmp_echo())[:12], id="ip-cut"),
    pytest.param(eth(UNDERLAY_MAC, CLIENT_MAC, ETH_P_IP) + b"\x46" + ipv4(DENIED_HOST, NODE_IP, b"")[1:], id="ihl-past-end"),
    pytest.param(eth(UNDERLAY_MAC, CLIENT_MAC, ETH_P_IP) + b"\x60" + bytes(39), id="ipv6-ethertype-ipv4"),
    pytest.param(arp_frame(1, CLIENT_MAC, DENIED_HOST, NODE_IP), id="arp"),
])
def test_malformed_and_non_ipv4_frames_pass_uncounted(node: DatapathObjects, eth0: int, frame: bytes) -> None:
    deny(node, DENIED_NET)
    run = xdp(node, frame, eth0)
    assert run.xdp_action == XdpAction.PASS and run.data == frame and not run.counted


def test_truncated_tcp_header_of_a_nodeport_frame_passes(node: DatapathObjects, eth0: int) -> None:
    nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)])
    full = from_outside(SYN)
    cut = full[:ETH_HLEN + 20 + 10]
    cut = cut[:ETH_HLEN + 2] + (30).to_bytes(2, "big") + cut[ETH_HLEN + 4:]  # tot_len matches the cut
    run = xdp(node, cut, eth0)
    assert run.xdp_action == XdpAction.PASS and run.data == cut and not run.counted


# == NodePort acceleration, SNAT mode ==========================================================================
def test_nodeport_syn_to_remote_backend_is_sent_back_out_snated(node: DatapathObjects, eth0: int) -> None:
    nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)])
    syn = from_outside(SYN)
    run = xdp(node, syn, eth0)
    assert run.xdp_action == XdpAction.TX, run.counted
    assert run.counted == Counter({Tally(Reason.XDP_FORWARDED, Direction.INGRESS, source_file_id("fib.h")): 1})
    h, l4 = parse_ipv4(run.data), parse_l4(run.data)
    assert (h.src, h.dst, l4.dport, h.ttl) == (NODE_IP, REMOTE_BACKEND, BACKEND_PORT, 63)
    nat = node.maps.get(SNAT).get(nat_key(OUTSIDE, 41000, REMOTE_BACKEND, BACKEND_PORT))
    assert nat is not None and str(nat.to_addr) == NODE_IP and nat.to_port == l4.sport
    same_but_checksums(run.data, rewritten(syn, dmac=REMOTE_MAC, smac=UNDERLAY_MAC, src=NODE_IP, dst=REMOTE_BACKEND,
                                           sport=l4.sport, dport=BACKEND_PORT))
    ct = node.maps.get(CT_TCP)
    entry = ct.get(ct_conn_key(OUTSIDE, 41000, REMOTE_BACKEND, BACKEND_PORT))
    assert entry is not None and entry.flags & CT_F_NODE_PORT
    assert ct.get(ct_service_key(OUTSIDE, 41000, NODE_IP, NODE_PORT)) is not None


def test_tc_continues_a_connection_xdp_started_with_the_same_backend_and_port(node: DatapathObjects,
                                                                           eth0: int) -> None:
    nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT), ("10.244.2.8", BACKEND_PORT), ("10.244.2.9", BACKEND_PORT)])
    first = xdp(node, from_outside(SYN, 41001), eth0)
    assert first.xdp_action == XdpAction.TX
    h0, l0 = parse_ipv4(first.data), parse_l4(first.data)
    for _ in range(5):
        tc = node.run(from_outside(ACK, 41001), "cil_from_netdev", ifindex=eth0)
        assert tc.verdict == TcAction.REDIRECT
        h, l4 = parse_ipv4(tc.data), parse_l4(tc.data)
        assert (h.src, h.dst, l4.sport, l4.dport) == (h0.src, h0.dst, l0.sport, l0.dport)
        again = xdp(node, from_outside(ACK, 41001), eth0)
        assert (parse_ipv4(again.data).dst, parse_l4(again.data).sport) == (h0.dst, l0.sport)


def test_backend_reply_is_reverse_translated_to_the_client_at_xdp(node: DatapathObjects, eth0: int) -> None:
    nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)])
    out = xdp(node, from_outside(SYN, 41002), eth0)
    nat_port = parse_l4(out.data).sport
    reply = tcp_frame(REMOTE_BACKEND, NODE_IP, BACKEND_PORT, nat_port, SYN | ACK, smac=REMOTE_MAC, dmac=UNDERLAY_MAC)
    run = xdp(node, reply, eth0)
    assert run.xdp_action == XdpAction.TX, run.counted
    same_but_checksums(run.data, rewritten(reply, dmac=CLIENT_MAC, smac=UNDERLAY_MAC, src=NODE_IP, dst=OUTSIDE,
                                           sport=NODE_PORT, dport=41002))


def test_udp_nodeport_is_accelerated_too(node: DatapathObjects, eth0: int) -> None:
    nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)], protocol="UDP")
    dgram = udp_frame(OUTSIDE, NODE_IP, 41003, NODE_PORT, b"hello", smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    run = xdp(node, dgram, eth0)
    assert run.xdp_action == XdpAction.TX
    assert (parse_ipv4(run.data).dst, parse_l4(run.data).csum_ok) == (REMOTE_BACKEND, True)


def test_maglev_picks_the_backend_tc_picks(ns: DatapathFactory, eth0: int) -> None:
    backends = [(f"10.244.2.{i}", BACKEND_PORT) for i in range(10, 16)]
    svc = Service("mg", Frontend(CLUSTER_IP, SVC_PORT, "TCP"), [Backend(a, p) for a, p in backends],
                  type="NodePort", node_port=NODE_PORT, maglev=True)
    accel = load(ns)
    cfg = DatapathConfig(node_name="worker2", pod_cidr=POD_CIDR, node_ip=NODE_IP, routing="native")
    # A second node with its own pins (and so its own CT): only Maglev can make them agree.
    with DatapathObjects(cfg, ("lxc", "host"), netns=ns.netns, native_ifindex=eth0) as plain:
        for n in (accel, plain):
            program(n.lb, svc)
        picked = set()
        for sport in range(42000, 42040):
            a = xdp(accel, from_outside(SYN, sport), eth0)
            t = plain.run(from_outside(SYN, sport), "cil_from_netdev", ifindex=eth0)
            assert a.xdp_action == XdpAction.TX and t.verdict == TcAction.REDIRECT
            assert parse_ipv4(a.data).dst == parse_ipv4(t.data).dst
            picked.add(parse_ipv4(a.data).dst)
    assert len(picked) > 1, "Maglev spread the clients"


# == DSR =====================================================================================================
def test_dsr_syn_carries_the_option_and_leaves_with_xdp_tx(ns: DatapathFactory, eth0: int) -> None:
    node = load(ns, lb_mode="dsr")
    nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)])
    syn = from_outside(SYN, 41010)
    run = xdp(node, syn, eth0)
    assert run.xdp_action == XdpAction.TX, run.counted
    opt = DsrOption(NODE_IP, NODE_PORT).encode()
    h = parse_ipv4(run.data)
    assert (h.ihl, h.src, h.dst) == (7, OUTSIDE, REMOTE_BACKEND)
    same_but_checksums(run.data, _with_dsr_option(syn, opt, dmac=REMOTE_MAC, smac=UNDERLAY_MAC, dst=REMOTE_BACKEND,
                                                  dport=BACKEND_PORT))
    assert node.maps.get(CT_TCP).get(ct_conn_key(OUTSIDE, 41010, REMOTE_BACKEND, BACKEND_PORT)) is None
    ack = from_outside(ACK, 41010)
    run = xdp(node, ack, eth0)
    assert run.xdp_action == XdpAction.TX and parse_ipv4(run.data).ihl == 5, "no option after the SYN"


def test_dsr_frame_too_big_for_the_option_is_left_to_tc(ns: DatapathFactory, eth0: int) -> None:
    node = load(ns, lb_mode="dsr")
    nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)], protocol="UDP")
    big = udp_frame(OUTSIDE, NODE_IP, 41011, NODE_PORT, bytes(1472), smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    run = xdp(node, big, eth0)
    assert run.xdp_action == XdpAction.PASS and run.data == big


# == what XDP leaves to tc ===================================================================================
def test_local_backend_passes_untouched_and_tc_uses_the_pinned_backend(node: DatapathObjects, ns: DatapathFactory,
                                                                        eth0: int) -> None:
    be = backend_row(ns)
    nodeport(node, [(be.ip, BACKEND_PORT)])
    syn = from_outside(SYN, 41020)
    run = xdp(node, syn, eth0)
    assert (run.xdp_action, run.data, run.counted) == (XdpAction.PASS, syn, Counter())
    tc = node.run(syn, "cil_from_netdev", ifindex=eth0)
    assert tc.verdict == TcAction.REDIRECT and parse_ipv4(tc.data).dst == be.ip


def test_unresolved_next_hop_passes_untouched_and_tc_forwards(node: DatapathObjects, eth0: int) -> None:
    nodeport(node, [(UNRESOLVED_BACKEND, BACKEND_PORT)])
    syn = from_outside(SYN, 41021)
    run = xdp(node, syn, eth0)
    assert (run.xdp_action, run.data, run.counted) == (XdpAction.PASS, syn, Counter())
    assert node.maps.get(CT_TCP).get(ct_service_key(OUTSIDE, 41021, NODE_IP, NODE_PORT)) is not None
    tc = node.run(syn, "cil_from_netdev", ifindex=eth0)
    assert tc.verdict == TcAction.REDIRECT and parse_ipv4(tc.data).dst == UNRESOLVED_BACKEND


@pytest.mark.parametrize("case", ["cluster-ip", "no-backends", "other-mac", "not-a-service"])
def test_frames_for_tc_pass_untouched(node: DatapathObjects, eth0: int, case: str) -> None:
    nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)] if case != "no-backends" else [])
    frame = from_outside(SYN, 41030)
    if case == "cluster-ip":
        frame = tcp_frame(OUTSIDE, CLUSTER_IP, 41030, SVC_PORT, SYN, smac=CLIENT_MAC, dmac=UNDERLAY_MAC)
    elif case == "other-mac":
        frame = from_outside(SYN, 41030)
        frame = eth("0e:00:00:00:00:99", CLIENT_MAC, ETH_P_IP) + frame[ETH_HLEN:]
    elif case == "not-a-service":
        frame = from_outside(SYN, 41030, dport=22)
    run = xdp(node, frame, eth0)
    assert (run.xdp_action, run.data, run.counted) == (XdpAction.PASS, frame, Counter())


def test_nodeport_knob_off_leaves_nodeport_to_tc(ns: DatapathFactory, eth0: int) -> None:
    node = load(ns, nodeport=False)
    nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)])
    syn = from_outside(SYN, 41040)
    assert xdp(node, syn, eth0).xdp_action == XdpAction.PASS
    assert node.objects["xdp"].rodata["enable_xdp_nodeport"] == 0


def test_xdp_rodata_is_the_nodes(node: DatapathObjects) -> None:
    ro = node.objects["xdp"].rodata
    assert (ro["routing_mode"], ro["enable_xdp_nodeport"]) == (2, 1)
    assert int(ro["native_mac"]).to_bytes(8, "little")[:6] == bytes.fromhex(UNDERLAY_MAC.replace(":", ""))


def test_backend_data_reply_is_reverse_translated_at_xdp(node: DatapathObjects, eth0: int) -> None:
    nodeport(node, [(REMOTE_BACKEND, BACKEND_PORT)])
    out = xdp(node, from_outside(SYN, 41004), eth0)
    nat_port = parse_l4(out.data).sport
    assert xdp(node, from_outside(ACK, 41004), eth0).xdp_action == XdpAction.TX
    for flags, payload in ((SYN | ACK, b""), (ACK | 0x08, b"x" * 300), (ACK | 0x01, b"")):
        reply = tcp_frame(REMOTE_BACKEND, NODE_IP, BACKEND_PORT, nat_port, flags, smac=REMOTE_MAC,
                          dmac=UNDERLAY_MAC, payload=payload)
        run = xdp(node, reply, eth0)
        assert run.xdp_action == XdpAction.TX, (flags, run.counted)
        same_but_checksums(run.data, rewritten(reply, dmac=CLIENT_MAC, smac=UNDERLAY_MAC, src=NODE_IP, dst=OUTSIDE,
                                               sport=NODE_PORT, dport=41004))
