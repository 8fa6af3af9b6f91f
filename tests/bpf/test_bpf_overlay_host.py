"""Golden packets for the multi-node datapath with BPF_PROG_TEST_RUN (the real objects).

* ``bpf_host.o`` ``cil_from_netdev``: a frame from the underlay to a local pod is delivered
  (``TC_ACT_REDIRECT``, MACs rewritten, TTL-1); everything else goes to the stack untouched.
* ``bpf_lxc.o`` ``cil_from_container`` in routing mode 1 (VXLAN): a destination in a remote node's
  pod CIDR gets tunnel metadata and is redirected to ``cilium_vxlan`` with the frame unchanged.
* ``bpf_lxc.o`` in routing mode 2 (native): destinations in ``native_cidr`` are FIB-routed using the
  routes and neighbours of the test namespace.
* ``bpf_overlay.o`` ``cil_from_overlay``: test_run never carries tunnel metadata, so every frame is
  ``DROP_NO_TUNNEL_KEY`` (csrc/README.md, "What BPF_PROG_TEST_RUN can and cannot exercise").

Every object is loaded with ``node_config=DatapathConfig(...).rodata(...)``, exactly as a node does,
and the programs run inside a private namespace whose devices the fixtures create.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from packets import (
    ARPOP_REQUEST,
    BROADCAST,
    ETH_HLEN,
    ETH_P_IP,
    IPPROTO_UDP,
    arp_frame,
    checksum,
    eth,
    icmp_echo,
    ipv4,
    parse_eth,
    parse_ipv4,
    udp,
)

from ciliumlite.bpf import BpfObject, SkbContext
from ciliumlite.bpf.netns import entered
from ciliumlite.datapath import loader
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.datapath.records import (
    ENDPOINT_F_HOST,
    EndpointInfo,
    EndpointKey,
    MetricsKey,
    MetricsValue,
    TunnelKey,
    TunnelValue,
)

pytestmark = pytest.mark.bpf

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
FILE_BPF_LXC, FILE_BPF_OVERLAY, FILE_BPF_HOST, FILE_L3_H, FILE_ENCAP_H, FILE_FIB_H = 1, 2, 3, 104, 111, 113

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
    """The test namespace: ``eth0`` (underlay) and ``lxcsrc`` (a pod's host-side device)."""

    netns: str
    pin_root: str
    eth0: int
    lxc: int
    eth0_mac: str

    @property
    def src(self) -> Ep:   # the sending pod, behind lxcsrc
        return Ep("10.244.1.2", self.lxc, "0a:12:34:56:78:02", "0e:ab:cd:ef:01:02", 0x00ABCD)

    dst = Ep("10.244.1.3", 42, "0a:12:34:56:78:03", "0e:ab:cd:ef:01:03", 0x001234)  # another local pod
    host = Ep(NODE_IP, 1, UNDERLAY_MAC, UNDERLAY_MAC, 1, ENDPOINT_F_HOST)            # the node's own IP


def _ip(netns: str, *args: str) -> None:
    res = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, f"ip {' '.join(args)}: {res.stderr}"


@pytest.fixture
def env(netns: str, bpffs_dir: str) -> Env:
    # veth pairs (this kernel has no dummy driver), both ends up so the routes are usable.
    _ip(netns, "link", "add", "eth0", "address", UNDERLAY_MAC, "type", "veth", "peer", "name", "eth0-peer")
    _ip(netns, "link", "add", "lxcsrc", "type", "veth", "peer", "name", "lxcsrc-peer")
    for dev in ("eth0", "eth0-peer", "lxcsrc", "lxcsrc-peer"):
        _ip(netns, "link", "set", dev, "up")
    _ip(netns, "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
    _ip(netns, "neigh", "add", REMOTE_IP, "lladdr", REMOTE_MAC, "dev", "eth0", "nud", "permanent")
    _ip(netns, "route", "add", "10.244.2.0/24", "via", REMOTE_IP)
    _ip(netns, "route", "add", "10.244.3.0/24", "via", UNRESOLVED_IP)
    _ip(netns, "route", "add", "blackhole", "10.244.4.0/24")
    # Locked: forwarding ignores an unlocked route MTU (ip_mtu_from_fib_result), as the stack does.
    _ip(netns, "route", "add", "10.244.5.0/24", "via", REMOTE_IP, "mtu", "lock", "1000")
    _ip(netns, "route", "add", "192.0.2.0/24", "via", REMOTE_IP)
    # After the devices exist: ip_forward=1 switches forwarding on for every existing device.
    set_sysctl(netns, "net.ipv4.ip_forward", "1")
    from pyroute2 import IPRoute

    with IPRoute(netns=netns) as ipr:
        eth0, lxc = ipr.link_lookup(ifname="eth0")[0], ipr.link_lookup(ifname="lxcsrc")[0]
        mac = ipr.get_links(eth0)[0].get_attr("IFLA_ADDRESS")
    return Env(netns, bpffs_dir, eth0, lxc, mac)


class Loaded:
    """One loaded object, its program and the node's shared maps."""

    def __init__(self, env: Env, name: str, prog: str, routing: str, *, tunnel_ifindex: int | None = None,
                 extra: dict[str, int] | None = None) -> None:
        cfg = DatapathConfig(node_name="worker1", pod_cidr=POD_CIDR, node_ip=NODE_IP, routing=routing)  # type: ignore[arg-type]
        self.node_config = cfg.rodata(tunnel_ifindex=env.lxc + 100 if tunnel_ifindex is None else tunnel_ifindex,
                                      native_ifindex=env.eth0)
        self.env = env
        with entered(env.netns):
            self.obj: BpfObject = loader.load(name, env.pin_root, extra, node_config=self.node_config)
        self.prog = self.obj.program(prog)
        self.endpoints = self.obj.map("cilium_lxc", EndpointKey, EndpointInfo)
        self.metrics = self.obj.map("cilium_metrics", MetricsKey, MetricsValue)

    def add_endpoints(self, *eps: Ep) -> None:
        for i, ep in enumerate(eps, start=1):
            self.endpoints.set(EndpointKey(ip4=ep.ip), ep.info(i))

    def keys(self) -> Counter[tuple[int, int, int]]:
        """Packets by (reason, dir, file), summed over CPUs and lines."""
        c: Counter[tuple[int, int, int]] = Counter()
        for key, per_cpu in self.metrics.items():
            c[(key.reason, key.dir, key.file)] += sum(v.count for v in per_cpu)
        return c

    def run(self, frame: bytes, ifindex: int) -> tuple[int, bytes, Counter[tuple[int, int, int]]]:
        """Run once on ``frame`` arriving on ``ifindex``; also what the run added to cilium_metrics."""
        before = self.keys()
        with entered(self.env.netns):
            res = self.prog.run(frame, ctx=SkbContext(ifindex=ifindex))
        after = self.keys()
        after.subtract(before)
        return res.retval, res.data, +after

    def close(self) -> None:
        self.obj.close()


@pytest.fixture
def loaded() -> Iterator[list[Loaded]]:
    objs: list[Loaded] = []
    yield objs
    for o in objs:
        o.close()


def lxc_obj(env: Env, loaded: list[Loaded], routing: str, **kw: int) -> Loaded:
    o = Loaded(env, "bpf_lxc", "cil_from_container", routing, extra={"enable_arp_responder": 1}, **kw)
    loaded.append(o)
    o.add_endpoints(env.src, env.dst, env.host)
    return o


def one(reason: Reason, direction: Direction, file: int) -> Counter[tuple[int, int, int]]:
    return Counter({(int(reason), int(direction), file): 1})


def delivered(frame: bytes, dst: Ep) -> bytes:
    """ipv4_local_delivery's output: MACs of ``dst``, TTL-1, header checksum recomputed."""
    return routed(frame, dst.mac, dst.node_mac)


def routed(frame: bytes, dmac: str | None = None, smac: str | None = None) -> bytes:
    """``frame`` with TTL-1 (checksum recomputed) and, when given, new MACs."""
    e = parse_eth(frame)
    ihl = (frame[ETH_HLEN] & 0xF) * 4
    hdr = bytearray(frame[ETH_HLEN:ETH_HLEN + ihl])
    hdr[8] -= 1
    hdr[10:12] = b"\0\0"
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    return eth(dmac or e.dst, smac or e.src, e.ethertype) + bytes(hdr) + frame[ETH_HLEN + ihl:]


def from_pod(env: Env, dst: str, *, size: int = 0, ttl: int = 64) -> bytes:
    src = env.src
    payload = icmp_echo(payload=b"golden".ljust(size, b"."))
    return eth(src.node_mac, src.mac, ETH_P_IP) + ipv4(src.ip, dst, payload, ttl=ttl)


def from_wire(env: Env, dst: str, *, dmac: str | None = None, ttl: int = 64, src: str = "10.244.2.9") -> bytes:
    return eth(dmac or env.eth0_mac, REMOTE_MAC, ETH_P_IP) + ipv4(src, dst, icmp_echo(), ttl=ttl)


# -- shared state -----------------------------------------------------------------------------------------
def test_objects_share_the_nodes_maps_by_pin(env: Env, loaded: list[Loaded]) -> None:
    lxc = lxc_obj(env, loaded, "vxlan")
    host = Loaded(env, "bpf_host", "cil_from_netdev", "vxlan")
    overlay = Loaded(env, "bpf_overlay", "cil_from_overlay", "vxlan")
    loaded += [host, overlay]
    # One endpoint map for all three objects: what the lxc object holds, the others see.
    assert dict(host.endpoints.items()) == dict(lxc.endpoints.items()) == dict(overlay.endpoints.items())
    assert len(dict(lxc.endpoints.items())) == 3
    # .rodata is the node's: routing mode 1, addresses in network order, the /24 tunnel prefix.
    for o in (lxc, host, overlay):
        assert o.obj.rodata["routing_mode"] == 1
        assert o.obj.rodata["tunnel_prefix_mask"] == 0x00FFFFFF
        assert o.obj.rodata["node_ipv4"] == int.from_bytes(bytes([10, 0, 0, 12]), "little")


# -- bpf_host: cil_from_netdev ----------------------------------------------------------------------------
@pytest.fixture
def host(env: Env, loaded: list[Loaded]) -> Loaded:
    # cil_from_netdev reads no routing knob: native mode, where it is required, stands for both.
    o = Loaded(env, "bpf_host", "cil_from_netdev", "native")
    loaded.append(o)
    o.add_endpoints(env.src, env.dst, env.host)
    return o


@pytest.mark.parametrize("ttl", [64, 2, 255])
def test_netdev_delivers_to_local_pod(env: Env, host: Loaded, ttl: int) -> None:
    frame = from_wire(env, env.dst.ip, ttl=ttl)
    rc, out, counted = host.run(frame, env.eth0)
    assert rc == TC_ACT_REDIRECT
    assert out.hex() == delivered(frame, env.dst).hex()
    e, ip4 = parse_eth(out), parse_ipv4(out)
    assert (e.src, e.dst) == (env.dst.node_mac, env.dst.mac)   # lxc MAC -> pod MAC
    assert (ip4.ttl, ip4.csum_ok) == (ttl - 1, True)
    assert counted == one(Reason.FORWARDED, Direction.INGRESS, FILE_L3_H)


def test_netdev_delivers_udp_to_local_pod(env: Env, host: Loaded) -> None:
    src = "10.244.2.9"
    frame = eth(env.eth0_mac, REMOTE_MAC, ETH_P_IP) + ipv4(src, env.src.ip, udp(src, env.src.ip, 4000, 53, b"q"),
                                                          proto=IPPROTO_UDP)
    rc, out, _ = host.run(frame, env.eth0)
    assert (rc, out.hex()) == (TC_ACT_REDIRECT, delivered(frame, env.src).hex())


@pytest.mark.parametrize("case", ["other-host-mac", "broadcast-mac", "node-ip", "unknown-pod", "remote-pod",
                                  "arp", "vxlan-udp", "bad-ihl", "bad-version"])
def test_netdev_passes_everything_else_to_stack_untouched(env: Env, host: Loaded, case: str) -> None:
    frames = {
        "other-host-mac": from_wire(env, env.dst.ip, dmac="0e:99:99:99:99:99"),
        "broadcast-mac": from_wire(env, env.dst.ip, dmac=BROADCAST),
        "node-ip": from_wire(env, NODE_IP),
        "unknown-pod": from_wire(env, "10.244.1.99"),
        "remote-pod": from_wire(env, REMOTE_POD),
        "arp": arp_frame(ARPOP_REQUEST, REMOTE_MAC, REMOTE_IP, NODE_IP),
        "vxlan-udp": eth(env.eth0_mac, REMOTE_MAC, ETH_P_IP)
        + ipv4(REMOTE_IP, NODE_IP, udp(REMOTE_IP, NODE_IP, 40000, 8472, bytes(8) + from_wire(env, env.dst.ip)),
               proto=IPPROTO_UDP),
        "bad-ihl": eth(env.eth0_mac, REMOTE_MAC, ETH_P_IP) + ipv4("10.244.2.9", env.dst.ip, icmp_echo(), ihl=4),
        "bad-version": eth(env.eth0_mac, REMOTE_MAC, ETH_P_IP)
        + ipv4("10.244.2.9", env.dst.ip, icmp_echo(), version=6),
    }
    frame = frames[case]
    rc, out, counted = host.run(frame, env.eth0)
    assert (rc, out.hex()) == (TC_ACT_OK, frame.hex())
    assert counted == one(Reason.TO_STACK, Direction.INGRESS, FILE_BPF_HOST)


@pytest.mark.parametrize("ttl", [1, 0])
def test_netdev_drops_pod_bound_packet_with_exhausted_ttl(env: Env, host: Loaded, ttl: int) -> None:
    rc, _, counted = host.run(from_wire(env, env.dst.ip, ttl=ttl), env.eth0)
    assert rc == TC_ACT_SHOT
    assert [(r, d) for (r, d, _f) in counted] == [(Reason.DROP_TTL_EXCEEDED, Direction.INGRESS)]


# -- bpf_lxc, routing mode 1 (VXLAN) ----------------------------------------------------------------------
@pytest.fixture
def tunnel(env: Env, loaded: list[Loaded]) -> Loaded:
    o = lxc_obj(env, loaded, "vxlan")
    tm = o.obj.map("cilium_tunnel_map", TunnelKey, TunnelValue)
    tm.set(TunnelKey(ip4="10.244.2.0"), TunnelValue(ip4=REMOTE_IP))
    tm.set(TunnelKey(ip4="10.244.6.0"), TunnelValue(ip4="0.0.0.0"))  # a broken entry
    return o


@pytest.mark.parametrize("dst", [REMOTE_POD, "10.244.2.1", "10.244.2.255"], ids=["pod", "first", "last"])
def test_tunnel_mode_encapsulates_remote_pod_traffic(env: Env, tunnel: Loaded, dst: str) -> None:
    frame = from_pod(env, dst)
    rc, out, counted = tunnel.run(frame, env.lxc)
    # The frame itself is untouched: the outer headers are built by cilium_vxlan, not by BPF.
    assert (rc, out.hex()) == (TC_ACT_REDIRECT, frame.hex())
    assert counted == one(Reason.ENCAPSULATED, Direction.EGRESS, FILE_ENCAP_H)


def test_tunnel_mode_local_pod_still_redirect_peer(env: Env, tunnel: Loaded) -> None:
    frame = from_pod(env, env.dst.ip)
    rc, out, counted = tunnel.run(frame, env.lxc)
    assert (rc, out.hex()) == (TC_ACT_REDIRECT, delivered(frame, env.dst).hex())
    assert counted == one(Reason.FORWARDED, Direction.EGRESS, FILE_L3_H)


@pytest.mark.parametrize("dst", ["10.244.9.7", "10.244.3.7", "192.0.2.7", NODE_IP, REMOTE_IP],
                         ids=["unknown-cidr", "neighbour-cidr", "world", "own-node", "remote-node"])
def test_tunnel_mode_miss_goes_to_stack_unchanged(env: Env, tunnel: Loaded, dst: str) -> None:
    frame = from_pod(env, dst)
    rc, out, counted = tunnel.run(frame, env.lxc)
    assert (rc, out.hex()) == (TC_ACT_OK, frame.hex())
    assert counted == one(Reason.TO_STACK, Direction.EGRESS, FILE_BPF_LXC)


def test_tunnel_entry_removed_means_stack(env: Env, tunnel: Loaded) -> None:
    frame = from_pod(env, REMOTE_POD)
    assert tunnel.run(frame, env.lxc)[0] == TC_ACT_REDIRECT
    tunnel.obj.map("cilium_tunnel_map", TunnelKey, TunnelValue).delete(TunnelKey(ip4="10.244.2.0"))
    assert tunnel.run(frame, env.lxc)[:2] == (TC_ACT_OK, frame)


def test_tunnel_entry_without_node_ip_is_dropped(env: Env, tunnel: Loaded) -> None:
    rc, _, counted = tunnel.run(from_pod(env, "10.244.6.7"), env.lxc)
    assert rc == TC_ACT_SHOT
    assert counted == one(Reason.DROP_NO_TUNNEL_ENDPOINT, Direction.EGRESS, FILE_ENCAP_H)


def test_tunnel_mode_without_tunnel_device_drops(env: Env, loaded: list[Loaded]) -> None:
    o = lxc_obj(env, loaded, "vxlan", tunnel_ifindex=0)
    o.obj.map("cilium_tunnel_map", TunnelKey, TunnelValue).set(TunnelKey(ip4="10.244.2.0"), TunnelValue(ip4=REMOTE_IP))
    rc, _, counted = o.run(from_pod(env, REMOTE_POD), env.lxc)
    assert rc == TC_ACT_SHOT
    assert counted == one(Reason.DROP_NO_TUNNEL_ENDPOINT, Direction.EGRESS, FILE_ENCAP_H)


def test_identity_beyond_24_bits_is_not_truncated_into_the_vni(env: Env, tunnel: Loaded) -> None:
    big = Ep(env.src.ip, env.lxc, env.src.mac, env.src.node_mac, 0x1000000 + 0xABCD)
    tunnel.endpoints.set(EndpointKey(ip4=big.ip), big.info(1))
    rc, _, counted = tunnel.run(from_pod(env, REMOTE_POD), env.lxc)
    assert rc == TC_ACT_SHOT
    assert counted == one(Reason.DROP_INVALID_IDENTITY, Direction.EGRESS, FILE_ENCAP_H)


def test_tunnel_map_is_ignored_in_native_mode(env: Env, loaded: list[Loaded]) -> None:
    o = lxc_obj(env, loaded, "native")
    o.obj.map("cilium_tunnel_map", TunnelKey, TunnelValue).set(TunnelKey(ip4="10.244.9.0"), TunnelValue(ip4=REMOTE_IP))
    frame = from_pod(env, UNROUTED_POD)
    rc, out, counted = o.run(frame, env.lxc)
    assert (rc, out) == (TC_ACT_OK, frame)          # no route: stack, and no encapsulation
    assert counted == one(Reason.TO_STACK, Direction.EGRESS, FILE_FIB_H)


# -- bpf_lxc, routing mode 2 (native) ---------------------------------------------------------------------
@pytest.fixture
def native(env: Env, loaded: list[Loaded]) -> Loaded:
    return lxc_obj(env, loaded, "native")


def test_native_fib_success_rewrites_macs_and_redirects(env: Env, native: Loaded) -> None:
    frame = from_pod(env, REMOTE_POD)
    rc, out, counted = native.run(frame, env.lxc)
    assert rc == TC_ACT_REDIRECT
    # Next hop worker3's MAC from the neighbour table, our underlay MAC as source, TTL-1.
    assert out.hex() == routed(frame, REMOTE_MAC, env.eth0_mac).hex()
    assert parse_ipv4(out).csum_ok
    assert counted == one(Reason.FIB_REDIRECT, Direction.EGRESS, FILE_FIB_H)


def test_native_no_neighbour_redirects_via_neigh_with_macs_unchanged(env: Env, native: Loaded) -> None:
    frame = from_pod(env, NO_NEIGH_POD)
    rc, out, counted = native.run(frame, env.lxc)
    assert rc == TC_ACT_REDIRECT
    assert out.hex() == routed(frame).hex()   # TTL-1 only: bpf_redirect_neigh fills in the MACs
    assert counted == one(Reason.FIB_REDIRECT, Direction.EGRESS, FILE_FIB_H)


@pytest.mark.parametrize(("dst", "file"), [(UNROUTED_POD, FILE_FIB_H), (WORLD_ROUTED, FILE_BPF_LXC),
                                           (REMOTE_IP, FILE_BPF_LXC)],
                         ids=["no-route", "outside-native-cidr", "node-ip"])
def test_native_to_stack_unchanged(env: Env, native: Loaded, dst: str, file: int) -> None:
    frame = from_pod(env, dst)
    rc, out, counted = native.run(frame, env.lxc)
    assert (rc, out.hex()) == (TC_ACT_OK, frame.hex())
    assert counted == one(Reason.TO_STACK, Direction.EGRESS, file)


def test_native_frag_needed_goes_to_stack(env: Env, native: Loaded) -> None:
    small = from_pod(env, SMALL_MTU_POD, size=900)
    big = from_pod(env, SMALL_MTU_POD, size=1100)  # > the route's mtu 1000
    assert native.run(small, env.lxc)[0] == TC_ACT_REDIRECT
    rc, out, counted = native.run(big, env.lxc)
    assert (rc, out.hex()) == (TC_ACT_OK, big.hex())
    assert counted == one(Reason.TO_STACK, Direction.EGRESS, FILE_FIB_H)


def test_native_blackhole_is_dropped_no_fib(env: Env, native: Loaded) -> None:
    rc, _, counted = native.run(from_pod(env, BLACKHOLE_POD), env.lxc)
    assert rc == TC_ACT_SHOT
    assert counted == one(Reason.DROP_NO_FIB, Direction.EGRESS, FILE_FIB_H)


def test_native_forwarding_disabled_on_lxc_is_dropped_no_fib(env: Env, native: Loaded) -> None:
    set_sysctl(env.netns, "net.ipv4.conf.lxcsrc.forwarding", "0")
    rc, _, counted = native.run(from_pod(env, REMOTE_POD), env.lxc)
    assert rc == TC_ACT_SHOT
    assert counted == one(Reason.DROP_NO_FIB, Direction.EGRESS, FILE_FIB_H)


def test_native_ttl_1_is_dropped_not_forwarded(env: Env, native: Loaded) -> None:
    rc, _, counted = native.run(from_pod(env, REMOTE_POD, ttl=1), env.lxc)
    assert rc == TC_ACT_SHOT
    assert [(r, d) for (r, d, _f) in counted] == [(Reason.DROP_TTL_EXCEEDED, Direction.EGRESS)]


def test_native_local_pod_still_redirect_peer(env: Env, native: Loaded) -> None:
    frame = from_pod(env, env.dst.ip)
    rc, out, counted = native.run(frame, env.lxc)
    assert (rc, out.hex()) == (TC_ACT_REDIRECT, delivered(frame, env.dst).hex())
    assert counted == one(Reason.FORWARDED, Direction.EGRESS, FILE_L3_H)


# -- bpf_overlay: cil_from_overlay ------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["to-local-pod", "to-node", "arp"])
def test_overlay_without_tunnel_metadata_drops_no_tunnel_key(env: Env, loaded: list[Loaded], case: str) -> None:
    o = Loaded(env, "bpf_overlay", "cil_from_overlay", "vxlan")
    loaded.append(o)
    o.add_endpoints(env.src, env.dst, env.host)
    frame = {"to-local-pod": from_wire(env, env.dst.ip), "to-node": from_wire(env, NODE_IP),
             "arp": arp_frame(ARPOP_REQUEST, REMOTE_MAC, "10.244.2.9", env.dst.ip)}[case]
    rc, _, counted = o.run(frame, env.lxc)
    assert rc == TC_ACT_SHOT
    assert counted == one(Reason.DROP_NO_TUNNEL_KEY, Direction.INGRESS, FILE_BPF_OVERLAY)
