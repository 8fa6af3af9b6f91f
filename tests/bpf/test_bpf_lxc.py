"""Golden packets through cil_from_container with BPF_PROG_TEST_RUN (the real bpf_lxc.o).

The program is run with ``SkbContext(ifindex=1)`` inside a private namespace, so ``ctx->ifindex`` is
that namespace's ``lo``; the source endpoint of every frame below is registered with ifindex 1.
Redirect verdicts are returned by test_run, not performed, so ``TcAction.REDIRECT`` plus the output
frame is exactly what the kernel would have redirected.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from ciliumlite.bpf import TcAction
from ciliumlite.bpf.errors import BpfError, LayoutError, ValidationError
from ciliumlite.datapath import loader
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.datapath.records import ENDPOINT_F_HOST, EndpointKey
from ciliumlite.testing.datapath import DatapathFactory, DatapathObjects, EndpointRow, source_file_id
from ciliumlite.testing.packets import (
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
    eth,
    icmp_echo,
    ipv4,
    parse_eth,
    parse_ipv4,
    routed,
    udp,
)

pytestmark = pytest.mark.bpf

# Distinct bytes everywhere, so a swapped or byte-reversed MAC/IP shows.
SRC = EndpointRow("10.244.5.2", 1, "0a:12:34:56:78:02", "0e:ab:cd:ef:01:02", 1001)      # behind lo (ifindex 1)
DST = EndpointRow("10.244.5.3", 42, "0a:12:34:56:78:03", "0e:ab:cd:ef:01:03", 1002)     # another pod (ifindex 42)
HOST = EndpointRow("10.244.5.1", 1, "0e:00:00:00:00:01", "0e:00:00:00:00:01", 1003, ENDPOINT_F_HOST)  # a node IP
GATEWAY = "10.244.5.1"
# No routing and no per-packet LB: cil_from_container's local delivery, ARP and checks alone.
CONFIG = DatapathConfig(pod_cidr="10.244.5.0/24", kube_proxy_replacement=False)


def load(datapath_objects: DatapathFactory, *, arp_responder: bool = True) -> DatapathObjects:
    """bpf_lxc.o with endpoints SRC, DST and HOST (lxc ids 1, 2, 3)."""
    dp = datapath_objects(CONFIG, ("lxc",), arp_responder=arp_responder)
    dp.add_endpoints(SRC, DST, HOST)
    return dp


@pytest.fixture
def lxc(datapath_objects: DatapathFactory) -> DatapathObjects:
    return load(datapath_objects)


def icmp_frame(src: str = SRC.ip, dst: str = DST.ip, *, smac: str = SRC.mac, dmac: str = SRC.node_mac,
               **ip_kw: object) -> bytes:
    return eth(dmac, smac, ETH_P_IP) + ipv4(src, dst, icmp_echo(), **ip_kw)  # type: ignore[arg-type]


def only(reason: Reason) -> Counter[int]:
    return Counter({int(reason): 1})


# -- loading and layout --------------------------------------------------------------------------------
def test_object_pins_its_maps_under_pin_root(lxc: DatapathObjects, bpffs_dir: str) -> None:
    obj = lxc.objects["lxc"]
    pinned = obj.pinned_map_paths()
    assert {f"{bpffs_dir}/cilium_lxc", f"{bpffs_dir}/cilium_metrics"} <= set(pinned)
    assert all(p.startswith(bpffs_dir + "/") for p in pinned), pinned
    assert obj.rodata["enable_arp_responder"] == 1
    # Mapping protocol: `in` answers False for a name the object does not declare (reading or
    # setting it raises ValidationError). The loader uses it to refuse config.h globals an object
    # lacks (LayoutError) and to apply each extra_rodata override to the objects that declare it.
    assert "enable_arp_responder" in obj.rodata
    assert "no_such_variable" not in obj.rodata
    assert lxc.maps.endpoints.get(SRC.key()) == SRC.info(1)
    assert lxc.maps.endpoints.get(EndpointKey(ip4="10.244.5.99")) is None


def test_override_no_object_declares_is_refused_before_loading(datapath_objects: DatapathFactory,
                                                                 bpffs_dir: str) -> None:
    misspelt = replace(CONFIG, extra_rodata={"enable_arp_respnder": 0})
    with pytest.raises(ValidationError, match="enable_arp_respnder"):
        loader.check_overrides(misspelt.node_rodata())
    # Loading checks the overrides first (as a node does), so nothing was loaded or pinned.
    with pytest.raises(ValidationError, match=r"enable_arp_respnder.*which no datapath object declares"):
        datapath_objects(misspelt, ("lxc",))
    assert os.listdir(bpffs_dir) == []


def test_object_without_a_config_h_global_is_a_layout_error(test_objects: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             bpffs_dir: str) -> None:
    # An object from another build, under the name the loader asks for: test_tc.o declares its own
    # .rodata but none of config.h's globals, so every NodeRodata field is missing from its BTF.
    (tmp_path / "bpf_lxc.o").symlink_to(test_objects / "test_tc.o")
    monkeypatch.setenv(loader.OBJECTS_ENV, str(tmp_path))
    rodata = CONFIG.node_rodata()
    with pytest.raises(LayoutError, match=r"bpf_lxc\.o does not declare the config\.h globals") as err:
        loader.load_lxc(rodata, bpffs_dir)
    assert all(name in str(err.value) for name in rodata.globals())
    assert os.listdir(bpffs_dir) == []


def test_a_failed_load_closes_the_objects_loaded_before_it(datapath_objects: DatapathFactory, test_objects: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # bpf_lxc.o is the real one; bpf_host.o is from another build, so it fails after lxc loaded.
    for name in loader.OBJECTS:
        (tmp_path / f"{name}.o").symlink_to(loader.object_path(name))
    (tmp_path / "bpf_host.o").unlink()
    (tmp_path / "bpf_host.o").symlink_to(test_objects / "test_tc.o")
    monkeypatch.setenv(loader.OBJECTS_ENV, str(tmp_path))
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(LayoutError, match=r"bpf_host\.o does not declare"):
        datapath_objects(CONFIG, ("lxc", "host"))
    assert len(os.listdir("/proc/self/fd")) == fds, "the lxc object's fds were closed"


def test_datapath_objects_without_the_fixture_make_and_remove_their_pin_dir(netns: str) -> None:
    with DatapathObjects(CONFIG, ("lxc",), netns=netns) as dp:
        dp.add_endpoints(SRC, DST)
        assert dp.run(icmp_frame()).verdict == TcAction.REDIRECT
        assert os.path.exists(f"{dp.pin_dir}/cilium_lxc")
    assert not os.path.exists(dp.pin_dir)


# -- ARP -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [GATEWAY, DST.ip, "10.244.0.200", "192.0.2.77"],
                         ids=["gateway", "other-pod", "arbitrary-in-cluster", "world"])
def test_arp_request_gets_proxy_reply(lxc: DatapathObjects, target: str) -> None:
    request = arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, target)
    run = lxc.run(request)
    out = run.data
    # Exactly Cilium's arp_prepare_response: the lxc MAC answers for every target.
    expected = (eth(SRC.mac, SRC.node_mac, ETH_P_ARP)
                + arp(ARPOP_REPLY, SRC.node_mac, target, SRC.mac, SRC.ip))
    assert (run.verdict, out.hex()) == (TcAction.REDIRECT, expected.hex())
    assert out[0:6] == bytes.fromhex(SRC.mac.replace(":", ""))          # eth dst = requester
    assert out[6:12] == bytes.fromhex(SRC.node_mac.replace(":", ""))    # eth src = lxc MAC
    assert out[20:22] == b"\x00\x02"                                    # op = reply
    assert run.reasons == only(Reason.ARP_REPLY)


def test_arp_unicast_refresh_to_lxc_mac_is_answered(lxc: DatapathObjects) -> None:
    request = arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, GATEWAY, dst_mac=SRC.node_mac, tha=SRC.node_mac)
    run = lxc.run(request)
    assert run.verdict == TcAction.REDIRECT
    assert run.data == eth(SRC.mac, SRC.node_mac, ETH_P_ARP) + arp(ARPOP_REPLY, SRC.node_mac, GATEWAY, SRC.mac,
                                                                   SRC.ip)
    assert run.reasons == only(Reason.ARP_REPLY)


def test_arp_reply_keeps_ethernet_padding(lxc: DatapathObjects) -> None:
    request = arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, GATEWAY, pad=18) + b""
    request = request[:42] + bytes(range(1, 19))  # recognisable padding
    run = lxc.run(request)
    out = run.data
    assert run.verdict == TcAction.REDIRECT and len(out) == 60
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
def test_arp_passed_to_stack_untouched(lxc: DatapathObjects, frame: bytes) -> None:
    run = lxc.run(frame)
    assert (run.verdict, run.data) == (TcAction.OK, frame)
    assert run.reasons == only(Reason.TO_STACK)


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
def test_arp_dropped(lxc: DatapathObjects, frame: bytes, reason: Reason) -> None:
    run = lxc.run(frame)
    assert run.verdict == TcAction.SHOT
    assert run.reasons == only(reason)


def test_arp_responder_disabled_passes_everything(datapath_objects: DatapathFactory) -> None:
    lxc = load(datapath_objects, arp_responder=False)
    assert lxc.objects["lxc"].rodata["enable_arp_responder"] == 0
    for frame in (arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, GATEWAY),
                  arp_frame(ARPOP_REQUEST, "0a:66:66:66:66:66", "10.244.5.99", GATEWAY)):
        run = lxc.run(frame)
        assert (run.verdict, run.data) == (TcAction.OK, frame)
        assert run.reasons == only(Reason.TO_STACK)


# -- IPv4 local delivery -------------------------------------------------------------------------------
def _expected_delivery(frame: bytes, dst: EndpointRow = DST) -> bytes:
    """What ipv4_local_delivery must make of ``frame``: MACs of ``dst``, TTL-1, checksum recomputed."""
    return routed(frame, dst.mac, dst.node_mac)


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
def test_ipv4_to_local_endpoint_is_rewritten_and_redirected(lxc: DatapathObjects, frame: bytes) -> None:
    run = lxc.run(frame)
    out = run.data
    assert run.verdict == TcAction.REDIRECT
    assert run.reasons == only(Reason.FORWARDED)
    e, ip4, before = parse_eth(out), parse_ipv4(out), parse_ipv4(frame)
    assert (e.src, e.dst, e.ethertype) == (DST.node_mac, DST.mac, ETH_P_IP)
    assert ip4.ttl == before.ttl - 1
    assert ip4.csum_ok, f"IPv4 header checksum broken: {ip4.header.hex()}"
    assert out.hex() == _expected_delivery(frame).hex()  # nothing else changed, checksum byte-exact


@pytest.mark.parametrize("ttl", [1, 0])
def test_ttl_exhausted_is_dropped(lxc: DatapathObjects, ttl: int) -> None:
    run = lxc.run(icmp_frame(ttl=ttl))
    assert run.verdict == TcAction.SHOT
    assert run.reasons == only(Reason.DROP_TTL_EXCEEDED)


@pytest.mark.parametrize("dst", ["192.0.2.1", "10.244.5.99", "10.244.6.3", GATEWAY, "255.255.255.255"],
                         ids=["world", "unknown-pod-ip", "remote-node-pod", "host-flagged", "broadcast"])
def test_ipv4_to_non_local_goes_to_stack_unchanged(lxc: DatapathObjects, dst: str) -> None:
    frame = icmp_frame(dst=dst)
    run = lxc.run(frame)
    assert (run.verdict, run.data.hex()) == (TcAction.OK, frame.hex())
    assert run.reasons == only(Reason.TO_STACK)


def test_pod_to_itself_is_delivered_to_itself(lxc: DatapathObjects) -> None:
    run = lxc.run(icmp_frame(dst=SRC.ip))
    assert run.verdict == TcAction.REDIRECT
    assert run.data == _expected_delivery(icmp_frame(dst=SRC.ip), SRC)


# -- malformed and foreign frames ---------------------------------------------------------------------
@pytest.mark.parametrize(("ethertype", "length"),
                         [(ETH_P_ARP, n) for n in range(ETH_HLEN)] + [(ETH_P_IP, n) for n in range(ETH_HLEN + 20)],
                         ids=lambda v: f"{v:#06x}" if v > 100 else str(v))
def test_test_run_refuses_frames_without_a_full_header(lxc: DatapathObjects, ethertype: int, length: int) -> None:
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
def test_malformed_ipv4_is_dropped_invalid(lxc: DatapathObjects, frame: bytes) -> None:
    before = lxc.metrics_by_key()
    run = lxc.run(frame)
    assert run.verdict == TcAction.SHOT
    assert run.reasons == only(Reason.DROP_INVALID)
    new = {k: v for k, v in lxc.metrics_by_key().items() if v != before.get(k)}
    (key, (packets, nbytes)), = new.items()
    assert (key.dir, key.file, packets, nbytes) == (Direction.EGRESS, source_file_id("bpf_lxc.c"), 1, len(frame))


@pytest.mark.parametrize("ethertype", [ETH_P_IPV6, 0x8100, 0x88A8, 0x0040, 0x0000, 0x8035],
                         ids=["ipv6", "vlan", "qinq", "802.3-length", "zero", "rarp"])
def test_unknown_l3_dropped(lxc: DatapathObjects, ethertype: int) -> None:
    frame = eth(SRC.node_mac, SRC.mac, ethertype) + bytes(40)
    run = lxc.run(frame)
    assert run.verdict == TcAction.SHOT
    assert run.reasons == only(Reason.DROP_UNKNOWN_L3)


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
def test_spoofed_source_dropped(lxc: DatapathObjects, frame: bytes, reason: Reason) -> None:
    run = lxc.run(frame)
    assert run.verdict == TcAction.SHOT
    assert run.reasons == only(reason)


def test_source_must_arrive_on_its_own_device(lxc: DatapathObjects) -> None:
    # DST's packet is valid on ifindex 42 but not on lo (ifindex 1).
    assert lxc.run(icmp_frame(src=DST.ip, dst=SRC.ip, smac=DST.mac)).verdict == TcAction.SHOT
    lxc.set_endpoint(replace(DST, ifindex=1), 2)
    run = lxc.run(icmp_frame(src=DST.ip, dst=SRC.ip, smac=DST.mac))
    assert run.verdict == TcAction.REDIRECT
    assert parse_eth(run.data).dst == SRC.mac


def test_removed_endpoint_is_no_longer_a_destination(lxc: DatapathObjects) -> None:
    assert lxc.run(icmp_frame()).verdict == TcAction.REDIRECT
    lxc.maps.endpoints.delete(DST.key())
    run = lxc.run(icmp_frame())
    assert (run.verdict, run.data) == (TcAction.OK, icmp_frame())


def test_metric_keys_name_direction_file_and_bytes(lxc: DatapathObjects) -> None:
    frame = icmp_frame()
    lxc.run(frame)
    lxc.run(frame)
    keys = lxc.metrics_by_key()
    (fwd, (packets, nbytes)), = ((k, v) for k, v in keys.items() if k.reason == Reason.FORWARDED)
    assert (fwd.dir, fwd.file, packets, nbytes) == (Direction.EGRESS, source_file_id("l3.h"), 2, 2 * len(frame))
    assert fwd.line > 0


def test_load_lxc_alone_refuses_a_misspelt_override(bpffs_dir: str) -> None:
    rodata = DatapathConfig(extra_rodata={"enable_arp_responderr": 0}).node_rodata()
    with pytest.raises(ValidationError, match="enable_arp_responderr"):
        loader.load_lxc(rodata, bpffs_dir)
    assert os.listdir(bpffs_dir) == [], "nothing was loaded or pinned"
