"""bpf_host.o's tail calls on the real kernel (BPF_PROG_TEST_RUN runs them as traffic would).

* The loader fills ``cilium_calls_host`` with the object's own ``tail_*`` programs and pins it; a
  reload's map is pinned as pending and replaces the node's only on commit.
* Masquerade (cil_to_netdev -> tail_masq_new -> tail_masq_rewrite) and NodePort SNAT to a remote
  backend (cil_from_netdev -> tail_nodeport_snat -> tail_nodeport_fwd) give the same frames and
  counts as one program did.
* An empty slot is a drop counted ``DROP_MISSED_TAIL_CALL`` at the call site, in the direction of
  the program that jumped, with nothing half done before it.
* An object whose tail calls do not match the table is refused (``TailCallError``) before
  anything is pinned.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from ipaddress import IPv4Address

import pytest

from ciliumlite.bpf import U32, BpfObject, Map, TcAction, inventory
from ciliumlite.datapath import loader, tailcalls
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.datapath.maps import CT_TCP, SNAT
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.datapath.records import Ipv4CtTuple
from ciliumlite.node.services import lb_rows
from ciliumlite.service import Backend, Frontend, Service
from ciliumlite.testing.datapath import DatapathFactory, DatapathObjects, Tally, source_file_id
from ciliumlite.testing.packets import ETH_HLEN, ETH_P_IP, IPPROTO_TCP, eth, ipv4, parse_ipv4, tcp

pytestmark = pytest.mark.bpf

NODE_IP, POD_CIDR = "10.0.0.12", "10.244.1.0/24"
UNDERLAY_MAC, LEAF_MAC = "0e:00:00:00:00:12", "0e:00:00:00:00:fe"
POD = "10.244.1.2"
OUTSIDE = "203.0.113.10"
REMOTE_IP, REMOTE_MAC, REMOTE_BACKEND = "10.0.0.13", "0e:00:00:00:00:13", "10.244.2.7"
NODE_PORT, BACKEND_PORT = 30090, 8080
SYN, ACK = 0x02, 0x10
TUPLE_F_OUT, TUPLE_F_IN = 0, 1
HOST_C = source_file_id("bpf_host.c")


@pytest.fixture
def ns(datapath_objects: DatapathFactory) -> DatapathFactory:
    """The underlay ``eth0`` (10.0.0.12/24); the outside behind the leaf, 10.244.2.0/24 behind node .13."""
    ns = datapath_objects
    ns.underlay("eth0", f"{NODE_IP}/24", mac=UNDERLAY_MAC, neighbours={REMOTE_IP: REMOTE_MAC, "10.0.0.254": LEAF_MAC})
    ns.ip("route", "add", "10.244.2.0/24", "via", REMOTE_IP)
    ns.ip("route", "add", "203.0.113.0/24", "via", "10.0.0.254")
    set_sysctl(ns.netns, "net.ipv4.ip_forward", "1")
    return ns


@pytest.fixture
def node(ns: DatapathFactory) -> DatapathObjects:
    """bpf_lxc + bpf_host of a native-routing node with BPF masquerade (SNAT NodePort)."""
    cfg = DatapathConfig(node_name="worker1", pod_cidr=POD_CIDR, node_ip=NODE_IP, routing="native",
                         bpf_masquerade=True)
    dp = ns(cfg, ("lxc", "host"), native_ifindex=ns.ifindex("eth0"))
    dp.maps.nodes.set(int(IPv4Address(NODE_IP)), 1)
    dp.maps.nodes.set(int(IPv4Address(REMOTE_IP)), 1)
    return dp


def _tcp(src: str, dst: str, sport: int, dport: int, flags: int, *, smac: str, dmac: str) -> bytes:
    return eth(dmac, smac, ETH_P_IP) + ipv4(src, dst, tcp(src, dst, sport, dport, flags), proto=IPPROTO_TCP)


def _ports(frame: bytes) -> tuple[int, int]:
    h = parse_ipv4(frame)
    off = ETH_HLEN + h.ihl * 4
    return int.from_bytes(frame[off:off + 2], "big"), int.from_bytes(frame[off + 2:off + 4], "big")


def _slots(dp: DatapathObjects) -> dict[int, int]:
    host = dp.objects["host"]
    return {slot: host.program(name).info().id for slot, name in tailcalls.CALLS["bpf_host"].slots.items()}


def _calls(obj: BpfObject | DatapathObjects) -> Map[int, int]:
    host = obj.objects["host"] if isinstance(obj, DatapathObjects) else obj
    return host.map("cilium_calls_host", U32, U32)


# -- the loader ---------------------------------------------------------------------------------------------
def test_the_pinned_calls_map_holds_the_objects_own_programs(node: DatapathObjects) -> None:
    assert tailcalls.pinned_slots(node.pin_dir, "bpf_host") == _slots(node)
    assert not os.path.exists(tailcalls.CALLS["bpf_host"].pin_path(node.pin_dir, pending=True))


def test_a_reload_pins_pending_and_commit_replaces_the_nodes_map(ns: DatapathFactory, node: DatapathObjects) -> None:
    first = _slots(node)
    fresh = loader.load_host(node.rodata, node.pin_dir, pending=True)
    try:
        new = {slot: fresh.program(name).info().id for slot, name in tailcalls.CALLS["bpf_host"].slots.items()}
        assert set(new.values()).isdisjoint(first.values())
        # Until the commit, the node's pin still names the map the running programs jump through.
        assert tailcalls.pinned_slots(node.pin_dir, "bpf_host") == first
        assert tailcalls.pinned_slots(node.pin_dir, "bpf_host", pending=True) == new
        assert tailcalls.commit(node.pin_dir) == [tailcalls.CALLS["bpf_host"].pin_path(node.pin_dir)]
        assert tailcalls.pinned_slots(node.pin_dir, "bpf_host") == new
        assert tailcalls.commit(node.pin_dir) == []  # nothing pending any more
    finally:
        fresh.close()


def test_an_abandoned_reload_leaves_no_pending_map(node: DatapathObjects) -> None:
    fresh = loader.load_host(node.rodata, node.pin_dir, pending=True)
    pending_id = _calls(fresh).info.id
    fresh.close()
    tailcalls.discard(node.pin_dir)
    assert not os.path.exists(tailcalls.CALLS["bpf_host"].pin_path(node.pin_dir, pending=True))
    assert tailcalls.pinned_slots(node.pin_dir, "bpf_host") == _slots(node)
    # The map goes once its programs are freed (after an RCU grace period): bounded wait.
    deadline = time.monotonic() + 10
    while pending_id in inventory.map_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pending_id not in inventory.map_ids()


def test_fill_refuses_objects_whose_tail_calls_do_not_match(node: DatapathObjects, ns: DatapathFactory) -> None:
    lxc, host = node.objects["lxc"], node.objects["host"]
    with pytest.raises(tailcalls.TailCallError, match="no prog array 'cilium_calls_host'"):
        tailcalls.fill("bpf_host", lxc)
    with pytest.raises(tailcalls.TailCallError, match="table does not know"):
        tailcalls.fill("bpf_lxc", host)


def test_a_missing_target_fails_the_load_and_pins_nothing(node: DatapathObjects,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tailcalls.CALLS["bpf_host"]
    slots = {**spec.slots, 3: "tail_gone"}  # slot 3's program renamed away: an older table
    monkeypatch.setattr(tailcalls, "CALLS", {"bpf_host": tailcalls.CallsMap("bpf_host", spec.map_name, slots)})
    before = tailcalls.pinned_slots(node.pin_dir, "bpf_host")
    with pytest.raises(tailcalls.TailCallError, match=r"slot 3: tail_gone"):
        loader.load_host(node.rodata, node.pin_dir)
    assert tailcalls.pinned_slots(node.pin_dir, "bpf_host") == before, "the node's calls map is untouched"
    slots = {k: v for k, v in spec.slots.items() if k != 3}
    monkeypatch.setattr(tailcalls, "CALLS", {"bpf_host": tailcalls.CallsMap("bpf_host", spec.map_name, slots)})
    with pytest.raises(tailcalls.TailCallError, match=r"no slot for tail_nodeport_fwd"):
        loader.load_host(node.rodata, node.pin_dir, pending=True)
    assert not os.path.exists(spec.pin_path(node.pin_dir, pending=True))


# -- traffic through the tail calls --------------------------------------------------------------------
@pytest.mark.parametrize("sport", [40000, 1000], ids=["port-kept", "port-chosen"])
def test_masquerade_goes_through_both_tail_calls(node: DatapathObjects, ns: DatapathFactory, sport: int) -> None:
    eth0 = ns.ifindex("eth0")
    syn = _tcp(POD, OUTSIDE, sport, 443, SYN, smac=UNDERLAY_MAC, dmac=LEAF_MAC)
    run = node.run(syn, "cil_to_netdev", ifindex=eth0)
    assert run.verdict == TcAction.OK
    h = parse_ipv4(run.data)
    new_sport, dport = _ports(run.data)
    assert (h.src, h.dst, dport, h.csum_ok) == (NODE_IP, OUTSIDE, 443, True)
    assert new_sport == sport if sport >= 32768 else 32768 <= new_sport <= 65535
    assert run.counted == Counter({Tally(Reason.NAT_EGRESS, Direction.EGRESS, HOST_C): 1})
    snat = node.maps.get(SNAT)
    out_key = Ipv4CtTuple(saddr=IPv4Address(POD), daddr=IPv4Address(OUTSIDE), sport=sport, dport=443,
                          nexthdr=IPPROTO_TCP, flags=TUPLE_F_OUT)
    entry = snat.get(out_key)
    assert entry is not None and (str(entry.to_addr), entry.to_port) == (NODE_IP, new_sport)
    assert node.maps.get(CT_TCP).get(Ipv4CtTuple(daddr=IPv4Address(POD), saddr=IPv4Address(OUTSIDE), sport=sport,
                                                 dport=443, nexthdr=IPPROTO_TCP, flags=TUPLE_F_OUT)) is not None
    # The flow's next packet finds the mapping in cil_to_netdev itself (no tail call).
    ack = _tcp(POD, OUTSIDE, sport, 443, ACK, smac=UNDERLAY_MAC, dmac=LEAF_MAC)
    again = node.run(ack, "cil_to_netdev", ifindex=eth0)
    assert (parse_ipv4(again.data).src, _ports(again.data)[0]) == (NODE_IP, new_sport)
    assert again.counted == run.counted


def test_nodeport_snat_goes_through_both_tail_calls(node: DatapathObjects, ns: DatapathFactory) -> None:
    svc = Service("np", Frontend("10.96.0.30", 80, "TCP"), [Backend(REMOTE_BACKEND, BACKEND_PORT)], type="NodePort",
                  node_port=NODE_PORT)
    node.lb.program(svc.name, lb_rows(svc, NODE_IP, POD_CIDR))
    sport = random.randint(40000, 50000)
    syn = _tcp(OUTSIDE, NODE_IP, sport, NODE_PORT, SYN, smac=LEAF_MAC, dmac=UNDERLAY_MAC)
    run = node.run(syn, "cil_from_netdev", ifindex=ns.ifindex("eth0"))
    assert run.verdict == TcAction.REDIRECT
    h = parse_ipv4(run.data)
    assert (h.src, h.dst, h.csum_ok, _ports(run.data)) == (NODE_IP, REMOTE_BACKEND, True, (sport, BACKEND_PORT))
    assert run.data[:12] == bytes.fromhex(REMOTE_MAC.replace(":", "") + UNDERLAY_MAC.replace(":", ""))
    assert not [t for t in run.counted if t.reason >= 130], run.counted
    reply_key = Ipv4CtTuple(saddr=IPv4Address(REMOTE_BACKEND), daddr=IPv4Address(NODE_IP), sport=BACKEND_PORT,
                            dport=sport, nexthdr=IPPROTO_TCP, flags=TUPLE_F_IN)
    back = node.maps.get(SNAT).get(reply_key)
    assert back is not None and (str(back.to_addr), back.to_port) == (OUTSIDE, sport)


@pytest.mark.parametrize(("slot", "created"), [("CL_CALL_HOST_MASQ_NEW", False), ("CL_CALL_HOST_MASQ_REWRITE", True)])
def test_an_empty_egress_slot_is_a_counted_drop(node: DatapathObjects, ns: DatapathFactory, slot: str,
                                                created: bool) -> None:
    index = {"CL_CALL_HOST_MASQ_NEW": 0, "CL_CALL_HOST_MASQ_REWRITE": 1}[slot]
    _calls(node).delete(index)
    syn = _tcp(POD, OUTSIDE, 40001, 443, SYN, smac=UNDERLAY_MAC, dmac=LEAF_MAC)
    run = node.run(syn, "cil_to_netdev", ifindex=ns.ifindex("eth0"))
    assert run.verdict == TcAction.SHOT
    assert run.counted == Counter({Tally(Reason.DROP_MISSED_TAIL_CALL, Direction.EGRESS, HOST_C): 1})
    # Before the first tail call nothing was made; a miss after the mapping leaves the mapping
    # (the flow's next packet uses it), never a half-written one.
    out_key = Ipv4CtTuple(saddr=IPv4Address(POD), daddr=IPv4Address(OUTSIDE), sport=40001, dport=443,
                          nexthdr=IPPROTO_TCP, flags=TUPLE_F_OUT)
    assert (node.maps.get(SNAT).get(out_key) is not None) is created


def test_an_empty_ingress_slot_is_a_counted_drop(node: DatapathObjects, ns: DatapathFactory) -> None:
    svc = Service("np", Frontend("10.96.0.31", 80, "TCP"), [Backend(REMOTE_BACKEND, BACKEND_PORT)], type="NodePort",
                  node_port=NODE_PORT + 1)
    node.lb.program(svc.name, lb_rows(svc, NODE_IP, POD_CIDR))
    _calls(node).delete(2)  # CL_CALL_HOST_NODEPORT_SNAT
    syn = _tcp(OUTSIDE, NODE_IP, 41000, NODE_PORT + 1, SYN, smac=LEAF_MAC, dmac=UNDERLAY_MAC)
    run = node.run(syn, "cil_from_netdev", ifindex=ns.ifindex("eth0"))
    assert run.verdict == TcAction.SHOT
    assert run.counted == Counter({Tally(Reason.DROP_MISSED_TAIL_CALL, Direction.INGRESS, HOST_C): 1})
