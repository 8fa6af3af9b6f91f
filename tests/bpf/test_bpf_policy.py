"""Golden packets through the policy datapath (policy.h) with BPF_PROG_TEST_RUN and real policy maps.

Maps are written through :class:`ciliumlite.node.policy.PolicyMaps`, as ``Datapath.policy`` does:
each endpoint's LPM trie made on first use and put in ``cilium_policy``, the ipcache filled by
prefix. The lookup precedence (deny wins, longest proto/port prefix, L3 beats L4 on a tie), the
exact drop codes (133, 181, 170), replies passing through CT, ipcache misses as WORLD and the
native-routing source identity (ipcache on saddr at ``cil_from_netdev``) are checked packet by
packet. The VXLAN path (VNI = identity) needs tunnel metadata, which test_run never carries: the
live lab covers it (tests/integration/test_policy_datapath.py).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import replace

import pytest

from ciliumlite.bpf import TcAction
from ciliumlite.bpf.errors import MapFullError
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.reasons import Reason
from ciliumlite.datapath.records import ENDPOINT_F_HOST
from ciliumlite.endpoint import Endpoint
from ciliumlite.node.policy import PolicyMaps
from ciliumlite.policy.mapstate import PolicyEntry, PolicyKey, allow_all
from ciliumlite.testing.datapath import DatapathFactory, DatapathObjects, EndpointRow
from ciliumlite.testing.packets import ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, eth, ipv4, tcp, udp

pytestmark = pytest.mark.bpf

SRC = EndpointRow("10.244.5.2", 1, "0a:12:34:56:78:02", "0e:ab:cd:ef:01:02", 1001)
DST = EndpointRow("10.244.5.3", 42, "0a:12:34:56:78:03", "0e:ab:cd:ef:01:03", 1002)
HOST = EndpointRow("10.244.5.1", 1, "0e:00:00:00:00:01", "0e:00:00:00:00:01", 1, ENDPOINT_F_HOST)
OUTSIDE = "192.0.2.50"
CONFIG = DatapathConfig(pod_cidr="10.244.5.0/24", kube_proxy_replacement=False, enable_policy=True)
ALLOW = PolicyEntry()
DENY = PolicyEntry(deny=True)
SYN, ACK = 0x02, 0x10


def ep(row: EndpointRow, ep_id: int) -> Endpoint:
    return Endpoint(ep_id, f"ep{ep_id}", ipaddress.IPv4Address(row.ip), "test", "lo", row.ifindex, row.mac,
                    row.node_mac, row.sec_id)


SRC_EP, DST_EP = ep(SRC, 1), ep(DST, 2)


@pytest.fixture
def dp(datapath_objects: DatapathFactory) -> DatapathObjects:
    d = datapath_objects(CONFIG, ("lxc",))
    d.add_endpoints(SRC, DST, HOST)
    return d


@pytest.fixture
def pol(dp: DatapathObjects) -> Iterator[PolicyMaps]:
    p = PolicyMaps(dp.pin_dir, CONFIG.policy_map_size)
    for row in (SRC, DST):
        p.upsert(f"{row.ip}/32", row.sec_id)
    yield p
    p.close()


def udp_frame(src: EndpointRow, dst: str, dport: int = 7777, sport: int = 40000) -> bytes:
    return eth(src.node_mac, src.mac, ETH_P_IP) + ipv4(src.ip, dst, udp(src.ip, dst, sport, dport, b"x"),
                                                       proto=IPPROTO_UDP)


def tcp_frame(src: EndpointRow, dst: EndpointRow, sport: int, dport: int, flags: int) -> bytes:
    return eth(src.node_mac, src.mac, ETH_P_IP) + ipv4(src.ip, dst.ip, tcp(src.ip, dst.ip, sport, dport, flags),
                                                       proto=IPPROTO_TCP)


def drops(dp: DatapathObjects, frame: bytes, *, ifindex: int = 1) -> Reason | None:
    run = dp.run(frame, ifindex=ifindex)
    dropped = [r for r in run.reasons if r >= 130]
    if run.verdict == TcAction.SHOT:
        assert len(dropped) == 1, run.reasons
        return Reason(dropped[0])
    assert not dropped
    return None


def ingress_all(p: PolicyMaps, e: Endpoint) -> None:
    p.set_endpoint(e, {allow_all(False): ALLOW, allow_all(True): ALLOW})


def verdicts(dp: DatapathObjects) -> list[tuple[int, int, int, int]]:
    """(source endpoint, remote identity, verdict, flags) of every policy-verdict event waiting."""
    out = []
    for raw in dp.event_records():
        if raw[0] == 5:
            source, = struct.unpack_from("<H", raw, 2)
            label, verdict = struct.unpack_from("<Ii", raw, 16)
            out.append((source, label, verdict, raw[27]))
    return out


def test_endpoint_without_policy_map_is_not_enforced(dp: DatapathObjects, pol: PolicyMaps) -> None:
    assert drops(dp, udp_frame(SRC, DST.ip)) is None
    assert verdicts(dp) == []


def test_l3_allow_both_sides_and_one_verdict_event_per_side(dp: DatapathObjects, pol: PolicyMaps) -> None:
    pol.set_endpoint(SRC_EP, {PolicyKey(DST.sec_id, True): ALLOW})
    ingress_all(pol, DST_EP)
    dp.event_records()
    assert drops(dp, udp_frame(SRC, DST.ip)) is None
    # egress of SRC (L3-only match 1 << 3 | egress 2), ingress of DST (all: 4 << 3 | ingress 1)
    assert verdicts(dp) == [(1, DST.sec_id, 0, 2 | 1 << 3), (2, SRC.sec_id, 0, 1 | 4 << 3)]
    assert drops(dp, udp_frame(SRC, DST.ip)) is None
    assert verdicts(dp) == []  # established: checked, no event


def test_no_match_is_policy_denied_deny_is_denylist(dp: DatapathObjects, pol: PolicyMaps) -> None:
    pol.set_endpoint(SRC_EP, {PolicyKey(9999, True): ALLOW})
    assert drops(dp, udp_frame(SRC, DST.ip)) is Reason.DROP_POLICY
    assert verdicts(dp) == [(1, DST.sec_id, -133, 2)]
    pol.set_endpoint(SRC_EP, {PolicyKey(DST.sec_id, True): DENY})
    assert drops(dp, udp_frame(SRC, DST.ip)) is Reason.DROP_POLICY_DENY
    assert drops(dp, udp_frame(SRC, DST.ip, sport=40001)) is Reason.DROP_POLICY_DENY


def test_receiver_ingress_is_checked_with_the_senders_identity(dp: DatapathObjects, pol: PolicyMaps) -> None:
    pol.set_endpoint(DST_EP, {PolicyKey(4242, False): ALLOW})
    assert drops(dp, udp_frame(SRC, DST.ip)) is Reason.DROP_POLICY
    pol.set_endpoint(DST_EP, {PolicyKey(SRC.sec_id, False, IPPROTO_UDP, 7777, 16): ALLOW})
    assert drops(dp, udp_frame(SRC, DST.ip)) is None
    assert drops(dp, udp_frame(SRC, DST.ip, dport=7778)) is Reason.DROP_POLICY


def test_l4_wildcard_and_port_prefix(dp: DatapathObjects, pol: PolicyMaps) -> None:
    # Any peer, UDP 7776-7777 (a /15 of the port).
    pol.set_endpoint(SRC_EP, {PolicyKey(0, True, IPPROTO_UDP, 7776, 15): ALLOW})
    assert drops(dp, udp_frame(SRC, DST.ip, 7776)) is None
    assert drops(dp, udp_frame(SRC, DST.ip, 7777)) is None
    assert drops(dp, udp_frame(SRC, DST.ip, 7778)) is Reason.DROP_POLICY
    assert drops(dp, tcp_frame(SRC, DST, 40000, 7777, SYN)) is Reason.DROP_POLICY


def test_deny_wins_over_a_more_specific_allow(dp: DatapathObjects, pol: PolicyMaps) -> None:
    # A = {DST, UDP/7777} allow; B = {ANY, UDP} deny: B is a deny, so B.
    pol.set_endpoint(SRC_EP, {PolicyKey(DST.sec_id, True, IPPROTO_UDP, 7777, 16): ALLOW,
                              PolicyKey(0, True, IPPROTO_UDP): DENY})
    assert drops(dp, udp_frame(SRC, DST.ip)) is Reason.DROP_POLICY_DENY
    # A deny at the L3 key stops before B is looked at.
    pol.set_endpoint(SRC_EP, {PolicyKey(DST.sec_id, True): DENY, PolicyKey(0, True, IPPROTO_UDP, 7777, 16): ALLOW})
    assert drops(dp, udp_frame(SRC, DST.ip)) is Reason.DROP_POLICY_DENY


def test_longer_l4_prefix_beats_l3_and_l3_wins_a_tie(dp: DatapathObjects, pol: PolicyMaps) -> None:
    pol.set_endpoint(SRC_EP, {PolicyKey(DST.sec_id, True, IPPROTO_UDP): ALLOW,
                              PolicyKey(0, True, IPPROTO_UDP, 7777, 16): ALLOW})
    dp.event_records()
    assert drops(dp, udp_frame(SRC, DST.ip)) is None
    assert verdicts(dp)[0][3] == 2 | 3 << 3   # L4-only (B, longer prefix)
    assert drops(dp, udp_frame(SRC, DST.ip, 9000)) is None
    assert verdicts(dp)[0][3] == 2 | 5 << 3   # L3-proto (A)
    pol.set_endpoint(SRC_EP, {PolicyKey(DST.sec_id, True, IPPROTO_UDP): ALLOW, PolicyKey(0, True, IPPROTO_UDP): ALLOW})
    assert drops(dp, udp_frame(SRC, DST.ip, 9001)) is None
    assert verdicts(dp)[0][3] == 2 | 5 << 3   # tie: L3 beats L4


def test_replies_pass_an_isolated_direction_new_flows_do_not(dp: DatapathObjects, pol: PolicyMaps) -> None:
    dp.set_endpoint(replace(DST, ifindex=1), 2)  # DST sends too: behind lo, like SRC
    pol.set_endpoint(SRC_EP, {allow_all(True): ALLOW, allow_all(False): ALLOW})
    # DST: ingress from anyone, egress nothing at all (isolated).
    pol.set_endpoint(DST_EP, {allow_all(False): ALLOW})
    assert drops(dp, tcp_frame(SRC, DST, 40000, 80, SYN)) is None
    assert drops(dp, tcp_frame(DST, SRC, 80, 40000, SYN | ACK), ifindex=1) is None
    assert drops(dp, tcp_frame(DST, SRC, 80, 40000, ACK), ifindex=1) is None
    assert drops(dp, tcp_frame(DST, SRC, 81, 40000, SYN), ifindex=1) is Reason.DROP_POLICY


def test_revoking_an_allow_cuts_the_established_flow(dp: DatapathObjects, pol: PolicyMaps) -> None:
    pol.set_endpoint(SRC_EP, {PolicyKey(DST.sec_id, True): ALLOW})
    assert drops(dp, tcp_frame(SRC, DST, 40000, 80, SYN)) is None
    assert drops(dp, tcp_frame(SRC, DST, 40000, 80, ACK)) is None
    change = pol.set_endpoint(SRC_EP, {PolicyKey(7, True): ALLOW})
    assert (change.written, change.deleted, change.created) == (1, 1, False)
    assert drops(dp, tcp_frame(SRC, DST, 40000, 80, ACK)) is Reason.DROP_POLICY
    pol.set_endpoint(SRC_EP, {PolicyKey(DST.sec_id, True): ALLOW})
    assert drops(dp, tcp_frame(SRC, DST, 40000, 80, ACK)) is None


def test_ipcache_miss_is_world_and_a_prefix_names_its_identity(dp: DatapathObjects, pol: PolicyMaps) -> None:
    pol.set_endpoint(SRC_EP, {PolicyKey(2, True): ALLOW})   # reserved:world
    assert drops(dp, udp_frame(SRC, OUTSIDE)) is None
    pol.upsert("192.0.2.0/24", 16777217)
    assert pol.lookup(OUTSIDE) == 16777217
    assert drops(dp, udp_frame(SRC, OUTSIDE)) is Reason.DROP_POLICY
    assert [(str(e.prefix), e.identity) for e in pol.list()][-1] == ("192.0.2.0/24", 16777217)
    assert pol.delete("192.0.2.0/24") and not pol.delete("192.0.2.0/24")
    assert drops(dp, udp_frame(SRC, OUTSIDE)) is None


def test_pod_to_its_node_non_syn_tcp_is_taken_for_a_reply(dp: DatapathObjects, pol: PolicyMaps) -> None:
    pol.set_endpoint(SRC_EP, {allow_all(False): ALLOW})    # egress isolated
    assert drops(dp, tcp_frame(SRC, HOST, 80, 50000, SYN | ACK)) is None
    assert drops(dp, tcp_frame(SRC, HOST, 50001, 80, SYN)) is Reason.DROP_POLICY


def test_mapstate_reads_back_and_overflow_changes_nothing(dp: DatapathObjects, pol: PolicyMaps) -> None:
    state = {PolicyKey(DST.sec_id, True, IPPROTO_TCP, 1024, 6): ALLOW, PolicyKey(0, False): ALLOW,
             PolicyKey(5, True, IPPROTO_UDP): DENY}
    assert pol.set_endpoint(SRC_EP, state).created
    assert pol.get(SRC_EP) == state
    assert pol.set_endpoint(SRC_EP, state).written == 0
    small = PolicyMaps(dp.pin_dir, 256)
    try:
        with pytest.raises(MapFullError, match="257 entries"):
            small.set_endpoint(SRC_EP, {PolicyKey(1000 + i, True): ALLOW for i in range(257)})
        assert small.get(SRC_EP) == state
    finally:
        small.close()
    pol.clear(SRC_EP)
    assert pol.get(SRC_EP) is None and pol.enforced() == []
    assert drops(dp, udp_frame(SRC, DST.ip, 1)) is None


def test_encap_prohibited(datapath_objects: DatapathFactory) -> None:
    cfg = DatapathConfig(pod_cidr="10.244.5.0/24", kube_proxy_replacement=False, enable_policy=True,
                         routing="vxlan", node_ip="192.0.2.1")
    d = datapath_objects(cfg, ("lxc",), tunnel_ifindex=1)
    d.add_endpoints(SRC, DST, HOST)
    assert drops(d, udp_frame(SRC, DST.ip, 8472)) is Reason.DROP_ENCAP_PROHIBITED
    assert drops(d, udp_frame(SRC, DST.ip, 8473)) is None


def test_native_source_identity_from_ipcache_at_from_netdev(datapath_objects: DatapathFactory) -> None:
    node = datapath_objects
    node.underlay("eth0", "10.0.0.12/24", mac="0e:00:00:00:00:12")
    cfg = DatapathConfig(node_name="w1", pod_cidr="10.244.5.0/24", node_ip="10.0.0.12", routing="native",
                         enable_policy=True)
    d = node(cfg, ("lxc", "host"), native_ifindex=node.ifindex("eth0"))
    d.add_endpoints(SRC, DST, HOST)
    p = PolicyMaps(d.pin_dir, 256)
    try:
        p.upsert("10.244.6.0/24", 3000)
        p.set_endpoint(DST_EP, {PolicyKey(3000, False, IPPROTO_UDP, 7777, 16): ALLOW})

        def wire(src: str) -> bytes:
            return eth("0e:00:00:00:00:12", "0e:00:00:00:00:13", ETH_P_IP) + \
                ipv4(src, DST.ip, udp(src, DST.ip, 40000, 7777, b"x"), proto=IPPROTO_UDP)

        ok = d.run(wire("10.244.6.9"), "cil_from_netdev", ifindex=node.ifindex("eth0"))
        assert ok.verdict == TcAction.REDIRECT, ok.reasons
        denied = d.run(wire("198.51.100.9"), "cil_from_netdev", ifindex=node.ifindex("eth0"))  # WORLD
        assert denied.verdict == TcAction.SHOT and Reason.DROP_POLICY in denied.reasons
    finally:
        p.close()
