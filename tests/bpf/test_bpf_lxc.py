"""Golden packets through cil_from_container with BPF_PROG_TEST_RUN (the real bpf_lxc.o).

The program is run with ``SkbContext(ifindex=1)`` inside a private namespace, so ``ctx->ifindex`` is
that namespace's ``lo``; the source endpoint of every frame below is registered with ifindex 1.
Redirect verdicts are returned by test_run, not performed, so TC_ACT_REDIRECT (7) plus the output
frame is exactly what the kernel would have redirected.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from packets import (
    ARPOP_REPLY,
    ARPOP_REQUEST,
    BROADCAST,
    ETH_HLEN,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_UDP,
    arp,
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
from ciliumlite.bpf.errors import BpfError
from ciliumlite.bpf.netns import entered
from ciliumlite.datapath import loader
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.datapath.records import ENDPOINT_F_HOST, EndpointInfo, EndpointKey, MetricsKey, MetricsValue

pytestmark = pytest.mark.bpf

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
FILE_BPF_LXC, FILE_L3_H = 1, 104


@dataclass(frozen=True)
class Ep:
    ip: str
    ifindex: int
    mac: str
    node_mac: str
    flags: int = 0

    def info(self, lxc_id: int) -> EndpointInfo:
        return EndpointInfo(ifindex=self.ifindex, lxc_id=lxc_id, flags=self.flags, mac=self.mac,
                            node_mac=self.node_mac, sec_id=1000 + lxc_id)


# Distinct bytes everywhere, so a swapped or byte-reversed MAC/IP shows.
SRC = Ep("10.244.5.2", 1, "0a:12:34:56:78:02", "0e:ab:cd:ef:01:02")      # behind lo (ctx ifindex 1)
DST = Ep("10.244.5.3", 42, "0a:12:34:56:78:03", "0e:ab:cd:ef:01:03")     # another pod (ifindex 42)
HOST = Ep("10.244.5.1", 1, "0e:00:00:00:00:01", "0e:00:00:00:00:01", ENDPOINT_F_HOST)  # a node IP
GATEWAY = "10.244.5.1"


class Lxc:
    """bpf_lxc.o loaded with its maps pinned in a private bpffs dir, endpoints SRC/DST/HOST."""

    def __init__(self, obj: BpfObject, netns: str) -> None:
        self.obj = obj
        self.netns = netns
        self.prog = obj.program("cil_from_container")
        self.endpoints = obj.map("cilium_lxc", EndpointKey, EndpointInfo)
        self.metrics = obj.map("cilium_metrics", MetricsKey, MetricsValue)
        for i, ep in enumerate((SRC, DST, HOST), start=1):
            self.endpoints.set(EndpointKey(ip4=ep.ip), ep.info(i))

    def run(self, frame: bytes, ifindex: int = 1) -> tuple[int, bytes]:
        with entered(self.netns):
            res = self.prog.run(frame, ctx=SkbContext(ifindex=ifindex))
        return res.retval, res.data

    def counts(self) -> Counter[int]:
        """Packets by reason, summed over CPUs, lines and files."""
        c: Counter[int] = Counter()
        for key, per_cpu in self.metrics.items():
            c[key.reason] += sum(v.count for v in per_cpu)
        return c

    def keys(self) -> dict[MetricsKey, tuple[int, int]]:
        return {k: (sum(v.count for v in vs), sum(v.bytes for v in vs)) for k, vs in self.metrics.items()}

    def run_counted(self, frame: bytes) -> tuple[int, bytes, Counter[int]]:
        """Run once; also return what the run added to cilium_metrics."""
        before = self.counts()
        rc, out = self.run(frame)
        after = self.counts()
        after.subtract(before)
        return rc, out, +after


def _load(netns: str, bpffs_dir: str, config: dict[str, int] | None = None) -> Iterator[Lxc]:
    obj = loader.load("bpf_lxc", pin_root=bpffs_dir, config=config)
    try:
        yield Lxc(obj, netns)
    finally:
        obj.close()


@pytest.fixture
def lxc(netns: str, bpffs_dir: str) -> Iterator[Lxc]:
    yield from _load(netns, bpffs_dir, {"enable_arp_responder": 1})


def icmp_frame(src: str = SRC.ip, dst: str = DST.ip, *, smac: str = SRC.mac, dmac: str = SRC.node_mac,
               **ip_kw: object) -> bytes:
    return eth(dmac, smac, ETH_P_IP) + ipv4(src, dst, icmp_echo(), **ip_kw)  # type: ignore[arg-type]


def only(reason: Reason) -> Counter[int]:
    return Counter({int(reason): 1})


# -- loading and layout --------------------------------------------------------------------------------
def test_object_pins_its_maps_under_pin_root(lxc: Lxc, bpffs_dir: str) -> None:
    pinned = lxc.obj.pinned_map_paths()
    assert {f"{bpffs_dir}/cilium_lxc", f"{bpffs_dir}/cilium_metrics"} <= set(pinned)
    assert all(p.startswith(bpffs_dir + "/") for p in pinned), pinned
    assert lxc.obj.rodata["enable_arp_responder"] == 1
    # Mapping protocol: a name the object does not declare is simply not in it (loader.load relies
    # on this to hand each object only the node-wide variables it declares).
    assert "enable_arp_responder" in lxc.obj.rodata
    assert "no_such_variable" not in lxc.obj.rodata
    assert lxc.endpoints.get(EndpointKey(ip4=SRC.ip)) == SRC.info(1)
    assert lxc.endpoints.get(EndpointKey(ip4="10.244.5.99")) is None


# -- ARP -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [GATEWAY, DST.ip, "10.244.0.200", "192.0.2.77"],
                         ids=["gateway", "other-pod", "arbitrary-in-cluster", "world"])
def test_arp_request_gets_proxy_reply(lxc: Lxc, target: str) -> None:
    request = arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, target)
    rc, out, counted = lxc.run_counted(request)
    # Exactly Cilium's arp_prepare_response: the lxc MAC answers for every target.
    expected = (eth(SRC.mac, SRC.node_mac, ETH_P_ARP)
                + arp(ARPOP_REPLY, SRC.node_mac, target, SRC.mac, SRC.ip))
    assert (rc, out.hex()) == (TC_ACT_REDIRECT, expected.hex())
    assert out[0:6] == bytes.fromhex(SRC.mac.replace(":", ""))          # eth dst = requester
    assert out[6:12] == bytes.fromhex(SRC.node_mac.replace(":", ""))    # eth src = lxc MAC
    assert out[20:22] == b"\x00\x02"                                    # op = reply
    assert counted == only(Reason.ARP_REPLY)


def test_arp_unicast_refresh_to_lxc_mac_is_answered(lxc: Lxc) -> None:
    request = arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, GATEWAY, dst_mac=SRC.node_mac, tha=SRC.node_mac)
    rc, out, counted = lxc.run_counted(request)
    assert rc == TC_ACT_REDIRECT
    assert out == eth(SRC.mac, SRC.node_mac, ETH_P_ARP) + arp(ARPOP_REPLY, SRC.node_mac, GATEWAY, SRC.mac, SRC.ip)
    assert counted == only(Reason.ARP_REPLY)


def test_arp_reply_keeps_ethernet_padding(lxc: Lxc) -> None:
    request = arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, GATEWAY, pad=18) + b""
    request = request[:42] + bytes(range(1, 19))  # recognisable padding
    rc, out = lxc.run(request)
    assert rc == TC_ACT_REDIRECT and len(out) == 60
    assert out[:42] == eth(SRC.mac, SRC.node_mac, ETH_P_ARP) + arp(ARPOP_REPLY, SRC.node_mac, GATEWAY, SRC.mac, SRC.ip)
    assert out[42:] == bytes(range(1, 19))


@pytest.mark.parametrize("frame", [
    pytest.param(arp_frame(ARPOP_REPLY, SRC.mac, SRC.ip, GATEWAY), id="reply-opcode"),
    pytest.param(arp_frame(3, SRC.mac, SRC.ip, GATEWAY), id="rarp-opcode"),
    pytest.param(arp_frame(ARPOP_REQUEST, SRC.mac, "0.0.0.0", GATEWAY), id="rfc5227-probe"),
    pytest.param(arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, SRC.ip), id="gratuitous"),
    pytest.param(arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, GATEWAY, dst_mac="0e:99:99:99:99:99"),
                 id="unicast-to-other-mac"),
])
def test_arp_passed_to_stack_untouched(lxc: Lxc, frame: bytes) -> None:
    rc, out, counted = lxc.run_counted(frame)
    assert (rc, out) == (TC_ACT_OK, frame)
    assert counted == only(Reason.TO_STACK)


@pytest.mark.parametrize(("frame", "reason"), [
    pytest.param(arp_frame(ARPOP_REQUEST, SRC.mac, "10.244.5.99", GATEWAY), Reason.DROP_INVALID_SIP,
                 id="unknown-sender-ip"),
    pytest.param(arp_frame(ARPOP_REQUEST, DST.mac, DST.ip, GATEWAY), Reason.DROP_INVALID_SIP,
                 id="other-pods-ip"),
    pytest.param(arp_frame(ARPOP_REQUEST, HOST.mac, HOST.ip, DST.ip), Reason.DROP_INVALID_SIP,
                 id="host-ip"),
    pytest.param(arp_frame(ARPOP_REQUEST, "0a:66:66:66:66:66", SRC.ip, GATEWAY), Reason.DROP_INVALID_SMAC,
                 id="wrong-eth-source"),
    pytest.param(arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, GATEWAY, sha="0a:66:66:66:66:66"),
                 Reason.DROP_INVALID_SMAC, id="wrong-sender-hw-address"),
    pytest.param(arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, GATEWAY)[:41], Reason.DROP_INVALID, id="truncated-41"),
    pytest.param(eth(BROADCAST, SRC.mac, ETH_P_ARP), Reason.DROP_INVALID, id="header-only"),
    pytest.param(eth(BROADCAST, SRC.mac, ETH_P_ARP) + arp(1, SRC.mac, SRC.ip, "00:00:00:00:00:00", GATEWAY, hrd=6),
                 Reason.DROP_INVALID, id="hrd-ieee802"),
    pytest.param(eth(BROADCAST, SRC.mac, ETH_P_ARP)
                 + arp(1, SRC.mac, SRC.ip, "00:00:00:00:00:00", GATEWAY, pro=ETH_P_IPV6),
                 Reason.DROP_INVALID, id="pro-ipv6"),
    pytest.param(eth(BROADCAST, SRC.mac, ETH_P_ARP) + arp(1, SRC.mac, SRC.ip, "00:00:00:00:00:00", GATEWAY, hln=8),
                 Reason.DROP_INVALID, id="hln-8"),
    pytest.param(eth(BROADCAST, SRC.mac, ETH_P_ARP) + arp(1, SRC.mac, SRC.ip, "00:00:00:00:00:00", GATEWAY, pln=16),
                 Reason.DROP_INVALID, id="pln-16"),
])
def test_arp_dropped(lxc: Lxc, frame: bytes, reason: Reason) -> None:
    rc, _, counted = lxc.run_counted(frame)
    assert rc == TC_ACT_SHOT
    assert counted == only(reason)


def test_arp_responder_disabled_passes_everything(netns: str, bpffs_dir: str) -> None:
    for lxc in _load(netns, bpffs_dir, {"enable_arp_responder": 0}):
        assert lxc.obj.rodata["enable_arp_responder"] == 0
        for frame in (arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, GATEWAY),
                      arp_frame(ARPOP_REQUEST, "0a:66:66:66:66:66", "10.244.5.99", GATEWAY)):
            rc, out, counted = lxc.run_counted(frame)
            assert (rc, out) == (TC_ACT_OK, frame)
            assert counted == only(Reason.TO_STACK)


# -- IPv4 local delivery -------------------------------------------------------------------------------
def _expected_delivery(frame: bytes, dst: Ep = DST) -> bytes:
    """What ipv4_local_delivery must make of ``frame``: MACs of ``dst``, TTL-1, checksum recomputed."""
    ihl = (frame[ETH_HLEN] & 0xF) * 4
    hdr = bytearray(frame[ETH_HLEN:ETH_HLEN + ihl])
    hdr[8] -= 1
    hdr[10:12] = b"\0\0"
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    return eth(dst.mac, dst.node_mac, ETH_P_IP) + bytes(hdr) + frame[ETH_HLEN + ihl:]


@pytest.mark.parametrize("frame", [
    pytest.param(icmp_frame(), id="icmp"),
    pytest.param(icmp_frame(ttl=2), id="ttl-2"),
    pytest.param(icmp_frame(ttl=255), id="ttl-255"),
    pytest.param(icmp_frame(ident=0xFFFF, tos=0xFF), id="csum-carry"),
    pytest.param(icmp_frame(ident=0x0000, frag=0), id="csum-low"),
    pytest.param(icmp_frame(options=b"\x94\x04\x00\x00"), id="ip-options-ihl6"),
    pytest.param(icmp_frame(options=b"\x01" * 40), id="ip-options-ihl15"),
    pytest.param(icmp_frame(dmac=BROADCAST), id="any-eth-destination"),
    pytest.param(eth(SRC.node_mac, SRC.mac, ETH_P_IP) + ipv4(SRC.ip, DST.ip, udp(SRC.ip, DST.ip, 40000, 53, b"q"),
                                                            proto=IPPROTO_UDP), id="udp"),
    pytest.param(icmp_frame() + b"\0" * 12, id="ethernet-padding"),
    pytest.param(eth(SRC.node_mac, SRC.mac, ETH_P_IP) + ipv4(SRC.ip, DST.ip, b"\xab" * 1400, proto=253),
                 id="big-unknown-l4"),
])
def test_ipv4_to_local_endpoint_is_rewritten_and_redirected(lxc: Lxc, frame: bytes) -> None:
    rc, out, counted = lxc.run_counted(frame)
    assert rc == TC_ACT_REDIRECT
    assert counted == only(Reason.FORWARDED)
    e, ip4, before = parse_eth(out), parse_ipv4(out), parse_ipv4(frame)
    assert (e.src, e.dst, e.ethertype) == (DST.node_mac, DST.mac, ETH_P_IP)
    assert ip4.ttl == before.ttl - 1
    assert ip4.csum_ok, f"IPv4 header checksum broken: {ip4.header.hex()}"
    assert out.hex() == _expected_delivery(frame).hex()  # nothing else changed, checksum byte-exact


@pytest.mark.parametrize("ttl", [1, 0])
def test_ttl_exhausted_is_dropped(lxc: Lxc, ttl: int) -> None:
    rc, _, counted = lxc.run_counted(icmp_frame(ttl=ttl))
    assert rc == TC_ACT_SHOT
    assert counted == only(Reason.DROP_TTL_EXCEEDED)


@pytest.mark.parametrize("dst", ["192.0.2.1", "10.244.5.99", "10.244.6.3", GATEWAY, "255.255.255.255"],
                         ids=["world", "unknown-pod-ip", "remote-node-pod", "host-flagged", "broadcast"])
def test_ipv4_to_non_local_goes_to_stack_unchanged(lxc: Lxc, dst: str) -> None:
    frame = icmp_frame(dst=dst)
    rc, out, counted = lxc.run_counted(frame)
    assert (rc, out.hex()) == (TC_ACT_OK, frame.hex())
    assert counted == only(Reason.TO_STACK)


def test_pod_to_itself_is_delivered_to_itself(lxc: Lxc) -> None:
    rc, out = lxc.run(icmp_frame(dst=SRC.ip))
    assert rc == TC_ACT_REDIRECT
    assert out == _expected_delivery(icmp_frame(dst=SRC.ip), SRC)


# -- malformed and foreign frames ---------------------------------------------------------------------
@pytest.mark.parametrize(("ethertype", "length"),
                         [(ETH_P_ARP, n) for n in range(ETH_HLEN)] + [(ETH_P_IP, n) for n in range(ETH_HLEN + 20)],
                         ids=lambda v: f"{v:#06x}" if v > 100 else str(v))
def test_test_run_refuses_frames_without_a_full_header(lxc: Lxc, ethertype: int, length: int) -> None:
    # BPF_PROG_TEST_RUN refuses tc input shorter than ETH_HLEN, and (kernel >= 6.x) an IPv4 frame
    # shorter than ETH_HLEN + 20: the program never sees it, so those truncations are covered with
    # real frames from a pod (tests/integration/test_host_routing.py). Pin the kernel behaviour so a
    # change shows up here, and check that nothing was counted.
    frame = (eth(BROADCAST, SRC.mac, ethertype) + ipv4(SRC.ip, DST.ip, icmp_echo()))[:length]
    before = lxc.counts()
    with pytest.raises(BpfError) as err:
        lxc.run(frame)
    assert err.value.errno == errno.EINVAL
    assert lxc.counts() == before


def _ipv4_variants() -> list[object]:
    good = icmp_frame()
    ip_only = good[ETH_HLEN:]
    hdr = eth(SRC.node_mac, SRC.mac, ETH_P_IP)
    cases = [
        pytest.param(hdr + ipv4(SRC.ip, DST.ip, icmp_echo(), ihl=15, tot_len=20 + 25), id="ihl-beyond-tot-len"),
        pytest.param(hdr + ipv4(SRC.ip, DST.ip, b"", options=b"\x01" * 4, ihl=15, tot_len=60), id="ihl-beyond-frame"),
        pytest.param(hdr + ipv4(SRC.ip, DST.ip, b"", ihl=6, tot_len=24), id="ihl6-frame-20"),
        pytest.param(hdr + ipv4(SRC.ip, DST.ip, icmp_echo(), tot_len=len(ip_only) + 1), id="tot-len-beyond-frame"),
        pytest.param(hdr + ipv4(SRC.ip, DST.ip, icmp_echo(), tot_len=19), id="tot-len-below-ihl"),
        pytest.param(hdr + ipv4(SRC.ip, DST.ip, icmp_echo(), version=6), id="version-6"),
        pytest.param(hdr + ipv4(SRC.ip, DST.ip, icmp_echo(), version=0), id="version-0"),
    ]
    cases += [pytest.param(hdr + ipv4(SRC.ip, DST.ip, icmp_echo(), ihl=ihl), id=f"ihl-{ihl}") for ihl in range(5)]
    return cases


@pytest.mark.parametrize("frame", _ipv4_variants())
def test_malformed_ipv4_is_dropped_invalid(lxc: Lxc, frame: bytes) -> None:
    before = lxc.keys()
    rc, _, counted = lxc.run_counted(frame)
    assert rc == TC_ACT_SHOT
    assert counted == only(Reason.DROP_INVALID)
    new = {k: v for k, v in lxc.keys().items() if v != before.get(k)}
    (key, (packets, nbytes)), = new.items()
    assert (key.dir, key.file, packets, nbytes) == (Direction.EGRESS, FILE_BPF_LXC, 1, len(frame))


@pytest.mark.parametrize("ethertype", [ETH_P_IPV6, 0x8100, 0x88A8, 0x0040, 0x0000, 0x8035],
                         ids=["ipv6", "vlan", "qinq", "802.3-length", "zero", "rarp"])
def test_unknown_l3_dropped(lxc: Lxc, ethertype: int) -> None:
    frame = eth(SRC.node_mac, SRC.mac, ethertype) + bytes(40)
    rc, _, counted = lxc.run_counted(frame)
    assert rc == TC_ACT_SHOT
    assert counted == only(Reason.DROP_UNKNOWN_L3)


@pytest.mark.parametrize(("frame", "reason"), [
    pytest.param(icmp_frame(src="10.244.5.99"), Reason.DROP_INVALID_SIP, id="unknown-source"),
    pytest.param(icmp_frame(src=DST.ip, smac=DST.mac), Reason.DROP_INVALID_SIP, id="other-pods-ip"),
    pytest.param(icmp_frame(src=HOST.ip, smac=HOST.mac), Reason.DROP_INVALID_SIP, id="host-ip"),
    pytest.param(icmp_frame(src="0.0.0.0"), Reason.DROP_INVALID_SIP, id="zero-source"),
    pytest.param(icmp_frame(src="192.0.2.9", dst="192.0.2.1"), Reason.DROP_INVALID_SIP, id="spoofed-to-world"),
    pytest.param(icmp_frame(smac="0a:66:66:66:66:66"), Reason.DROP_INVALID_SMAC, id="wrong-source-mac"),
    pytest.param(icmp_frame(smac=DST.mac), Reason.DROP_INVALID_SMAC, id="other-pods-mac"),
    pytest.param(icmp_frame(dst="192.0.2.1", smac="0a:66:66:66:66:66"), Reason.DROP_INVALID_SMAC,
                 id="wrong-mac-to-world"),
])
def test_spoofed_source_dropped(lxc: Lxc, frame: bytes, reason: Reason) -> None:
    rc, _, counted = lxc.run_counted(frame)
    assert rc == TC_ACT_SHOT
    assert counted == only(reason)


def test_source_must_arrive_on_its_own_device(lxc: Lxc) -> None:
    # DST's packet is valid on ifindex 42 but not on lo (ifindex 1).
    rc, _ = lxc.run(icmp_frame(src=DST.ip, dst=SRC.ip, smac=DST.mac))
    assert rc == TC_ACT_SHOT
    lxc.endpoints.set(EndpointKey(ip4=DST.ip), Ep(DST.ip, 1, DST.mac, DST.node_mac).info(2))
    rc, out = lxc.run(icmp_frame(src=DST.ip, dst=SRC.ip, smac=DST.mac))
    assert rc == TC_ACT_REDIRECT
    assert parse_eth(out).dst == SRC.mac


def test_removed_endpoint_is_no_longer_a_destination(lxc: Lxc) -> None:
    assert lxc.run(icmp_frame())[0] == TC_ACT_REDIRECT
    lxc.endpoints.delete(EndpointKey(ip4=DST.ip))
    assert lxc.run(icmp_frame()) == (TC_ACT_OK, icmp_frame())


def test_metric_keys_name_direction_file_and_bytes(lxc: Lxc) -> None:
    frame = icmp_frame()
    lxc.run(frame)
    lxc.run(frame)
    keys = lxc.keys()
    (fwd, (packets, nbytes)), = ((k, v) for k, v in keys.items() if k.reason == Reason.FORWARDED)
    assert (fwd.dir, fwd.file, packets, nbytes) == (Direction.EGRESS, FILE_L3_H, 2, 2 * len(frame))
    assert fwd.line > 0
