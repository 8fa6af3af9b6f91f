"""Same-node pod-to-pod traffic, real kernel and real packets, with BPF and with legacy host routing.

Two pods on one node (``client`` and ``testappds``). BPF host routing answers the pods' ARP from
``cil_from_container``, validates their source addresses, and delivers pod-to-pod packets with
``bpf_redirect_peer`` (TTL-1, MACs rewritten), bypassing the host-side veth's transmit path. Legacy
host routing does the same job with the kernel stack (routes + proxy_arp).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Lab, Pod
from ciliumlite.testing.packets import (
    ARPOP_REPLY,
    ARPOP_REQUEST,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_UDP,
    arp_frame,
    collect_bg,
    eth,
    icmp_echo,
    ip,
    ipv4,
    mac,
    parse_arp,
    parse_eth,
    parse_ipv4,
    pod_python,
    pod_python_bg,
    udp,
)

pytestmark = pytest.mark.integration

MODES = ["bpf", "legacy"]
FOREIGN_MAC = "02:de:ad:be:ef:01"


@pytest.fixture(params=MODES)
def pods(request: pytest.FixtureRequest) -> Iterator[tuple[Pod, Pod]]:
    """client (A) and testappds (B) on worker3, in the parametrized host-routing mode."""
    with Lab("hr", host_routing=request.param) as lab:
        node = lab.add_node("worker3")
        yield node.add_pod("client"), node.add_pod("testappds")


@pytest.fixture
def bpf_pods() -> Iterator[tuple[Pod, Pod]]:
    with Lab("hrbpf", host_routing="bpf") as lab:
        node = lab.add_node("worker3")
        yield node.add_pod("client"), node.add_pod("testappds")


def mode_of(pod: Pod) -> str:
    assert pod.node.datapath is not None
    return pod.node.datapath.config.host_routing


def count(pod: Pod, reason: Reason) -> int:
    assert pod.node.datapath is not None
    return pod.node.datapath.count(reason)


def link_stats(netns: str, ifname: str) -> dict[str, int]:
    """IFLA_STATS64 of a device as its own namespace sees it (netlink: /sys is the test's view)."""
    with IPRoute(netns=netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        return dict(ipr.get_links(idx)[0].get_attr("IFLA_STATS64"))


def gateway(pod: Pod) -> str:
    assert pod.node.datapath is not None
    return str(pod.node.datapath.config.gateway)


def snmp(pod: Pod) -> dict[str, dict[str, int]]:
    """/proc/net/snmp of the pod's namespace (read from inside it)."""
    lines = pod.run("cat", "/proc/net/snmp").stdout.splitlines()
    out: dict[str, dict[str, int]] = {}
    for head, vals in zip(lines[::2], lines[1::2], strict=True):
        proto, names = head.split(":", 1)
        out[proto] = dict(zip(names.split(), map(int, vals.split(":", 1)[1].split()), strict=True))
    return out


def neighbours(pod: Pod) -> dict[str, str]:
    """IP -> lladdr of the pod's eth0 neighbour table (resolved entries only)."""
    entries = json.loads(pod.run("ip", "-j", "-4", "neigh", "show", "dev", "eth0").stdout or "[]")
    return {e["dst"]: e["lladdr"] for e in entries if "lladdr" in e}


# -- connectivity ----------------------------------------------------------------------------------------
def test_icmp_both_ways(pods: tuple[Pod, Pod]) -> None:
    a, b = pods
    for src, dst in ((a, b), (b, a)):
        res = src.ping(dst, count=3, interval=0.05)
        assert res.ok, f"{mode_of(a)}: {src.name} -> {dst.name}: {res.output}"
        assert (res.transmitted, res.received) == (3, 3)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_tcp_udp_both_ways(pods: tuple[Pod, Pod], proto: str) -> None:
    a, b = pods
    for src, dst, port in ((a, b, 8080), (b, a, 5353)):
        payload = f"{proto}-{src.name}-to-{dst.name}"
        res = (src.tcp_echo if proto == "tcp" else src.udp_echo)(dst, port, payload)
        assert res.ok, f"{mode_of(a)} {proto} {src.name} -> {dst.name}: {res.error}"
        assert res.reply == payload and res.server == dst.name
        # No NAT on the same node: the server sees the client's pod IP, the client the server's.
        assert res.seen_client.rsplit(":", 1)[0] == src.ip
        assert res.peer == (dst.ip, port)


def test_checksums_accepted_by_receiving_stacks(pods: tuple[Pod, Pod]) -> None:
    a, b = pods
    assert a.ping(b, count=2, interval=0.05).ok
    assert a.tcp_echo(b, 80, "x" * 1000).ok and a.udp_echo(b, 81, "y" * 1000).ok
    assert b.tcp_echo(a, 80, "z" * 100).ok and b.udp_echo(a, 81, "w" * 100).ok
    for pod in (a, b):
        s = snmp(pod)
        assert s["Ip"]["InHdrErrors"] == 0, f"{pod.name}: IPv4 header errors (bad checksum after TTL-1?)"
        assert s["Tcp"]["InCsumErrors"] == 0 and s["Udp"]["InCsumErrors"] == 0
        assert s["Tcp"]["InErrs"] == 0 and s["Udp"]["InErrors"] == 0
        assert s["Icmp"]["InCsumErrors"] == 0
        assert s["Udp"]["InDatagrams"] >= 1 and s["Tcp"]["InSegs"] >= 3


# -- redirect_peer bypasses the host-side veth ----------------------------------------------------------
def test_host_veth_tx_bypassed_only_with_bpf(pods: tuple[Pod, Pod]) -> None:
    a, b = pods
    n = 20
    node_ns = b.node.netns
    # The host side of a veth sends IPv6 MLD reports / router solicitations now and then; ciliumlite
    # is IPv4-only, so switch IPv6 off in the node namespace to keep the TX counter about IPv4.
    for key in ("all", "default"):
        assert b.node.run("sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1").returncode == 0
    # Warm up: resolve every neighbour first (the proxy-ARP reply to B *is* sent out of B's lxc).
    assert a.ping(b, count=1).ok and b.ping(a, count=1).ok
    lxc_b, eth0_b = link_stats(node_ns, b.endpoint.ifname), link_stats(b.netns, "eth0")
    fwd = count(a, Reason.FORWARDED)
    res = a.ping(b, count=n, interval=0.02)
    assert res.ok, res.output
    lxc_b2, eth0_b2 = link_stats(node_ns, b.endpoint.ifname), link_stats(b.netns, "eth0")
    tx = lxc_b2["tx_packets"] - lxc_b["tx_packets"]
    assert eth0_b2["rx_packets"] - eth0_b["rx_packets"] >= n, "the echo requests must reach pod B"
    if mode_of(a) == "bpf":
        assert tx == 0, f"bpf_redirect_peer must bypass {b.endpoint.ifname}'s xmit, yet it sent {tx} packets"
        assert count(a, Reason.FORWARDED) - fwd >= 2 * n  # requests and replies
    else:
        assert tx >= n, f"legacy routing sends through {b.endpoint.ifname}: tx moved by {tx} only"
        assert count(a, Reason.FORWARDED) == 0


# -- TTL and MAC rewrite as pod B receives it ------------------------------------------------------------
def test_ttl_decremented_once(pods: tuple[Pod, Pod]) -> None:
    a, b = pods
    # B's reply leaves B with TTL 64 and is routed once: A sees ttl=63.
    out = a.run("ping", "-n", "-c", "1", "-W", "2", b.ip).stdout
    assert re.search(r"ttl=63\b", out), out
    # And what B receives from A: TTL 63, valid header checksum, MACs of B's link.
    sniffer = pod_python_bg(b, "packets.sniff('eth0', packets.ETH_P_IP, 5.0, stop_after=1)")
    assert a.ping(b, count=1).ok
    (frame,) = collect_bg(b, sniffer)
    raw = bytes.fromhex(frame["hex"])
    e, ip4 = parse_eth(raw), parse_ipv4(raw)
    assert (ip4.src, ip4.dst, ip4.proto) == (a.ip, b.ip, 1)
    assert ip4.ttl == 63
    assert ip4.csum_ok, f"bad IPv4 header checksum in {ip4.header.hex()}"
    assert (e.src, e.dst) == (b.endpoint.node_mac, b.endpoint.mac)


# -- ARP ------------------------------------------------------------------------------------------------
def test_arp_resolves_to_host_veth_mac(pods: tuple[Pod, Pod]) -> None:
    a, b = pods
    lxc_mac = a.endpoint.node_mac
    # Kernel ARP after real traffic: the gateway, and B's IP once A is told B is on-link.
    assert a.run("ip", "route", "add", f"{b.ip}/32", "dev", "eth0", "scope", "link").returncode == 0
    assert a.ping(b, count=1).ok
    neigh = neighbours(a)
    assert neigh.get(b.ip) == lxc_mac, neigh
    assert a.ping(gateway(a), count=1).ok
    assert neighbours(a).get(gateway(a)) == lxc_mac
    # An explicit request for B's IP and for the gateway.
    for target in (gateway(a), b.ip):
        reply = pod_python(a, f"packets.arping('eth0', {target!r})")
        assert reply["mac"] == lxc_mac, f"{mode_of(a)}: who-has {target}: {reply}"
        assert (reply["eth_src"], reply["eth_dst"], reply["tha"]) == (lxc_mac, a.endpoint.mac, a.endpoint.mac)


def test_bpf_proxy_arp_answers_any_address(bpf_pods: tuple[Pod, Pod]) -> None:
    a, _ = bpf_pods
    before = count(a, Reason.ARP_REPLY)
    targets = ["10.244.0.200", "10.244.7.9", "192.0.2.1"]
    for target in targets:
        reply = pod_python(a, f"packets.arping('eth0', {target!r})")
        assert reply["mac"] == a.endpoint.node_mac, f"who-has {target}: {reply}"
    assert count(a, Reason.ARP_REPLY) - before == len(targets)
    # The kernel's own resolution of an arbitrary on-link address gives the same answer.
    assert a.run("ip", "route", "add", "10.244.0.200/32", "dev", "eth0").returncode == 0
    a.run("ping", "-n", "-c", "1", "-W", "1", "10.244.0.200")  # nobody answers; ARP resolves
    assert neighbours(a).get("10.244.0.200") == a.endpoint.node_mac


def test_arp_of_a_pod_never_reaches_another_pod(pods: tuple[Pod, Pod]) -> None:
    a, b = pods
    # B captures every ARP frame it receives until the reply to its own request at the end (the
    # control: the capture works and was running the whole time).
    marker = (ip(gateway(b)) + mac(b.endpoint.mac) + ip(b.ip)).hex()  # reply: sip=gw, tha/tip=B
    sniffer = pod_python_bg(b, f"packets.sniff('eth0', packets.ETH_P_ARP, 10.0, until={marker!r})")
    for target in (b.ip, gateway(a), "10.244.0.200", a.ip):
        pod_python(a, f"packets.arping('eth0', {target!r}, timeout=0.3)")  # traffic only
    gratuitous = arp_frame(ARPOP_REPLY, a.endpoint.mac, a.ip, a.ip)
    pod_python(a, f"packets.send_frames('eth0', [bytes.fromhex({gratuitous.hex()!r})])")
    control = pod_python(b, f"packets.arping('eth0', {gateway(b)!r})")
    assert control["mac"] == b.endpoint.node_mac
    frames = collect_bg(b, sniffer)
    arps = [parse_arp(bytes.fromhex(f["hex"])) for f in frames]
    assert frames and marker in frames[-1]["hex"], f"the capture missed B's own ARP reply: {arps}"
    leaked = [x for x in arps if a.endpoint.mac in (x.sha, x.tha) or a.ip in (x.sip, x.tip)]
    assert not leaked, f"{mode_of(a)}: pod A's ARP reached pod B: {leaked}"


# -- anti-spoofing ---------------------------------------------------------------------------------------
def _udp_packet(src: str, dst: str, dport: int, payload: bytes) -> bytes:
    return ipv4(src, dst, udp(src, dst, 40000, dport, payload), proto=IPPROTO_UDP)


def test_spoofed_source_ip_dropped_and_counted(bpf_pods: tuple[Pod, Pod]) -> None:
    a, b = bpf_pods
    port = 7777
    listener = pod_python_bg(b, f"packets.udp_listen({port}, 3.0, until='honest')")
    spoofed = [b.ip, "10.244.0.77", "192.0.2.66", gateway(a)]
    before = count(a, Reason.DROP_INVALID_SIP)
    assert a.ping(b, count=1).ok  # neighbours resolved: every spoofed packet reaches the lxc
    pkts = [_udp_packet(src, b.ip, port, f"spoofed-{src}".encode()) for src in spoofed for _ in range(3)]
    pkts.append(_udp_packet(a.ip, b.ip, port, b"honest"))
    sent = pod_python(a, f"packets.send_raw_ipv4([bytes.fromhex(h) for h in {[p.hex() for p in pkts]!r}], {b.ip!r})")
    assert sent == len(pkts)
    got = collect_bg(b, listener)
    assert [g["data"] for g in got] == ["honest"], f"pod B received spoofed datagrams: {got}"
    assert got[0]["peer"][0] == a.ip
    assert count(a, Reason.DROP_INVALID_SIP) - before == 3 * len(spoofed)


def test_wrong_source_mac_dropped_and_counted(bpf_pods: tuple[Pod, Pod]) -> None:
    a, b = bpf_pods
    port = 7778
    listener = pod_python_bg(b, f"packets.udp_listen({port}, 3.0, until='honest')")
    assert a.ping(b, count=1).ok
    lxc = a.endpoint.node_mac
    frames = [eth(lxc, FOREIGN_MAC, ETH_P_IP) + _udp_packet(a.ip, b.ip, port, b"forged-mac")] * 3
    frames += [arp_frame(ARPOP_REQUEST, FOREIGN_MAC, a.ip, gateway(a)),                   # eth src forged
               arp_frame(ARPOP_REQUEST, a.endpoint.mac, a.ip, gateway(a), sha=FOREIGN_MAC)]  # sha forged
    frames.append(eth(lxc, a.endpoint.mac, ETH_P_IP) + _udp_packet(a.ip, b.ip, port, b"honest"))
    smac_before, arp_before = count(a, Reason.DROP_INVALID_SMAC), count(a, Reason.ARP_REPLY)
    sent = pod_python(a, f"packets.send_frames('eth0', [bytes.fromhex(h) for h in {[f.hex() for f in frames]!r}])")
    assert sent == len(frames)
    got = collect_bg(b, listener)
    assert [g["data"] for g in got] == ["honest"], got
    assert count(a, Reason.DROP_INVALID_SMAC) - smac_before == 5
    assert count(a, Reason.ARP_REPLY) == arp_before, "forged ARP must not be answered"


# -- malformed frames from a pod (what BPF_PROG_TEST_RUN cannot feed the program) ------------------------
def test_truncated_and_foreign_frames_from_pod_dropped(bpf_pods: tuple[Pod, Pod]) -> None:
    a, b = bpf_pods
    assert a.ping(b, count=1).ok
    hdr = eth(a.endpoint.node_mac, a.endpoint.mac, ETH_P_IP)
    good = ipv4(a.ip, b.ip, icmp_echo())
    bad_ihl = [ipv4(a.ip, b.ip, icmp_echo(), ihl=i) for i in range(5)]
    invalid = [
        hdr,                                                  # 14 bytes: no IPv4 header at all
        hdr + good[:10],                                      # 14 + 10
        hdr + good[:19],                                      # 14 + 19
        hdr + ipv4(a.ip, b.ip, b"", options=b"\x01" * 4, ihl=15, tot_len=60),  # IHL beyond the frame
        hdr + ipv4(a.ip, b.ip, icmp_echo(), tot_len=len(good) + 8),            # tot_len beyond the frame
        hdr + ipv4(a.ip, b.ip, icmp_echo(), version=6),
        *(hdr + x for x in bad_ihl),                          # IHL 0..4
        arp_frame(ARPOP_REQUEST, a.endpoint.mac, a.ip, gateway(a))[:41],  # truncated ARP
    ]
    unknown_l3 = [eth(a.endpoint.node_mac, a.endpoint.mac, t) + bytes(46) for t in (ETH_P_IPV6, 0x8100, 0x88CC)]
    before = {r: count(a, r) for r in (Reason.DROP_INVALID, Reason.DROP_UNKNOWN_L3, Reason.FORWARDED)}
    frames = invalid + unknown_l3
    sent = pod_python(a, f"packets.send_frames('eth0', [bytes.fromhex(h) for h in {[f.hex() for f in frames]!r}])")
    assert sent == len(frames)
    assert count(a, Reason.DROP_INVALID) - before[Reason.DROP_INVALID] == len(invalid)
    assert count(a, Reason.DROP_UNKNOWN_L3) - before[Reason.DROP_UNKNOWN_L3] == len(unknown_l3)
    assert count(a, Reason.FORWARDED) == before[Reason.FORWARDED]


def test_good_raw_frame_from_pod_is_forwarded(bpf_pods: tuple[Pod, Pod]) -> None:
    # The positive control of the two tests above: the same sender, an honest frame, delivered.
    a, b = bpf_pods
    assert a.ping(b, count=1).ok
    listener = pod_python_bg(b, "packets.udp_listen(9, 3.0, until='raw-ok')")
    sniffer = pod_python_bg(b, "packets.sniff('eth0', packets.ETH_P_IP, 5.0, stop_after=1)")
    frame = eth(a.endpoint.node_mac, a.endpoint.mac, ETH_P_IP) + _udp_packet(a.ip, b.ip, 9, b"raw-ok")
    before = count(a, Reason.FORWARDED)
    pod_python(a, f"packets.send_frames('eth0', [bytes.fromhex({frame.hex()!r})])")
    (got,) = collect_bg(b, sniffer)
    raw = bytes.fromhex(got["hex"])
    assert parse_eth(raw) == parse_eth(eth(b.endpoint.mac, b.endpoint.node_mac, ETH_P_IP))
    assert parse_ipv4(raw).ttl == 63 and parse_ipv4(raw).csum_ok
    assert raw[14 + 20:] == frame[14 + 20:], "L4 header and payload must be untouched"
    assert [g["data"] for g in collect_bg(b, listener)] == ["raw-ok"], "the UDP checksum must still verify"
    assert count(a, Reason.FORWARDED) - before == 1
