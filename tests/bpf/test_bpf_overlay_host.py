"""Golden packets for the multi-node datapath with BPF_PROG_TEST_RUN (the real objects).

* ``bpf_host.o`` ``cil_from_netdev``: a frame from the underlay to a local pod is delivered
  (``TcAction.REDIRECT``, MACs rewritten, TTL-1); everything else goes to the stack untouched.
* ``bpf_lxc.o`` ``cil_from_container`` in routing mode 1 (VXLAN): a destination in a remote node's
  pod CIDR gets tunnel metadata and is redirected to ``cilium_vxlan`` with the frame unchanged.
* ``bpf_lxc.o`` in routing mode 2 (native): destinations in ``native_cidr`` are FIB-routed using the
  routes and neighbours of the test namespace.
* ``bpf_overlay.o`` ``cil_from_overlay``: test_run never carries tunnel metadata, so every frame is
  ``DROP_NO_TUNNEL_KEY`` (csrc/README.md, "What BPF_PROG_TEST_RUN can and cannot exercise").

Every object is loaded with ``DatapathConfig(...).node_rodata(...)``, exactly as a node does (the
``datapath_objects`` fixture), and the programs run inside the fixture's namespace, whose devices
the ``node`` fixture creates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from ciliumlite.bpf import TcAction
from ciliumlite.datapath import maps
from ciliumlite.datapath.config import DatapathConfig, Routing
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.datapath.records import ENDPOINT_F_HOST, TunnelKey, TunnelValue
from ciliumlite.testing.datapath import (
    DatapathFactory,
    DatapathObjects,
    EndpointRow,
    ObjectName,
    Tally,
    source_file_id,
)
from ciliumlite.testing.packets import (
    ARPOP_REQUEST,
    BROADCAST,
    ETH_P_IP,
    IPPROTO_UDP,
    arp_frame,
    eth,
    icmp_echo,
    ipv4,
    parse_eth,
    parse_ipv4,
    routed,
    udp,
)

pytestmark = pytest.mark.bpf

NODE_IP = "10.0.0.12"           # this node (worker1)
REMOTE_IP = "10.0.0.13"         # worker3: its neighbour entry is known
UNRESOLVED_IP = "10.0.0.14"     # worker4: routed to, but no neighbour entry
REMOTE_MAC = "0e:00:00:00:00:13"
UNDERLAY_MAC = "0e:00:00:00:00:12"
POD_CIDR = "10.244.1.0/24"
REMOTE_POD = "10.244.2.7"       # in worker3's CIDR 10.244.2.0/24
NO_NEIGH_POD = "10.244.3.7"     # in 10.244.3.0/24 via UNRESOLVED_IP
BLACKHOLE_POD = "10.244.4.7"    # blackhole route
SMALL_MTU_POD = "10.244.5.7"    # route with a locked mtu 1000
UNROUTED_POD = "10.244.9.7"     # in native_cidr, no route at all
WORLD_ROUTED = "192.0.2.7"      # outside native_cidr, although the netns has a route to it

DST = EndpointRow("10.244.1.3", 42, "0a:12:34:56:78:03", "0e:ab:cd:ef:01:03", 0x001234)  # another local pod
HOST = EndpointRow(NODE_IP, 1, UNDERLAY_MAC, UNDERLAY_MAC, 1, ENDPOINT_F_HOST)             # the node's own IP


@pytest.fixture
def node(datapath_objects: DatapathFactory) -> DatapathFactory:
    """The test namespace: ``eth0`` (underlay) and ``lxcsrc`` (a pod's host-side device), routes."""
    node = datapath_objects
    node.underlay("eth0", f"{NODE_IP}/24", mac=UNDERLAY_MAC, neighbours={REMOTE_IP: REMOTE_MAC})
    node.veth("lxcsrc")
    node.ip("route", "add", "10.244.2.0/24", "via", REMOTE_IP)
    node.ip("route", "add", "10.244.3.0/24", "via", UNRESOLVED_IP)
    node.ip("route", "add", "blackhole", "10.244.4.0/24")
    # Locked: forwarding ignores an unlocked route MTU (ip_mtu_from_fib_result), as the stack does.
    node.ip("route", "add", "10.244.5.0/24", "via", REMOTE_IP, "mtu", "lock", "1000")
    node.ip("route", "add", "192.0.2.0/24", "via", REMOTE_IP)
    # After the devices exist: ip_forward=1 switches forwarding on for every existing device.
    set_sysctl(node.netns, "net.ipv4.ip_forward", "1")
    return node


@pytest.fixture
def eth0(node: DatapathFactory) -> int:
    return node.ifindex("eth0")


def src_row(node: DatapathFactory) -> EndpointRow:
    """The sending pod, behind lxcsrc."""
    return EndpointRow("10.244.1.2", node.ifindex("lxcsrc"), "0a:12:34:56:78:02", "0e:ab:cd:ef:01:02", 0x00ABCD)


@pytest.fixture
def src(node: DatapathFactory) -> EndpointRow:
    return src_row(node)


def load(node: DatapathFactory, routing: Routing, objects: tuple[ObjectName, ...] = ("lxc",), *,
         tunnel_ifindex: int | None = None) -> DatapathObjects:
    """``objects`` of worker1 in ``routing`` mode, with the endpoints src, DST and HOST."""
    cfg = DatapathConfig(node_name="worker1", pod_cidr=POD_CIDR, node_ip=NODE_IP, routing=routing)
    lxc = node.ifindex("lxcsrc")
    dp = node(cfg, objects, tunnel_ifindex=lxc + 100 if tunnel_ifindex is None else tunnel_ifindex,
              native_ifindex=node.ifindex("eth0"))
    dp.add_endpoints(src_row(node), DST, HOST)
    return dp


def one(reason: Reason, direction: Direction, file: str) -> Counter[Tally]:
    return Counter({Tally(int(reason), int(direction), source_file_id(file)): 1})


def delivered(frame: bytes, dst: EndpointRow) -> bytes:
    """ipv4_local_delivery's output: MACs of ``dst``, TTL-1, header checksum recomputed."""
    return routed(frame, dst.mac, dst.node_mac)


def from_pod(src: EndpointRow, dst: str, *, size: int = 0, ttl: int = 64) -> bytes:
    payload = icmp_echo(payload=b"golden".ljust(size, b"."))
    return eth(src.node_mac, src.mac, ETH_P_IP) + ipv4(src.ip, dst, payload, ttl=ttl)


def from_wire(dst: str, *, dmac: str = UNDERLAY_MAC, ttl: int = 64, src: str = "10.244.2.9") -> bytes:
    return eth(dmac, REMOTE_MAC, ETH_P_IP) + ipv4(src, dst, icmp_echo(), ttl=ttl)


# -- shared state -----------------------------------------------------------------------------------------
def test_objects_share_the_nodes_maps_by_pin(node: DatapathFactory) -> None:
    dp = load(node, "vxlan", ("lxc", "host", "overlay"))
    lxc, host, overlay = (dp.objects[n] for n in ("lxc", "host", "overlay"))
    # One endpoint map for all three objects: what the lxc object holds, the others see.
    endpoints = {o: dict(maps.LXC.from_object(o).items()) for o in (lxc, host, overlay)}
    assert endpoints[host] == endpoints[lxc] == endpoints[overlay]
    assert len(endpoints[lxc]) == 3
    # .rodata is the node's: routing mode 1, addresses in network order, the /24 tunnel prefix.
    for o in (lxc, host, overlay):
        assert o.rodata["routing_mode"] == 1
        assert o.rodata["tunnel_prefix_mask"] == 0x00FFFFFF
        assert o.rodata["node_ipv4"] == int.from_bytes(bytes([10, 0, 0, 12]), "little")


# -- bpf_host: cil_from_netdev ----------------------------------------------------------------------------
@pytest.fixture
def host(node: DatapathFactory) -> DatapathObjects:
    # cil_from_netdev reads no routing knob: native mode, where it is required, stands for both.
    return load(node, "native", ("host",))


@pytest.mark.parametrize("ttl", [64, 2, 255])
def test_netdev_delivers_to_local_pod(host: DatapathObjects, eth0: int, ttl: int) -> None:
    frame = from_wire(DST.ip, ttl=ttl)
    run = host.run(frame, "cil_from_netdev", ifindex=eth0)
    out = run.data
    assert run.verdict == TcAction.REDIRECT
    assert out.hex() == delivered(frame, DST).hex()
    e, ip4 = parse_eth(out), parse_ipv4(out)
    assert (e.src, e.dst) == (DST.node_mac, DST.mac)   # lxc MAC -> pod MAC
    assert (ip4.ttl, ip4.csum_ok) == (ttl - 1, True)
    assert run.counted == one(Reason.FORWARDED, Direction.INGRESS, "l3.h")


def test_netdev_delivers_udp_to_local_pod(host: DatapathObjects, eth0: int, src: EndpointRow) -> None:
    peer = "10.244.2.9"
    frame = eth(UNDERLAY_MAC, REMOTE_MAC, ETH_P_IP) + ipv4(peer, src.ip, udp(peer, src.ip, 4000, 53, b"q"),
                                                           proto=IPPROTO_UDP)
    run = host.run(frame, "cil_from_netdev", ifindex=eth0)
    assert (run.verdict, run.data.hex()) == (TcAction.REDIRECT, delivered(frame, src).hex())


@pytest.mark.parametrize("case", ["other-host-mac", "broadcast-mac", "node-ip", "unknown-pod", "remote-pod",
                                  "arp", "vxlan-udp", "bad-ihl", "bad-version"])
def test_netdev_passes_everything_else_to_stack_untouched(host: DatapathObjects, eth0: int, case: str) -> None:
    frames = {
        "other-host-mac": from_wire(DST.ip, dmac="0e:99:99:99:99:99"),
        "broadcast-mac": from_wire(DST.ip, dmac=BROADCAST),
        "node-ip": from_wire(NODE_IP),
        "unknown-pod": from_wire("10.244.1.99"),
        "remote-pod": from_wire(REMOTE_POD),
        "arp": arp_frame(ARPOP_REQUEST, REMOTE_MAC, REMOTE_IP, NODE_IP),
        "vxlan-udp": eth(UNDERLAY_MAC, REMOTE_MAC, ETH_P_IP)
        + ipv4(REMOTE_IP, NODE_IP, udp(REMOTE_IP, NODE_IP, 40000, 8472, bytes(8) + from_wire(DST.ip)),
               proto=IPPROTO_UDP),
        "bad-ihl": eth(UNDERLAY_MAC, REMOTE_MAC, ETH_P_IP) + ipv4("10.244.2.9", DST.ip, icmp_echo(), ihl=4),
        "bad-version": eth(UNDERLAY_MAC, REMOTE_MAC, ETH_P_IP)
        + ipv4("10.244.2.9", DST.ip, icmp_echo(), version=6),
    }
    frame = frames[case]
    run = host.run(frame, "cil_from_netdev", ifindex=eth0)
    assert (run.verdict, run.data.hex()) == (TcAction.OK, frame.hex())
    assert run.counted == one(Reason.TO_STACK, Direction.INGRESS, "bpf_host.c")


@pytest.mark.parametrize("ttl", [1, 0])
def test_netdev_drops_pod_bound_packet_with_exhausted_ttl(host: DatapathObjects, eth0: int, ttl: int) -> None:
    run = host.run(from_wire(DST.ip, ttl=ttl), "cil_from_netdev", ifindex=eth0)
    assert run.verdict == TcAction.SHOT
    assert [(r, d) for (r, d, _f) in run.counted] == [(Reason.DROP_TTL_EXCEEDED, Direction.INGRESS)]


# -- bpf_lxc, routing mode 1 (VXLAN) ----------------------------------------------------------------------
@pytest.fixture
def tunnel(node: DatapathFactory) -> DatapathObjects:
    dp = load(node, "vxlan")
    dp.maps.tunnel.set(TunnelKey(ip4="10.244.2.0"), TunnelValue(ip4=REMOTE_IP))
    dp.maps.tunnel.set(TunnelKey(ip4="10.244.6.0"), TunnelValue(ip4="0.0.0.0"))  # a broken entry
    return dp


@pytest.mark.parametrize("dst", [REMOTE_POD, "10.244.2.1", "10.244.2.255"], ids=["pod", "first", "last"])
def test_tunnel_mode_encapsulates_remote_pod_traffic(tunnel: DatapathObjects, src: EndpointRow, dst: str) -> None:
    frame = from_pod(src, dst)
    run = tunnel.run(frame, ifindex=src.ifindex)
    # The frame itself is untouched: the outer headers are built by cilium_vxlan, not by BPF.
    assert (run.verdict, run.data.hex()) == (TcAction.REDIRECT, frame.hex())
    assert run.counted == one(Reason.ENCAPSULATED, Direction.EGRESS, "encap.h")


def test_tunnel_mode_local_pod_still_redirect_peer(tunnel: DatapathObjects, src: EndpointRow) -> None:
    frame = from_pod(src, DST.ip)
    run = tunnel.run(frame, ifindex=src.ifindex)
    assert (run.verdict, run.data.hex()) == (TcAction.REDIRECT, delivered(frame, DST).hex())
    assert run.counted == one(Reason.FORWARDED, Direction.EGRESS, "l3.h")


@pytest.mark.parametrize("dst", ["10.244.9.7", "10.244.3.7", "192.0.2.7", NODE_IP, REMOTE_IP],
                         ids=["unknown-cidr", "neighbour-cidr", "world", "own-node", "remote-node"])
def test_tunnel_mode_miss_goes_to_stack_unchanged(tunnel: DatapathObjects, src: EndpointRow, dst: str) -> None:
    frame = from_pod(src, dst)
    run = tunnel.run(frame, ifindex=src.ifindex)
    assert (run.verdict, run.data.hex()) == (TcAction.OK, frame.hex())
    assert run.counted == one(Reason.TO_STACK, Direction.EGRESS, "bpf_lxc.c")


def test_tunnel_entry_removed_means_stack(tunnel: DatapathObjects, src: EndpointRow) -> None:
    frame = from_pod(src, REMOTE_POD)
    assert tunnel.run(frame, ifindex=src.ifindex).verdict == TcAction.REDIRECT
    tunnel.maps.tunnel.delete(TunnelKey(ip4="10.244.2.0"))
    run = tunnel.run(frame, ifindex=src.ifindex)
    assert (run.verdict, run.data) == (TcAction.OK, frame)


def test_tunnel_entry_without_node_ip_is_dropped(tunnel: DatapathObjects, src: EndpointRow) -> None:
    run = tunnel.run(from_pod(src, "10.244.6.7"), ifindex=src.ifindex)
    assert run.verdict == TcAction.SHOT
    assert run.counted == one(Reason.DROP_NO_TUNNEL_ENDPOINT, Direction.EGRESS, "encap.h")


def test_tunnel_mode_without_tunnel_device_drops(node: DatapathFactory, src: EndpointRow) -> None:
    dp = load(node, "vxlan", tunnel_ifindex=0)
    dp.maps.tunnel.set(TunnelKey(ip4="10.244.2.0"), TunnelValue(ip4=REMOTE_IP))
    run = dp.run(from_pod(src, REMOTE_POD), ifindex=src.ifindex)
    assert run.verdict == TcAction.SHOT
    assert run.counted == one(Reason.DROP_NO_TUNNEL_ENDPOINT, Direction.EGRESS, "encap.h")


def test_identity_beyond_24_bits_is_not_truncated_into_the_vni(tunnel: DatapathObjects, src: EndpointRow) -> None:
    tunnel.set_endpoint(replace(src, sec_id=0x1000000 + 0xABCD), 1)
    run = tunnel.run(from_pod(src, REMOTE_POD), ifindex=src.ifindex)
    assert run.verdict == TcAction.SHOT
    assert run.counted == one(Reason.DROP_INVALID_IDENTITY, Direction.EGRESS, "encap.h")


def test_tunnel_map_is_ignored_in_native_mode(node: DatapathFactory, src: EndpointRow) -> None:
    dp = load(node, "native")
    dp.maps.tunnel.set(TunnelKey(ip4="10.244.9.0"), TunnelValue(ip4=REMOTE_IP))
    frame = from_pod(src, UNROUTED_POD)
    run = dp.run(frame, ifindex=src.ifindex)
    assert (run.verdict, run.data) == (TcAction.OK, frame)          # no route: stack, and no encapsulation
    assert run.counted == one(Reason.TO_STACK, Direction.EGRESS, "fib.h")


# -- bpf_lxc, routing mode 2 (native) ---------------------------------------------------------------------
@pytest.fixture
def native(node: DatapathFactory) -> DatapathObjects:
    return load(node, "native")


def test_native_fib_success_rewrites_macs_and_redirects(native: DatapathObjects, src: EndpointRow) -> None:
    frame = from_pod(src, REMOTE_POD)
    run = native.run(frame, ifindex=src.ifindex)
    assert run.verdict == TcAction.REDIRECT
    # Next hop worker3's MAC from the neighbour table, our underlay MAC as source, TTL-1.
    assert run.data.hex() == routed(frame, REMOTE_MAC, UNDERLAY_MAC).hex()
    assert parse_ipv4(run.data).csum_ok
    assert run.counted == one(Reason.FIB_REDIRECT, Direction.EGRESS, "fib.h")


def test_native_no_neighbour_redirects_via_neigh_with_macs_unchanged(native: DatapathObjects,
                                                                      src: EndpointRow) -> None:
    frame = from_pod(src, NO_NEIGH_POD)
    run = native.run(frame, ifindex=src.ifindex)
    assert run.verdict == TcAction.REDIRECT
    assert run.data.hex() == routed(frame).hex()   # TTL-1 only: bpf_redirect_neigh fills in the MACs
    assert run.counted == one(Reason.FIB_REDIRECT, Direction.EGRESS, "fib.h")


@pytest.mark.parametrize(("dst", "file"), [(UNROUTED_POD, "fib.h"), (WORLD_ROUTED, "bpf_lxc.c"),
                                           (REMOTE_IP, "bpf_lxc.c")],
                         ids=["no-route", "outside-native-cidr", "node-ip"])
def test_native_to_stack_unchanged(native: DatapathObjects, src: EndpointRow, dst: str, file: str) -> None:
    frame = from_pod(src, dst)
    run = native.run(frame, ifindex=src.ifindex)
    assert (run.verdict, run.data.hex()) == (TcAction.OK, frame.hex())
    assert run.counted == one(Reason.TO_STACK, Direction.EGRESS, file)


def test_native_frag_needed_goes_to_stack(native: DatapathObjects, src: EndpointRow) -> None:
    small = from_pod(src, SMALL_MTU_POD, size=900)
    big = from_pod(src, SMALL_MTU_POD, size=1100)  # > the route's mtu 1000
    assert native.run(small, ifindex=src.ifindex).verdict == TcAction.REDIRECT
    run = native.run(big, ifindex=src.ifindex)
    assert (run.verdict, run.data.hex()) == (TcAction.OK, big.hex())
    assert run.counted == one(Reason.TO_STACK, Direction.EGRESS, "fib.h")


def test_native_blackhole_is_dropped_no_fib(native: DatapathObjects, src: EndpointRow) -> None:
    run = native.run(from_pod(src, BLACKHOLE_POD), ifindex=src.ifindex)
    assert run.verdict == TcAction.SHOT
    assert run.counted == one(Reason.DROP_NO_FIB, Direction.EGRESS, "fib.h")


def test_native_forwarding_disabled_on_lxc_is_dropped_no_fib(node: DatapathFactory, native: DatapathObjects,
                                                              src: EndpointRow) -> None:
    set_sysctl(node.netns, "net.ipv4.conf.lxcsrc.forwarding", "0")
    run = native.run(from_pod(src, REMOTE_POD), ifindex=src.ifindex)
    assert run.verdict == TcAction.SHOT
    assert run.counted == one(Reason.DROP_NO_FIB, Direction.EGRESS, "fib.h")


def test_native_ttl_1_is_dropped_not_forwarded(native: DatapathObjects, src: EndpointRow) -> None:
    run = native.run(from_pod(src, REMOTE_POD, ttl=1), ifindex=src.ifindex)
    assert run.verdict == TcAction.SHOT
    assert [(r, d) for (r, d, _f) in run.counted] == [(Reason.DROP_TTL_EXCEEDED, Direction.EGRESS)]


def test_native_local_pod_still_redirect_peer(native: DatapathObjects, src: EndpointRow) -> None:
    frame = from_pod(src, DST.ip)
    run = native.run(frame, ifindex=src.ifindex)
    assert (run.verdict, run.data.hex()) == (TcAction.REDIRECT, delivered(frame, DST).hex())
    assert run.counted == one(Reason.FORWARDED, Direction.EGRESS, "l3.h")


# -- bpf_overlay: cil_from_overlay ------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["to-local-pod", "to-node", "arp"])
def test_overlay_without_tunnel_metadata_drops_no_tunnel_key(node: DatapathFactory, src: EndpointRow,
                                                             case: str) -> None:
    dp = load(node, "vxlan", ("overlay",))
    frame = {"to-local-pod": from_wire(DST.ip), "to-node": from_wire(NODE_IP),
             "arp": arp_frame(ARPOP_REQUEST, REMOTE_MAC, "10.244.2.9", DST.ip)}[case]
    run = dp.run(frame, "cil_from_overlay", ifindex=src.ifindex)
    assert run.verdict == TcAction.SHOT
    assert run.counted == one(Reason.DROP_NO_TUNNEL_KEY, Direction.INGRESS, "bpf_overlay.c")
