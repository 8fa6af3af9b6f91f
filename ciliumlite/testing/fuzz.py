"""Fuzzing every datapath program with ``BPF_PROG_TEST_RUN`` (issue 13, "Fuzzing every program").

A :class:`FuzzNode` is one node's datapath (``bpf_lxc``, ``bpf_host``, ``bpf_overlay``, ``bpf_xdp``)
loaded in one :class:`FuzzConfig` (routing mode x LB mode x masquerade x XDP acceleration) into a
network namespace prepared with an underlay, two pods' devices, routes and neighbours, and
programmed with endpoints, services (ClusterIP, NodePort, UDP, one without backends), the tunnel
map, the node map and a prefilter entry. :func:`fuzz_program` runs frames from a
:class:`FrameGenerator` through one program and checks, per frame:

1. **verdict**: the return value is one the program documents (:data:`DOCUMENTED_VERDICTS`:
   ``TC_ACT_OK``/``SHOT``/``REDIRECT`` for tc, ``XDP_PASS``/``DROP``/``TX``/``REDIRECT`` for XDP;
   :data:`PROGRAM_VERDICTS`: only ``TC_ACT_OK``/``SHOT`` for ``cil_to_netdev``); a
   frame the kernel refuses before the program runs (EINVAL: shorter than Ethernet + IPv4 headers)
   is counted as ``refused``;
2. **XDP leaves what it passes untouched**: ``XDP_PASS`` with changed bytes is a failure
   (``bpf_xdp.c``: everything it does not forward passes untouched);
3. **every drop is counted with a reason**: per batch of :data:`BATCH` frames, the drop reasons
   (``>= 130``, ``cilium_metrics``) the batch added must be at least the frames dropped and at most
   that plus the ICMP errors the programs answered with (a frag-needed answer counts
   ``DROP_FRAG_NEEDED`` and returns the ICMP error); a batch that breaks this is replayed frame by
   frame to name the frames; a program of :data:`COUNTS_EVERY_PACKET` must have counted exactly
   one packet per frame of the batch;
4. **every frame that leaves with changed bytes decodes validly in scapy** (:func:`check_frame`, an
   independent decoder: never :mod:`ciliumlite.testing.packets`): IPv4 version, IHL >= 5, total
   length within the frame and >= the header; header checksum; TCP data offset and checksum, UDP
   length and checksum (0 allowed), ICMP checksum, over the pseudo header scapy computes; VXLAN
   (UDP 8472/4789) is decoded and its inner frame checked the same way; ARP replies have
   hardware/protocol lengths 6/4. A header the program *wrote* (a new IP id or protocol: an
   encapsulation or an ICMP error) must be valid outright; a header it *rewrote* (same IP id and
   protocol as the input's) must be valid wherever the input's was (a NAT does not repair a
   checksum the fuzzer broke, and must not break one that was right). L4 is not checked in
   fragments (the checksum covers the whole datagram). Frames whose output differs from the input
   are deduplicated by a structural signature (:func:`signature`) and each signature is decoded up
   to :data:`SIG_CHECKS` times, plus a random :data:`SAMPLE` of the rest, within a budget of
   decodes per program and configuration.

Frames come from :class:`FrameGenerator`: a deterministic sweep (every golden frame truncated at
every offset, IHL 0..15, every TCP flag combination) and then random draws: random bytes, random
bytes behind a valid Ethernet header, and golden frames (scapy-built: TCP/UDP/ICMP to pods,
services, NodePort, SNAT replies, VXLAN-encapsulated, ARP, IPv6, ICMP errors carrying other packets,
DSR options) with 1-3 mutations (truncation, IHL, total length, IP options, fragment bits, VLAN tags,
TTL, TCP flags, addresses and ports from the scenario, byte and bit flips), with checksums fixed up
or not.

The full run is ``make fuzz`` (``python -m ciliumlite.testing.fuzz``); it writes
``benchmarks/results/fuzz.md`` and ``.json``. Needs root and scapy (the ``[dev]`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Final, Literal

from ciliumlite.bpf import Program, fs
from ciliumlite.bpf._ffi import ffi, lib
from ciliumlite.bpf.netns import NetnsRef, entered
from ciliumlite.bpf.program import ProgType, SkbContext
from ciliumlite.datapath.config import DatapathConfig, LbMode
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.datapath.dsr import DsrOption
from ciliumlite.datapath.maps import PREFILTER_DYN
from ciliumlite.datapath.reasons import DROP_MIN, EVENT_LOST, describe
from ciliumlite.datapath.records import ENDPOINT_F_HOST, Cidr4Key, Cidr4Value, TunnelKey, TunnelValue
from ciliumlite.lab.naming import unique_name
from ciliumlite.node.services import lb_rows
from ciliumlite.service import Backend, Frontend, Service
from ciliumlite.testing.datapath import DatapathFactory, DatapathObjects, EndpointRow

__all__ = [
    "BATCH", "COUNTS_EVERY_PACKET", "DOCUMENTED_VERDICTS", "PROGRAMS", "PROGRAM_VERDICTS", "SAMPLE", "SIG_CHECKS", "Failure", "FrameGenerator", "FuzzConfig",
    "FuzzNode", "ProgramResult", "all_configs", "check_frame", "fuzz_program", "golden_frames", "main",
    "prepare_netns", "render_markdown", "signature",
]

# -- the scenario ----------------------------------------------------------------------------------------
NODE_IP: Final = "10.0.0.12"
LB_NODE_IP: Final = "10.0.0.11"
REMOTE_IP: Final = "10.0.0.13"
LEAF_IP: Final = "10.0.0.254"
UNDERLAY_MAC: Final = "0e:00:00:00:00:12"
REMOTE_MAC: Final = "0e:00:00:00:00:13"
CLIENT_MAC: Final = "0e:00:00:00:00:fe"
POD_CIDR: Final = "10.244.1.0/24"
CLIENT_IP, CLIENT_PMAC, CLIENT_NMAC = "10.244.1.2", "0a:12:34:56:78:02", "0e:ab:cd:ef:01:02"
BACKEND_IP, BACKEND_PMAC, BACKEND_NMAC = "10.244.1.3", "0a:12:34:56:78:03", "0e:ab:cd:ef:01:03"
REMOTE_POD: Final = "10.244.2.7"
UNRESOLVED_POD: Final = "10.244.3.7"
OUTSIDE: Final = "203.0.113.10"
DENIED: Final = "198.51.100.7"
CLUSTER_IP, CLUSTER_UDP, CLUSTER_EMPTY = "10.96.0.10", "10.96.0.11", "10.96.0.12"
NODE_PORT, NODE_PORT_UDP, NODE_PORT_REMOTE = 30080, 30053, 30081
BACKEND_PORT: Final = 8080
#: Addresses and ports mutations draw from: every one the datapath has a rule for, and some it has not.
ADDRESSES: Final = (NODE_IP, LB_NODE_IP, REMOTE_IP, LEAF_IP, CLIENT_IP, BACKEND_IP, REMOTE_POD, UNRESOLVED_POD,
                    OUTSIDE, DENIED, CLUSTER_IP, CLUSTER_UDP, CLUSTER_EMPTY, "10.244.1.1", "10.244.1.255",
                    "0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1", "10.244.9.9", "192.0.2.1")
PORTS: Final = (80, 53, 8080, NODE_PORT, NODE_PORT_UDP, NODE_PORT_REMOTE, 30000, 32767, 32768, 40000, 60999,
                61000, 65535, 0, 1, 8472, 4789, 22)

#: Programs fuzzed, per object; ``cil_from_overlay`` only where the node has the overlay (VXLAN).
PROGRAMS: Final = ("cil_from_container", "cil_from_overlay", "cil_from_netdev", "cil_to_netdev", "cil_xdp_entry")
TC_OK, TC_SHOT, TC_REDIRECT = 0, 2, 7
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 0, 1, 2, 3, 4
#: The return values each kind of program documents (tc: ``TC_ACT_*``; XDP: ``XDP_*``, never ABORTED).
DOCUMENTED_VERDICTS: Final = {"tc": frozenset({TC_OK, TC_SHOT, TC_REDIRECT}),
                              "xdp": frozenset({XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT})}
VERDICT_NAMES: Final = {"tc": {TC_OK: "TC_ACT_OK", TC_SHOT: "TC_ACT_SHOT", TC_REDIRECT: "TC_ACT_REDIRECT"},
                        "xdp": {XDP_ABORTED: "XDP_ABORTED", XDP_DROP: "XDP_DROP", XDP_PASS: "XDP_PASS",
                                XDP_TX: "XDP_TX", XDP_REDIRECT: "XDP_REDIRECT"}}
#: Narrower sets where a program documents fewer: ``cil_to_netdev`` lets a packet leave or drops it.
PROGRAM_VERDICTS: Final = {"cil_to_netdev": frozenset({TC_OK, TC_SHOT})}
#: Programs that document counting every packet they see once (``bpf_host.c``: cil_to_netdev
#: "Counts every packet (REASON_TO_NETDEV / REASON_NAT_EGRESS / drop)").
COUNTS_EVERY_PACKET: Final = frozenset({"cil_to_netdev"})
REFUSED: Final = "refused (EINVAL)"
#: Frames per metrics read (the drop-count check).
BATCH: Final = 256
#: How many frames of one structural signature are decoded by scapy.
SIG_CHECKS: Final = 3
#: The share of other changed frames decoded anyway (a random sample beyond the signatures).
SAMPLE: Final = 0.005
MAX_FRAME: Final = 1600
VXLAN_PORTS: Final = (8472, 4789)
_SKB_CTX_SIZE: Final = len(SkbContext().pack())


@dataclass(frozen=True)
class FuzzConfig:
    """One datapath configuration: routing mode, LB mode, BPF masquerade, XDP NodePort acceleration."""

    routing: Literal["vxlan", "native"]
    lb_mode: LbMode
    masquerade: bool
    xdp: bool

    @property
    def name(self) -> str:
        """``native/dsr/masq/xdp``-style name."""
        return f"{self.routing}/{self.lb_mode}/{'masq' if self.masquerade else 'nomasq'}/" \
               f"{'xdp' if self.xdp else 'noxdp'}"

    def datapath_config(self) -> DatapathConfig:
        """The :class:`DatapathConfig` of this configuration (node worker1 of the scenario)."""
        return DatapathConfig(node_name="worker1", pod_cidr=POD_CIDR, node_ip=NODE_IP, routing=self.routing,
                              load_balancer_mode=self.lb_mode, bpf_masquerade=self.masquerade,
                              acceleration="native" if self.xdp else "disabled", monitor_drops=True,
                              events_per_sec=0)

    def programs(self) -> tuple[str, ...]:
        """The programs this node runs (the overlay only in VXLAN mode)."""
        return tuple(p for p in PROGRAMS if p != "cil_from_overlay" or self.routing == "vxlan")


def all_configs() -> list[FuzzConfig]:
    """Every valid configuration: DSR and XDP acceleration need native routing (DatapathConfig
    refuses them with VXLAN), so VXLAN x SNAT x masquerade on/off, and native x SNAT/DSR x
    masquerade on/off x XDP on/off: 10 configurations."""
    out = [FuzzConfig("vxlan", "snat", m, False) for m in (False, True)]
    out += [FuzzConfig("native", lb, m, x) for lb in ("snat", "dsr") for m in (False, True) for x in (False, True)]
    return out


# -- the node --------------------------------------------------------------------------------------------
def prepare_netns(netns: str) -> None:
    """Make the scenario's devices in ``netns`` (once per namespace): ``eth0`` (the underlay,
    10.0.0.12/24, neighbours for the remote node and the leaf), ``lxccli`` / ``lxcbe`` (the pods'
    host sides), ``vx0`` (stands in for cilium_vxlan), routes to the remote pod CIDR, to an
    unresolved next hop and to the outside world, and ``ip_forward``."""
    ns = DatapathFactory(netns, "")
    ns.underlay("eth0", f"{NODE_IP}/24", mac=UNDERLAY_MAC, neighbours={REMOTE_IP: REMOTE_MAC, LEAF_IP: CLIENT_MAC,
                                                                        LB_NODE_IP: "0e:00:00:00:00:11"})
    for name in ("lxccli", "lxcbe", "vx0"):
        ns.veth(name)
    ns.ip("route", "add", "10.244.2.0/24", "via", REMOTE_IP)
    ns.ip("route", "add", "10.244.3.0/24", "via", "10.0.0.14")
    for world in ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"):
        ns.ip("route", "add", world, "via", LEAF_IP)
    set_sysctl(netns, "net.ipv4.ip_forward", "1")


class FuzzNode:
    """The scenario's node in ``config``, loaded in ``netns`` (made ready by :func:`prepare_netns`).

    Loads ``lxc``, ``host``, ``overlay`` (VXLAN only) and ``xdp`` into a private pin directory
    (removed by :meth:`close`), then writes endpoints (client, backend, the host), services, the
    tunnel and node maps and a prefilter entry. Raises what :class:`DatapathObjects` raises.
    """

    def __init__(self, config: FuzzConfig, netns: str) -> None:
        self.config = config
        self.netns = netns
        ns = DatapathFactory(netns, "")
        self.ifindex = {name: ns.ifindex(name) for name in ("eth0", "lxccli", "lxcbe", "vx0")}
        objects: tuple[Any, ...] = ("lxc", "host", "overlay", "xdp") if config.routing == "vxlan" \
            else ("lxc", "host", "xdp")
        # A pin directory of its own, named with the pid: forked workers share the name counter.
        self.pin_dir = fs.make_pin_dir(unique_name(f"fzdp{os.getpid()}-"))
        try:
            self.dp = DatapathObjects(config.datapath_config(), objects, netns=netns, pin_dir=self.pin_dir,
                                      tunnel_ifindex=self.ifindex["vx0"], native_ifindex=self.ifindex["eth0"],
                                      xdp_nodeport=config.xdp, native_mac=UNDERLAY_MAC)
        except BaseException:
            fs.remove_pin_dir(self.pin_dir)
            raise
        try:
            self._program()
        except BaseException:
            self.close()
            raise

    def _program(self) -> None:
        dp = self.dp
        dp.add_endpoints(EndpointRow(CLIENT_IP, self.ifindex["lxccli"], CLIENT_PMAC, CLIENT_NMAC, 0x00ABCD),
                         EndpointRow(BACKEND_IP, self.ifindex["lxcbe"], BACKEND_PMAC, BACKEND_NMAC, 0x001234),
                         EndpointRow(NODE_IP, 0, UNDERLAY_MAC, UNDERLAY_MAC, 1, ENDPOINT_F_HOST))
        for node in (NODE_IP, LB_NODE_IP, REMOTE_IP):
            dp.maps.nodes.set(int(IPv4Address(node)), 1)
        if self.config.routing == "vxlan":
            dp.maps.tunnel.set(TunnelKey(ip4=IPv4Address("10.244.2.0")), TunnelValue(ip4=IPv4Address(REMOTE_IP)))
        services = [
            Service("web", Frontend(CLUSTER_IP, 80, "TCP"), [Backend(BACKEND_IP, BACKEND_PORT),
                                                            Backend(REMOTE_POD, BACKEND_PORT)],
                    type="NodePort", node_port=NODE_PORT),
            Service("dns", Frontend(CLUSTER_UDP, 53, "UDP"), [Backend(REMOTE_POD, 53), Backend(BACKEND_IP, 53)],
                    type="NodePort", node_port=NODE_PORT_UDP),
            Service("far", Frontend("10.96.0.13", 80, "TCP"), [Backend(REMOTE_POD, BACKEND_PORT)],
                    type="NodePort", node_port=NODE_PORT_REMOTE),
            Service("empty", Frontend(CLUSTER_EMPTY, 80, "TCP"), []),
        ]
        for svc in services:
            dp.lb.program(svc.name, lb_rows(svc, NODE_IP, POD_CIDR))
        dp.maps.get(PREFILTER_DYN).set(Cidr4Key(24, IPv4Address("198.51.100.0")), Cidr4Value())

    def program(self, name: str) -> Program:
        """The loaded program ``name``."""
        return self.dp.program(name)

    def ingress_ifindexes(self, prog: str) -> tuple[int, ...]:
        """The devices a program's frames arrive on (the pods' for from-container, the overlay's,
        the underlay's)."""
        if prog == "cil_from_container":
            return self.ifindex["lxccli"], self.ifindex["lxcbe"]
        if prog == "cil_from_overlay":
            return (self.ifindex["vx0"],)
        return (self.ifindex["eth0"],)

    def drops_counted(self) -> int:
        """Packets counted under drop reasons so far (events lost are not packets)."""
        return sum(n for t, n in self.dp.tallies().items() if t.reason >= DROP_MIN and t.reason not in EVENT_LOST)

    def packets_counted(self) -> int:
        """Packets counted so far under any reason (events lost are not packets)."""
        return sum(n for t, n in self.dp.tallies().items() if t.reason not in EVENT_LOST)

    def close(self) -> None:
        """Close the objects and remove their pins. Safe to call twice."""
        self.dp.close()
        if os.path.isdir(self.pin_dir):
            fs.remove_pin_dir(self.pin_dir)

    def __enter__(self) -> FuzzNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- golden frames (scapy) -------------------------------------------------------------------------------
def golden_frames() -> list[tuple[str, bytes]]:
    """The golden frames, named, built with scapy: what pods, the node, remote nodes and outside
    clients send in the scenario (services, NodePort, SNAT replies, DSR, VXLAN, ARP, IPv6, ICMP
    errors carrying other packets)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, IPOption, TCPerror, UDPerror
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Raw

    pod = Ether(src=CLIENT_PMAC, dst=CLIENT_NMAC)
    be = Ether(src=BACKEND_PMAC, dst=BACKEND_NMAC)
    wire = Ether(src=CLIENT_MAC, dst=UNDERLAY_MAC)
    rnode = Ether(src=REMOTE_MAC, dst=UNDERLAY_MAC)
    out = Ether(src=UNDERLAY_MAC, dst=CLIENT_MAC)
    syn_opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("WScale", 7)]
    dsr_opt = IPOption(DsrOption(NODE_IP, NODE_PORT).encode())
    g: list[tuple[str, Any]] = [
        ("pod-syn-clusterip", pod / IP(src=CLIENT_IP, dst=CLUSTER_IP, id=1) / TCP(sport=40001, dport=80, flags="S",
                                                                              options=syn_opts)),
        ("pod-ack-clusterip", pod / IP(src=CLIENT_IP, dst=CLUSTER_IP, id=2) / TCP(sport=40001, dport=80, flags="PA")
         / Raw(b"GET / HTTP/1.1\r\n\r\n")),
        ("pod-udp-clusterip", pod / IP(src=CLIENT_IP, dst=CLUSTER_UDP, id=3) / UDP(sport=40002, dport=53)
         / Raw(b"\x12\x34" + bytes(30))),
        ("pod-syn-empty-svc", pod / IP(src=CLIENT_IP, dst=CLUSTER_EMPTY, id=4) / TCP(sport=40003, dport=80, flags="S")),
        ("pod-syn-remote-pod", pod / IP(src=CLIENT_IP, dst=REMOTE_POD, id=5) / TCP(sport=40004, dport=8080, flags="S")),
        ("pod-icmp-local-pod", pod / IP(src=CLIENT_IP, dst=BACKEND_IP, id=6) / ICMP(id=7, seq=1) / Raw(b"golden")),
        ("pod-icmp-world", pod / IP(src=CLIENT_IP, dst=OUTSIDE, id=7) / ICMP(id=8, seq=1) / Raw(b"golden")),
        ("pod-syn-world", pod / IP(src=CLIENT_IP, dst=OUTSIDE, id=8) / TCP(sport=40005, dport=443, flags="S")),
        ("pod-udp-world", pod / IP(src=CLIENT_IP, dst=OUTSIDE, id=9) / UDP(sport=40006, dport=123) / Raw(bytes(48))),
        ("pod-udp-unresolved", pod / IP(src=CLIENT_IP, dst=UNRESOLVED_POD, id=10) / UDP(sport=1, dport=2)),
        ("pod-icmp-node", pod / IP(src=CLIENT_IP, dst=NODE_IP, id=11) / ICMP()),
        ("pod-arp-gw", pod / ARP(op=1, hwsrc=CLIENT_PMAC, psrc=CLIENT_IP, pdst="10.244.1.1")),
        ("pod-arp-pod", pod / ARP(op=1, hwsrc=CLIENT_PMAC, psrc=CLIENT_IP, pdst=BACKEND_IP)),
        ("pod-arp-reply", pod / ARP(op=2, hwsrc=CLIENT_PMAC, psrc=CLIENT_IP, pdst="10.244.1.1",
                                    hwdst=CLIENT_NMAC)),
        ("be-reply-synack", be / IP(src=BACKEND_IP, dst=CLIENT_IP, id=12) / TCP(sport=8080, dport=40001, flags="SA")),
        ("be-reply-world", be / IP(src=BACKEND_IP, dst=OUTSIDE, id=13) / TCP(sport=8080, dport=41000, flags="SA")),
        ("be-udp-reply", be / IP(src=BACKEND_IP, dst=CLIENT_IP, id=14) / UDP(sport=53, dport=40002) / Raw(b"ans")),
        ("be-icmp-err-tcp", be / IP(src=BACKEND_IP, dst=CLIENT_IP, id=15) / ICMP(type=3, code=3)
         / IPerror(src=CLIENT_IP, dst=BACKEND_IP) / TCPerror(sport=40001, dport=8080, flags="S")),
        ("pod-ipv6", pod / IPv6(src="fd00::2", dst="fd00::3") / ICMPv6EchoRequest()),
        ("pod-vlan", pod / Dot1Q(vlan=5) / IP(src=CLIENT_IP, dst=REMOTE_POD, id=16) / UDP(sport=3, dport=4)),
        ("wire-syn-nodeport", wire / IP(src=OUTSIDE, dst=NODE_IP, id=20) / TCP(sport=41000, dport=NODE_PORT,
                                                                           flags="S", options=syn_opts)),
        ("wire-ack-nodeport", wire / IP(src=OUTSIDE, dst=NODE_IP, id=21) / TCP(sport=41000, dport=NODE_PORT,
                                                                           flags="A") / Raw(b"x" * 100)),
        ("wire-syn-nodeport-remote", wire / IP(src=OUTSIDE, dst=NODE_IP, id=22) / TCP(sport=41001,
                                                                                  dport=NODE_PORT_REMOTE, flags="S")),
        ("wire-udp-nodeport", wire / IP(src=OUTSIDE, dst=NODE_IP, id=23) / UDP(sport=41002, dport=NODE_PORT_UDP)
         / Raw(bytes(64))),
        ("wire-syn-clusterip", wire / IP(src=OUTSIDE, dst=CLUSTER_IP, id=24) / TCP(sport=41003, dport=80, flags="S")),
        ("wire-denied-src", wire / IP(src=DENIED, dst=NODE_IP, id=25) / TCP(sport=41004, dport=NODE_PORT, flags="S")),
        ("wire-icmp-node", wire / IP(src=OUTSIDE, dst=NODE_IP, id=26) / ICMP(id=9, seq=2)),
        ("wire-frag-nodeport", wire / IP(src=OUTSIDE, dst=NODE_IP, id=27, flags="MF") / UDP(sport=41005,
                                                                                        dport=NODE_PORT_UDP)
         / Raw(bytes(40))),
        ("remote-snat-reply", rnode / IP(src=REMOTE_POD, dst=NODE_IP, id=28) / TCP(sport=BACKEND_PORT, dport=32768,
                                                                               flags="SA")),
        ("remote-snat-reply-udp", rnode / IP(src=REMOTE_POD, dst=NODE_IP, id=29) / UDP(sport=53, dport=32769)),
        ("remote-to-local-pod", rnode / IP(src="10.244.2.9", dst=CLIENT_IP, id=30) / TCP(sport=5, dport=6, flags="A")),
        ("remote-dsr-syn", rnode / IP(src=OUTSIDE, dst=BACKEND_IP, id=31, options=[dsr_opt])
         / TCP(sport=41006, dport=BACKEND_PORT, flags="S")),
        ("remote-dsr-udp", Ether(src="0e:00:00:00:00:11", dst=UNDERLAY_MAC) / IP(src=OUTSIDE, dst=BACKEND_IP, id=32,
                                                                              options=[dsr_opt])
         / UDP(sport=41007, dport=53)),
        ("remote-vxlan", rnode / IP(src=REMOTE_IP, dst=NODE_IP, id=33) / UDP(sport=50000, dport=8472)
         / VXLAN(vni=0xABCD, flags=0x08) / Ether(src="0a:00:00:00:02:09", dst=CLIENT_NMAC)
         / IP(src="10.244.2.9", dst=CLIENT_IP, id=34) / TCP(sport=7, dport=8, flags="S")),
        ("wire-icmp-fragneeded", wire / IP(src=LEAF_IP, dst=NODE_IP, id=35) / ICMP(type=3, code=4, nexthopmtu=1400)
         / IPerror(src=NODE_IP, dst=OUTSIDE) / TCPerror(sport=32768, dport=41000, flags="SA")),
        ("wire-icmp-portunreach-udp", wire / IP(src=OUTSIDE, dst=NODE_IP, id=36) / ICMP(type=3, code=3)
         / IPerror(src=NODE_IP, dst=OUTSIDE) / UDPerror(sport=32769, dport=41002)),
        ("wire-icmp-ttl", wire / IP(src=LEAF_IP, dst=NODE_IP, id=37) / ICMP(type=11, code=0)
         / IPerror(src=NODE_IP, dst=REMOTE_POD) / UDPerror(sport=32770, dport=53)),
        ("wire-arp-node", wire / ARP(op=1, hwsrc=CLIENT_MAC, psrc=LEAF_IP, pdst=NODE_IP)),
        ("wire-ipv6", wire / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2)),
        ("wire-qinq", wire / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IP(src=OUTSIDE, dst=NODE_IP, id=38) / ICMP()),
        ("egress-pod-world", out / IP(src=CLIENT_IP, dst=OUTSIDE, id=40) / TCP(sport=40005, dport=443, flags="S")),
        ("egress-pod-world-udp", out / IP(src=CLIENT_IP, dst=OUTSIDE, id=41) / UDP(sport=40006, dport=123)
         / Raw(bytes(48))),
        ("egress-pod-world-icmp", out / IP(src=CLIENT_IP, dst=OUTSIDE, id=42) / ICMP(id=10, seq=3)),
        ("egress-dsr-reply", out / IP(src=BACKEND_IP, dst=OUTSIDE, id=43) / TCP(sport=BACKEND_PORT, dport=41006,
                                                                              flags="SA")),
        ("egress-node", out / IP(src=NODE_IP, dst=REMOTE_IP, id=44) / TCP(sport=22, dport=40000, flags="A")),
        ("egress-vxlan", Ether(src=UNDERLAY_MAC, dst=REMOTE_MAC) / IP(src=NODE_IP, dst=REMOTE_IP, id=45)
         / UDP(sport=50001, dport=8472) / VXLAN(vni=0xABCD, flags=0x08) / Ether() / IP(src=CLIENT_IP, dst=REMOTE_POD)
         / ICMP()),
        ("egress-icmp-err-pod", out / IP(src=CLIENT_IP, dst=OUTSIDE, id=46) / ICMP(type=3, code=3)
         / IPerror(src=OUTSIDE, dst=CLIENT_IP) / UDPerror(sport=123, dport=40006)),
    ]
    return [(name, bytes(p)) for name, p in g]


# -- mutations (bytes only: fast) ------------------------------------------------------------------------
def _csum(data: bytes | bytearray) -> int:
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _l3_offset(f: bytes | bytearray) -> int:
    """Offset of the IPv4 header behind up to two VLAN tags, or -1."""
    off = 12
    for _ in range(3):
        if len(f) < off + 2:
            return -1
        et = (f[off] << 8) | f[off + 1]
        if et == 0x0800:
            return off + 2
        if et in (0x8100, 0x88A8):
            off += 4
            continue
        return -1
    return -1


def fix_checksums(frame: bytes | bytearray) -> bytes:
    """``frame`` with its (outer) IPv4 header checksum and TCP/UDP/ICMP checksum recomputed as far
    as the header fields allow (used to make mutated frames plausible; never to check)."""
    f = bytearray(frame)
    o = _l3_offset(f)
    if o < 0 or len(f) < o + 20:
        return bytes(f)
    ihl = (f[o] & 0xF) * 4
    if ihl < 20 or len(f) < o + ihl:
        return bytes(f)
    f[o + 10:o + 12] = b"\0\0"
    f[o + 10:o + 12] = _csum(f[o:o + ihl]).to_bytes(2, "big")
    tot = (f[o + 2] << 8) | f[o + 3]
    end = min(len(f), o + tot)
    if ((f[o + 6] & 0x3F) | f[o + 7]) or end <= o + ihl:
        return bytes(f)
    proto, l4 = f[o + 9], o + ihl
    seg = f[l4:end]
    if proto == 6 and len(seg) >= 20:
        coff = 16
    elif proto == 17 and len(seg) >= 8:
        coff = 6
    elif proto == 1 and len(seg) >= 4:
        f[l4 + 2:l4 + 4] = b"\0\0"
        f[l4 + 2:l4 + 4] = _csum(f[l4:end]).to_bytes(2, "big")
        return bytes(f)
    else:
        return bytes(f)
    f[l4 + coff:l4 + coff + 2] = b"\0\0"
    pseudo = bytes(f[o + 12:o + 20]) + struct.pack("!BBH", 0, proto, len(seg))
    c = _csum(pseudo + bytes(f[l4:end]))
    if proto == 17 and c == 0:
        c = 0xFFFF
    f[l4 + coff:l4 + coff + 2] = c.to_bytes(2, "big")
    return bytes(f)


Mutator = Callable[[random.Random, bytearray], bytearray]


def _m_truncate(r: random.Random, f: bytearray) -> bytearray:
    return f[:r.randrange(len(f) + 1)]


def _m_ihl(r: random.Random, f: bytearray) -> bytearray:
    o = _l3_offset(f)
    if o >= 0 and len(f) > o:
        f[o] = (f[o] & 0xF0) | r.randrange(16)
    return f


def _m_version(r: random.Random, f: bytearray) -> bytearray:
    o = _l3_offset(f)
    if o >= 0 and len(f) > o:
        f[o] = (r.randrange(16) << 4) | (f[o] & 0xF)
    return f


def _m_totlen(r: random.Random, f: bytearray) -> bytearray:
    o = _l3_offset(f)
    if o >= 0 and len(f) >= o + 4:
        real = len(f) - o
        v = r.choice((0, 1, 19, 20, 21, real - 1, real + 1, real + 8, 0xFFFF, r.randrange(65536)))
        f[o + 2:o + 4] = (v & 0xFFFF).to_bytes(2, "big")
    return f


_OPTIONS = (b"\x01\x01\x01\x00", b"\x00\x00\x00\x00", b"\x07\x07\x04\x00\x00\x00\x00\x00",
            b"\x9a\x08\x75\x80\x0a\x00\x00\x0c", b"\x9a\x08\x75\x80\x0a\x00\x00\x0b", b"\x9a\x04\x00\x00",
            b"\x44\x0c\x05\x00" + bytes(8), b"\x83\x07\x04" + bytes(5), b"\xff\xff\xff\xff", b"\x9a\x00\x00\x00",
            b"\x01" * 40)


def _m_options(r: random.Random, f: bytearray) -> bytearray:
    o = _l3_offset(f)
    if o < 0 or len(f) < o + 20:
        return f
    ihl = (f[o] & 0xF) * 4
    if ihl < 20:
        return f
    opt = r.choice(_OPTIONS) if r.random() < 0.8 else bytes(r.randrange(256) for _ in range(4 * r.randrange(1, 11)))
    opt = opt[:60 - ihl]
    if not opt:
        return f
    f[o + ihl:o + ihl] = opt
    f[o] = (f[o] & 0xF0) | ((ihl + len(opt)) // 4 & 0xF)
    tot = ((f[o + 2] << 8) | f[o + 3]) + len(opt)
    f[o + 2:o + 4] = (tot & 0xFFFF).to_bytes(2, "big")
    return f


def _m_frag(r: random.Random, f: bytearray) -> bytearray:
    o = _l3_offset(f)
    if o >= 0 and len(f) >= o + 8:
        v = r.choice((0x2000, 0x2001, 0x0001, 0x0100, 0x4000, 0x8000, 0x1FFF, 0x3FFF, r.randrange(65536)))
        f[o + 6:o + 8] = v.to_bytes(2, "big")
    return f


def _m_vlan(r: random.Random, f: bytearray) -> bytearray:
    if len(f) >= 14:
        tpid = r.choice((b"\x81\x00", b"\x88\xa8"))
        f[12:12] = tpid + r.randrange(65536).to_bytes(2, "big")
    return f


def _m_ttl(r: random.Random, f: bytearray) -> bytearray:
    o = _l3_offset(f)
    if o >= 0 and len(f) > o + 8:
        f[o + 8] = r.choice((0, 1, 2, 255))
    return f


def _m_proto(r: random.Random, f: bytearray) -> bytearray:
    o = _l3_offset(f)
    if o >= 0 and len(f) > o + 9:
        f[o + 9] = r.choice((1, 6, 17, 47, 50, 132, 0, 255, r.randrange(256)))
    return f


def _l4_offset(f: bytearray) -> int:
    o = _l3_offset(f)
    if o < 0 or len(f) < o + 20:
        return -1
    return o + (f[o] & 0xF) * 4


def _m_tcp_flags(r: random.Random, f: bytearray) -> bytearray:
    o = _l3_offset(f)
    l4 = _l4_offset(f)
    if l4 >= 0 and len(f) > l4 + 13 and f[o + 9] == 6:
        f[l4 + 13] = r.randrange(256)
    return f


def _m_tcp_doff(r: random.Random, f: bytearray) -> bytearray:
    l4 = _l4_offset(f)
    if l4 >= 0 and len(f) > l4 + 12:
        f[l4 + 12] = (r.randrange(16) << 4) | (f[l4 + 12] & 0xF)
    return f


def _m_udp_len(r: random.Random, f: bytearray) -> bytearray:
    l4 = _l4_offset(f)
    if l4 >= 0 and len(f) >= l4 + 6:
        f[l4 + 4:l4 + 6] = r.choice((0, 7, 8, 9, 0xFFFF, len(f) - l4 + 1)).to_bytes(2, "big")
    return f


def _m_addr(r: random.Random, f: bytearray) -> bytearray:
    o = _l3_offset(f)
    if o >= 0 and len(f) >= o + 20:
        at = o + (12 if r.random() < 0.25 else 16)  # mostly the destination: a bad source drops early
        f[at:at + 4] = IPv4Address(r.choice(ADDRESSES)).packed
    return f


def _m_port(r: random.Random, f: bytearray) -> bytearray:
    l4 = _l4_offset(f)
    if l4 >= 0 and len(f) >= l4 + 4:
        at = l4 + r.choice((0, 2))
        port = r.choice(PORTS) if r.random() < 0.7 else r.randrange(65536)
        f[at:at + 2] = port.to_bytes(2, "big")
    return f


def _m_byte(r: random.Random, f: bytearray) -> bytearray:
    if f:
        for _ in range(r.randrange(1, 4)):
            f[r.randrange(len(f))] = r.randrange(256)
    return f


def _m_bit(r: random.Random, f: bytearray) -> bytearray:
    if f:
        i = r.randrange(len(f))
        f[i] ^= 1 << r.randrange(8)
    return f


def _m_ethertype(r: random.Random, f: bytearray) -> bytearray:
    if len(f) >= 14:
        f[12:14] = r.choice((b"\x08\x00", b"\x08\x06", b"\x86\xdd", b"\x81\x00", b"\x88\xa8", b"\x00\x00",
                             b"\xff\xff", b"\x88\xcc", b"\x08\x01")).ljust(2, b"\0")
    return f


def _m_arp(r: random.Random, f: bytearray) -> bytearray:
    if len(f) >= 22 and f[12:14] == b"\x08\x06":
        at = r.choice((14, 16, 18, 19, 20))  # htype, ptype, hlen, plen, op
        if at in (18, 19):
            f[at] = r.choice((0, 4, 6, 16, 255))
        else:
            f[at:at + 2] = r.choice((0, 1, 2, 3, 0x0800, 0xFFFF)).to_bytes(2, "big")
    return f


def _m_mac(r: random.Random, f: bytearray) -> bytearray:
    if len(f) >= 12:
        at = r.choice((0, 6))
        f[at:at + 6] = bytes.fromhex(r.choice((UNDERLAY_MAC, CLIENT_NMAC, BACKEND_NMAC, CLIENT_PMAC,
                                               "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01",
                                               "00:00:00:00:00:00")).replace(":", ""))
    return f


def _m_extend(r: random.Random, f: bytearray) -> bytearray:
    return f + bytearray(r.randrange(256) for _ in range(r.randrange(1, 64)))


MUTATORS: Final[tuple[tuple[str, Mutator], ...]] = (
    ("truncate", _m_truncate), ("ihl", _m_ihl), ("version", _m_version), ("tot_len", _m_totlen),
    ("ip-options", _m_options), ("fragment", _m_frag), ("vlan", _m_vlan), ("ttl", _m_ttl), ("proto", _m_proto),
    ("tcp-flags", _m_tcp_flags), ("tcp-doff", _m_tcp_doff), ("udp-len", _m_udp_len), ("address", _m_addr),
    ("port", _m_port), ("byte", _m_byte), ("bit", _m_bit), ("ethertype", _m_ethertype), ("arp", _m_arp),
    ("mac", _m_mac), ("extend", _m_extend),
)
_STRUCTURAL = frozenset({"address", "port", "tcp-flags", "ttl", "ip-options", "fragment", "vlan", "proto",
                         "mac", "extend"})


class FrameGenerator:
    """Frames for the fuzzer, reproducible from ``seed``.

    :meth:`sweep` gives the deterministic part: every golden frame truncated at every offset, with
    IHL 0..15, and TCP goldens with every flag combination. :meth:`random_frame` gives one random
    draw: 8% random bytes, 7% random bytes behind a valid Ethernet header, 85% a golden frame with
    1-3 mutations (structural mutations are followed by a checksum fix-up 3 times in 4, so the frame
    gets past checksum-sensitive code).
    """

    def __init__(self, seed: int = 0, goldens: Sequence[tuple[str, bytes]] | None = None) -> None:
        self.rng = random.Random(seed)
        self.goldens = list(goldens if goldens is not None else golden_frames())
        self.frames = [g for _, g in self.goldens]

    def sweep(self) -> Iterator[bytes]:
        """The deterministic frames (about 10,000 for the built-in goldens)."""
        for g in self.frames:
            for n in range(len(g) + 1):
                yield g[:n]
            o = _l3_offset(g)
            if o >= 0:
                for ihl in range(16):
                    f = bytearray(g)
                    f[o] = (f[o] & 0xF0) | ihl
                    yield bytes(f)
                    yield fix_checksums(f)
                if g[o + 9] == 6:
                    l4 = o + (g[o] & 0xF) * 4
                    for flags in range(256):
                        f = bytearray(g)
                        f[l4 + 13] = flags
                        yield fix_checksums(f)

    def random_frame(self) -> bytes:
        """One random frame (see the class)."""
        r = self.rng
        x = r.random()
        if x < 0.08:
            n = r.randrange(0, 96) if r.random() < 0.7 else r.randrange(0, MAX_FRAME)
            return r.randbytes(n)
        if x < 0.15:
            head = bytes.fromhex(r.choice((UNDERLAY_MAC, CLIENT_NMAC, BACKEND_NMAC)).replace(":", "")) \
                + r.randbytes(6) + r.choice((b"\x08\x00", b"\x08\x06", b"\x86\xdd", b"\x81\x00"))
            if head[12:14] == b"\x08\x00" and r.random() < 0.5:
                head += bytes([0x45, 0]) + struct.pack("!H", 20 + r.randrange(80))
            return head + r.randbytes(r.randrange(0, 120))
        f = bytearray(r.choice(self.frames))
        structural = False
        for _ in range(r.choice((1, 1, 2, 2, 3))):
            name, m = r.choice(MUTATORS)
            f = m(r, f)
            structural = structural or name in _STRUCTURAL
        if structural and r.random() < 0.75:
            return fix_checksums(f)[:MAX_FRAME]
        return bytes(f[:MAX_FRAME])


# -- the independent check (scapy) -----------------------------------------------------------------------
@dataclass(frozen=True)
class _L3Facts:
    ip_id: int
    proto: int
    ip_ok: bool        # version, IHL, total length within the frame
    ip_csum_ok: bool
    l4_ok: bool | None  # None: not checked (fragment, other protocol)
    problems: tuple[str, ...]


def _ip_facts(ip: Any, avail: int) -> _L3Facts:
    """What scapy finds in one IPv4 layer (``avail`` bytes from the IP header to the frame's end)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.utils import checksum

    problems: list[str] = []
    raw = bytes(ip)
    ihl = ip.ihl * 4
    ip_ok = ip.version == 4 and ihl >= 20 and ihl <= ip.len <= avail and len(raw) >= ihl
    if not ip_ok:
        problems.append(f"IPv4 version {ip.version} ihl {ip.ihl} total length {ip.len} in {avail} bytes")
    ip_csum_ok = len(raw) >= 20 and checksum(raw[:max(20, min(ihl, len(raw)))]) == 0
    if not ip_csum_ok:
        problems.append(f"IPv4 header checksum {ip.chksum:#06x}")
    l4_ok: bool | None = None
    if ip_ok and not (ip.flags.MF or ip.frag):
        seg = raw[ihl:ip.len]
        # Rebuild the layer from the segment alone, then let scapy compute the checksum over its
        # own pseudo header: it must equal the one on the wire.
        if ip.proto == 6:
            l4_ok = False
            if len(seg) >= 20 and 20 <= (seg[12] >> 4) * 4 <= len(seg):
                pkt = IP(src=ip.src, dst=ip.dst, proto=6) / TCP(seg)
                want = pkt[TCP].chksum
                pkt[TCP].chksum = None
                got = IP(bytes(pkt))[TCP].chksum
                l4_ok = want == got
                if not l4_ok:
                    problems.append(f"TCP checksum {want:#06x}, scapy computes {got:#06x}")
            else:
                problems.append(f"TCP header: {len(seg)} bytes, data offset {(seg[12] >> 4) if len(seg) > 12 else '?'}")
        elif ip.proto == 17:
            l4_ok = False
            if len(seg) >= 8:
                u = UDP(seg)
                if u.len != len(seg):
                    problems.append(f"UDP length {u.len}, IP payload {len(seg)}")
                elif u.chksum == 0:
                    l4_ok = True
                else:
                    pkt = IP(src=ip.src, dst=ip.dst, proto=17) / UDP(seg)
                    pkt[UDP].chksum = None
                    got = IP(bytes(pkt))[UDP].chksum
                    l4_ok = got == u.chksum
                    if not l4_ok:
                        problems.append(f"UDP checksum {u.chksum:#06x}, scapy computes {got:#06x}")
            else:
                problems.append(f"UDP header: {len(seg)} bytes")
        elif ip.proto == 1:
            l4_ok = len(seg) >= 4 and checksum(seg) == 0
            if not l4_ok:
                icmp = ICMP(seg) if len(seg) >= 4 else None
                problems.append(f"ICMP checksum {icmp.chksum if icmp is not None else '?'}")
    return _L3Facts(ip.id, ip.proto, ip_ok, ip_csum_ok, l4_ok, tuple(problems))


def _layers(frame: bytes) -> list[tuple[_L3Facts, Any]]:
    """IPv4 layers of ``frame`` (outer first; the inner one of VXLAN), with their scapy layer."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    out: list[tuple[_L3Facts, Any]] = []
    pkt = Ether(frame)
    base = 0
    for _ in range(2):
        if IP not in pkt:
            break
        ip = pkt[IP]
        raw = bytes(pkt)
        start = len(raw) - len(bytes(ip))
        facts = _ip_facts(ip, len(frame) - base - start)
        out.append((facts, ip))
        if not facts.ip_ok or ip.proto != 17 or UDP not in ip or ip[UDP].dport not in VXLAN_PORTS or ip.frag:
            break
        inner = ip[UDP].payload
        if not isinstance(inner, VXLAN) or not isinstance(inner.payload, Ether):
            break
        base += start + (ip.ihl * 4) + 8 + 8
        pkt = inner.payload
    return out


def check_frame(out: bytes, inp: bytes) -> list[str]:
    """Problems scapy finds in ``out``, a frame a program let leave, given the ``inp`` it was made
    from (empty: none). See the module docstring for the rules."""
    from scapy.layers.l2 import ARP, Ether

    problems: list[str] = []
    if len(out) < 14:
        return [f"frame of {len(out)} bytes"]
    try:
        eth = Ether(out)
        if ARP in eth and eth.type == 0x0806:
            a = eth[ARP]
            if a.op == 2 and (a.hwlen != 6 or a.plen != 4 or len(out) < 42):
                problems.append(f"ARP reply hwlen {a.hwlen} plen {a.plen} in {len(out)} bytes")
            return problems
        outs = _layers(out)
    except Exception as exc:  # scapy failing on the output is a finding, unless it fails on the input too
        try:
            _layers(inp)
        except Exception:
            return []
        return [f"scapy could not decode the output (but could the input): {exc!r}"]
    try:
        ins = _layers(inp) if len(inp) >= 14 else []
    except Exception:
        ins = []
    for depth, (facts, _ip) in enumerate(outs):
        # The input layer this one was derived from: same IP id and protocol, outer or inner.
        origin = next((f for f, _ in ins if (f.ip_id, f.proto) == (facts.ip_id, facts.proto)), None)
        where = "outer" if depth == 0 and len(outs) > 1 else ("inner" if depth else "")
        if origin is None:
            problems += [f"{where} new header: {p}".strip() for p in facts.problems]
            continue
        if origin.ip_ok and not facts.ip_ok:
            problems += [f"{where} {p}".strip() for p in facts.problems if p.startswith("IPv4 version")]
        if origin.ip_ok and origin.ip_csum_ok and not facts.ip_csum_ok:
            problems.append(f"{where} IPv4 header checksum broken by the program".strip())
        if origin.l4_ok and facts.l4_ok is False:
            problems += [f"{where} {p} (was valid on input)".strip() for p in facts.problems
                         if p.startswith(("TCP", "UDP", "ICMP"))]
    return problems


def signature(prog: str, verdict: int, inp: bytes, out: bytes) -> tuple[object, ...]:
    """The structural signature of a changed frame: program, verdict, length change, the output's
    EtherType and IPv4 version/IHL, protocol and fragment bits, the input's EtherType, and (same
    length) which of the first 128 byte positions changed. One signature is decoded up to
    :data:`SIG_CHECKS` times."""
    o = _l3_offset(out)
    l3 = (out[o], out[o + 9] if len(out) > o + 9 else -1, out[o + 6] & 0xE0 if len(out) > o + 6 else -1,
          out[o + 6] & 0x1F | out[o + 7] if len(out) > o + 7 else -1) if 0 <= o < len(out) else ()
    diff: tuple[int, ...] = ()
    if len(out) == len(inp):
        diff = tuple(i for i in range(min(len(out), 128)) if out[i] != inp[i])
    return prog, verdict, len(out) - len(inp), out[12:14], inp[12:14], l3, diff


# -- the fuzz loop ---------------------------------------------------------------------------------------
@dataclass
class Failure:
    """One invariant failure: which, where, and the frame (hex) that showed it."""

    invariant: str
    config: str
    program: str
    detail: str
    frame: str
    output: str = ""


@dataclass
class ProgramResult:
    """What :func:`fuzz_program` did for one program in one configuration."""

    config: str
    program: str
    frames: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    counted: Counter[str] = field(default_factory=Counter)
    changed: int = 0
    decoded: int = 0
    signatures: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, as keys.
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("verdicts", "drops", "counted"):
            d[name] = dict(d[name])
        d["failures"] = [dataclasses.asdict(f) for f in self.failures]
        return d


class _Runner:
    """BPF_PROG_TEST_RUN with buffers made once (the SDK's ``Program.run`` makes them per call)."""

    def __init__(self, prog: Program, ifindexes: Sequence[int]) -> None:
        self.fd = prog.fd
        self.xdp = prog.type == ProgType.XDP
        self.out = ffi.new("char[]", 4096 + MAX_FRAME)
        self.ctxs = [ffi.new("char[]", SkbContext(ifindex=i).pack()) for i in ifindexes] if not self.xdp else []
        self.xctx = ffi.new("char[]", 24)
        self.ifindexes = list(ifindexes)
        self.opts = ffi.new("struct bpf_test_run_opts *", {"sz": ffi.sizeof("struct bpf_test_run_opts"),
                                                           "repeat": 1})

    def run(self, frame: bytes, which: int) -> tuple[int, bytes] | None:
        """(retval, output) or None when the kernel refused the frame."""
        o = self.opts
        o.data_in = ffi.from_buffer(frame) if frame else ffi.NULL
        o.data_size_in = len(frame)
        o.data_out = self.out
        o.data_size_out = 4096 + MAX_FRAME
        if self.xdp:
            struct.pack_into("<6I", ffi.buffer(self.xctx), 0, 0, len(frame), 0,
                             self.ifindexes[which % len(self.ifindexes)], 0, 0)
            o.ctx_in = self.xctx
            o.ctx_size_in = 24
        else:
            o.ctx_in = self.ctxs[which % len(self.ctxs)]
            o.ctx_size_in = _SKB_CTX_SIZE
        o.ctx_out, o.ctx_size_out = ffi.NULL, 0
        if lib.bpf_prog_test_run_opts(self.fd, o) < 0:
            return None
        return int(ffi.cast("int", o.retval)), bytes(ffi.buffer(self.out, o.data_size_out))


def _is_icmp_error(out: bytes) -> bool:
    o = _l3_offset(out)
    if o < 0 or len(out) < o + 21 or out[o + 9] != 1:
        return False
    l4 = o + (out[o] & 0xF) * 4
    return len(out) > l4 and out[l4] in (3, 11, 12)


def fuzz_program(node: FuzzNode, prog: str, frames: int, *, seed: int = 0, deadline: float | None = None,
                 decode_budget: int = 20000, generator: FrameGenerator | None = None) -> ProgramResult:
    """Run ``frames`` frames (the sweep first, then random draws) through ``prog`` of ``node`` and
    check the invariants (module docstring). Stops early at ``deadline`` (``time.monotonic()``).
    Needs root."""
    kind = "xdp" if prog == "cil_xdp_entry" else "tc"
    allowed = PROGRAM_VERDICTS.get(prog, DOCUMENTED_VERDICTS[kind])
    every = prog in COUNTS_EVERY_PACKET
    names = VERDICT_NAMES[kind]
    res = ProgramResult(node.config.name, prog)
    gen = generator if generator is not None else FrameGenerator(seed)
    runner = _Runner(node.program(prog), node.ingress_ifindexes(prog))
    seen: Counter[tuple[object, ...]] = Counter()
    before_tallies = node.dp.tallies()
    started = time.monotonic()
    sweep = gen.sweep()
    batch: list[tuple[bytes, int]] = []
    batch_drops = batch_replies = 0
    drops_before = node.drops_counted()
    packets_before = node.packets_counted() if every else 0
    verdict_count: Counter[int] = Counter()
    refused = 0

    def fail(invariant: str, detail: str, frame: bytes, out: bytes = b"") -> None:
        if sum(1 for f in res.failures if f.invariant == invariant) < 20:
            res.failures.append(Failure(invariant, res.config, prog, detail, frame.hex(), out.hex()))
        else:
            res.counted[f"failures beyond 20: {invariant}"] += 1

    def close_batch() -> None:
        nonlocal drops_before, packets_before, batch_drops, batch_replies
        now, packets = node.drops_counted(), node.packets_counted() if every else 0
        got = now - drops_before
        if not batch_drops <= got <= batch_drops + batch_replies:
            _replay(node, runner, batch, kind, fail)
            now = node.drops_counted()
        elif every and packets - packets_before != len(batch):
            fail("counted-once", f"{len(batch)} frames, {packets - packets_before} packets counted "
                 "(the program documents counting each packet once)", batch[0][0], b"")
        drops_before, packets_before = now, node.packets_counted() if every else 0
        batch.clear()
        batch_drops = batch_replies = 0

    with entered(node.netns):
        i = 0
        while i < frames:
            if deadline is not None and i % 1024 == 0 and time.monotonic() > deadline:
                break
            frame = next(sweep, None)
            if frame is None:
                frame = gen.random_frame()
            which = i
            i += 1
            r = runner.run(frame, which)
            if r is None:
                refused += 1
                continue
            rc, out = r
            verdict_count[rc] += 1
            batch.append((frame, which))
            if rc not in allowed:
                fail("verdict", f"return value {rc} is not one of {sorted(names[v] for v in allowed)}", frame, out)
                continue
            dropped = rc == (XDP_DROP if kind == "xdp" else TC_SHOT)
            if dropped:
                batch_drops += 1
            elif out != frame:
                if kind == "xdp" and rc == XDP_PASS:
                    fail("xdp-pass-untouched", "XDP_PASS with a changed frame", frame, out)
                else:
                    res.changed += 1
                    if _is_icmp_error(out):
                        batch_replies += 1
                    if res.decoded < decode_budget:
                        sig = signature(prog, rc, frame, out)
                        if seen[sig] < SIG_CHECKS or gen.rng.random() < SAMPLE:
                            seen[sig] += 1
                            res.decoded += 1
                            problems = check_frame(out, frame)
                            if problems:
                                fail("checksums-and-lengths", "; ".join(problems), frame, out)
            if len(batch) >= BATCH:
                close_batch()
        if batch:
            close_batch()
    res.frames = i
    res.seconds = time.monotonic() - started
    res.signatures = len(seen)
    for rc, n in verdict_count.items():
        res.verdicts[names.get(rc, f"unknown {rc}")] += n
    if refused:
        res.verdicts[REFUSED] = refused
    after = node.dp.tallies()
    after.subtract(before_tallies)
    for t, n in after.items():
        if n > 0:
            key = f"{t.reason} {describe(t.reason)}"
            if t.reason >= DROP_MIN and t.reason not in EVENT_LOST:
                res.drops[key] += n
            else:
                res.counted[key] += n
    return res


def _replay(node: FuzzNode, runner: _Runner, batch: list[tuple[bytes, int]], kind: str,
            fail: Callable[[str, str, bytes, bytes], None]) -> None:
    """Run a batch whose drop count did not add up again frame by frame, naming the frames."""
    found = False
    for frame, which in batch:
        before = node.drops_counted()
        r = runner.run(frame, which)
        if r is None:
            continue
        rc, out = r
        got = node.drops_counted() - before
        dropped = rc == (XDP_DROP if kind == "xdp" else TC_SHOT)
        if dropped and got != 1:
            fail("drop-counted", f"dropped, {got} drop reasons counted", frame, out)
            found = True
        elif not dropped and got and not (got == 1 and _is_icmp_error(out)):
            fail("drop-counted", f"verdict {rc} but {got} drop reasons counted", frame, out)
            found = True
    if not found:
        fail("drop-counted", f"a batch of {len(batch)} frames counted drops that did not add up; "
             "frame-by-frame replay did not reproduce it (state-dependent)", batch[0][0], b"")


# -- the full run ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _netns_for(name: str) -> Iterator[str]:
    from ciliumlite.lab import owned
    from ciliumlite.lab.naming import RUN_ID
    from ciliumlite.ownership.record import Record

    record = Record(f"fuzz-{RUN_ID}-{os.getpid()}", prefix=f"cl{RUN_ID}", kind="fuzz")
    ns = owned.make_netns(record, unique_name(f"{name}{os.getpid()}-"))
    try:
        yield ns
    finally:
        owned.remove_netns(record, ns)
        record.close()


def run_configs(configs: Sequence[FuzzConfig], frames: int, seed: int, deadline: float,
                decode_budget: int = 20000) -> list[ProgramResult]:
    """Fuzz every program of every configuration in one fresh namespace (made and removed here)."""
    out: list[ProgramResult] = []
    with _netns_for("fuzz") as ns:
        prepare_netns(ns)
        for n, cfg in enumerate(configs):
            left = len(configs) - n
            for p_i, prog in enumerate(cfg.programs()):
                with FuzzNode(cfg, ns) as node:
                    now = time.monotonic()
                    share = (deadline - now) / (left * len(cfg.programs()) - p_i) if deadline > now else 0.0
                    res = fuzz_program(node, prog, frames, seed=seed + 1000 * n + p_i, deadline=now + share,
                                       decode_budget=decode_budget)
                out.append(res)
                print(f"fuzz: {res.config} {prog}: {res.frames} frames in {res.seconds:.0f} s, "
                      f"{len(res.failures)} failures", file=sys.stderr, flush=True)
    return out


def _worker(args: tuple[list[FuzzConfig], int, int, float, int]) -> list[dict[str, Any]]:
    configs, frames, seed, budget_s, decode_budget = args
    return [r.to_json() for r in run_configs(configs, frames, seed, time.monotonic() + budget_s, decode_budget)]


def render_markdown(results: Sequence[dict[str, Any]], *, frames: int, seconds: float, seed: int) -> str:
    """The result file: frames per program and configuration, verdicts, drops by reason, failures."""
    lines = ["# Fuzzing every datapath program", "",
             f"`make fuzz FRAMES={frames}` (seed {seed}): {sum(r['frames'] for r in results):,} frames through "
             f"{len(results)} program/configuration pairs in {seconds / 60:.1f} min "
             "(`python -m ciliumlite.testing.fuzz`; what is generated and checked: docs/testing.md, Fuzzing).", "",
             "| configuration | program | frames | verdicts | drops by reason | changed / decoded (signatures) "
             "| failures |", "|---|---|---:|---|---|---|---:|"]
    for r in results:
        verdicts = ", ".join(f"{k} {v:,}" for k, v in sorted(r["verdicts"].items()))
        drops = ", ".join(f"{k} {v:,}" for k, v in sorted(r["drops"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {r['config']} | {r['program']} | {r['frames']:,} | {verdicts} | {drops or '-'} | "
                     f"{r['changed']:,} / {r['decoded']:,} ({r['signatures']:,}) | {len(r['failures'])} |")
    lines += ["", "## Other counts (forward reasons)", "", "| configuration | program | counted |", "|---|---|---|"]
    for r in results:
        counted = ", ".join(f"{k} {v:,}" for k, v in sorted(r["counted"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {r['config']} | {r['program']} | {counted or '-'} |")
    fails = [f for r in results for f in r["failures"]]
    lines += ["", "## Invariant failures", ""]
    if not fails:
        lines.append("None.")
    by: Counter[tuple[str, str, str]] = Counter((f["invariant"], f["program"], f["detail"][:120]) for f in fails)
    for (inv, prog, detail), n in by.most_common():
        ex = next(f for f in fails if (f["invariant"], f["program"], f["detail"][:120]) == (inv, prog, detail))
        lines.append(f"- **{inv}** in `{prog}` ({n}x, e.g. {ex['config']}): {detail}  ")
        lines.append(f"  frame `{ex['frame'][:200]}`" + (f" -> `{ex['output'][:200]}`" if ex["output"] else ""))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ciliumlite.testing.fuzz``: the full run (root). Exit 1 if an invariant failed."""
    ap = argparse.ArgumentParser(prog="python -m ciliumlite.testing.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000, help="frames per program per configuration")
    ap.add_argument("--time-limit", type=float, default=3600.0, help="seconds for the whole run (bound)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--decode-budget", type=int, default=20000, help="scapy decodes per program/configuration")
    ap.add_argument("--config", action="append", default=[], help="only these configurations (by name)")
    ap.add_argument("--out", default="benchmarks/results/fuzz.md")
    a = ap.parse_args(argv)
    configs = [c for c in all_configs() if not a.config or c.name in a.config]
    started = time.monotonic()
    jobs = max(1, min(a.jobs, len(configs)))
    # Spread the (config, program) pairs evenly: VXLAN configurations have one program more.
    shards: list[list[FuzzConfig]] = [[] for _ in range(jobs)]
    for i, c in enumerate(sorted(configs, key=lambda c: -len(c.programs()))):
        min(shards, key=lambda s: sum(len(x.programs()) for x in s)).append(c) if i >= jobs else shards[i].append(c)
    work = [(s, a.frames, a.seed + 100_000 * i, a.time_limit - 60.0, a.decode_budget) for i, s in enumerate(shards)]
    if jobs == 1:
        parts = [_worker(work[0])]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = pool.map(_worker, work)
    results = [r for part in parts for r in part]
    order = {c.name: i for i, c in enumerate(all_configs())}
    results.sort(key=lambda r: (order.get(r["config"], 99), PROGRAMS.index(r["program"])))
    seconds = time.monotonic() - started
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        f.write(render_markdown(results, frames=a.frames, seconds=seconds, seed=a.seed))
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump({"frames_per_program": a.frames, "seed": a.seed, "seconds": round(seconds, 1),
                   "results": results}, f, indent=1, sort_keys=True)
    failed = sum(len(r["failures"]) for r in results)
    print(f"fuzz: {sum(r['frames'] for r in results):,} frames, {len(results)} pairs, {failed} failures, "
          f"{seconds:.0f} s -> {a.out}")
    return 1 if failed else 0


_ = NetnsRef  # re-exported type for callers that pass a namespace

if __name__ == "__main__":
    sys.exit(main())
