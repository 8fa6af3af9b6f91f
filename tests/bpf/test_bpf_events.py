"""Datapath events (csrc/include/ciliumlite/trace.h) with BPF_PROG_TEST_RUN and the real objects.

Every drop goes through ``send_drop``, which also puts a ``struct drop_notify`` into the pinned ring
buffer ``cilium_events``; with ``trace_events`` on, forward decisions and program entries put
``struct trace_notify`` records there too. Here the records are read back with the SDK's
``RingBuffer`` and decoded with ``ciliumlite.datapath.events``; every field is checked against the
frame that was run and against the ``cilium_metrics`` key the same drop was counted under.

The rate limit (a per-CPU token bucket, ``events_per_sec``, burst = the rate) is exercised with
``repeat``: one test_run call runs the program many times on one CPU, so the bucket of that CPU
empties and every further event is counted as ``EVENT_LOST_RATE_LIMIT`` instead.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

import pytest

from ciliumlite.bpf import Map, MapType, TcAction
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.events import (
    CAP_LEN,
    EVENT_SIZE,
    EVENTS_MAP,
    RATELIMIT_MAP,
    DropEvent,
    EventsUnavailable,
    Monitor,
    TraceEvent,
    TracePoint,
    decode,
    watch,
)
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.datapath.records import MetricsKey
from ciliumlite.testing.datapath import (
    DatapathFactory,
    DatapathObjects,
    EndpointRow,
    ObjectName,
    source_file_id,
)
from ciliumlite.testing.packets import (
    ARPOP_REQUEST,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_UDP,
    arp_frame,
    eth,
    icmp_echo,
    ipv4,
    udp,
)

pytestmark = pytest.mark.bpf

# 8-byte ring header per record; the kernel keeps the producer strictly less than a ring ahead: 2047.
RING_RECORDS = 256 * 1024 // (EVENT_SIZE + 8) - 1

SRC = EndpointRow("10.244.5.2", 1, "0a:12:34:56:78:02", "0e:ab:cd:ef:01:02", 1001)    # behind lo (ifindex 1)
DST = EndpointRow("10.244.5.3", 42, "0a:12:34:56:78:03", "0e:ab:cd:ef:01:03", 1002)   # another pod (ifindex 42)
SPOOFED = "10.244.5.99"


def load(datapath_objects: DatapathFactory, config: DatapathConfig,
         objects: tuple[ObjectName, ...] = ("lxc",)) -> DatapathObjects:
    """A node's objects, sharing cilium_events, with endpoints SRC and DST."""
    dp = datapath_objects(config, objects)
    dp.add_endpoints(SRC, DST)
    return dp


@pytest.fixture
def node(datapath_objects: DatapathFactory) -> DatapathObjects:
    return load(datapath_objects, DatapathConfig())


@pytest.fixture
def make_node(datapath_objects: DatapathFactory) -> Callable[..., DatapathObjects]:
    def make(**cfg: object) -> DatapathObjects:
        return load(datapath_objects, DatapathConfig(**cfg))  # type: ignore[arg-type]

    return make


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """Keep this test on one CPU: test_run runs on the caller's CPU and the token buckets are per CPU."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def udp_frame(src: str = SRC.ip, dst: str = DST.ip, sport: int = 40000, dport: int = 7777,
              payload: bytes = b"spoofed", smac: str = SRC.mac) -> bytes:
    frame: bytes = eth(SRC.node_mac, smac, ETH_P_IP) + ipv4(src, dst, udp(src, dst, sport, dport, payload),
                                                            proto=IPPROTO_UDP)
    return frame


def icmp_frame(src: str = SRC.ip, dst: str = DST.ip, smac: str = SRC.mac) -> bytes:
    frame: bytes = eth(SRC.node_mac, smac, ETH_P_IP) + ipv4(src, dst, icmp_echo())
    return frame


def keys(node: DatapathObjects, reason: Reason) -> list[MetricsKey]:
    """The cilium_metrics keys (with source lines) that counted ``reason``."""
    return [k for k in node.metrics_by_key() if k.reason == reason]


# -- maps ----------------------------------------------------------------------------------------------
def test_ring_and_bucket_are_pinned_by_name(node: DatapathObjects) -> None:
    ring_map = node.objects["lxc"].map(EVENTS_MAP)
    assert ring_map.type == MapType.RINGBUF
    assert ring_map.max_entries == 256 * 1024
    pinned = set(node.objects["lxc"].pinned_map_paths())
    assert {f"{node.pin_dir}/{EVENTS_MAP}", f"{node.pin_dir}/{RATELIMIT_MAP}"} <= pinned
    bucket = Map.open_pinned(f"{node.pin_dir}/{RATELIMIT_MAP}")
    with bucket:
        assert (bucket.type, bucket.max_entries) == (MapType.PERCPU_ARRAY, 1)
    assert node.objects["lxc"].rodata["drop_events"] == 1
    assert node.objects["lxc"].rodata["trace_events"] == 0
    assert node.objects["lxc"].rodata["events_per_sec"] == 1000


# -- drop events ---------------------------------------------------------------------------------------
def test_spoofed_packet_sends_one_drop_event(node: DatapathObjects) -> None:
    frame = udp_frame(src=SPOOFED)
    t0 = time.monotonic_ns()
    run = node.run(frame)
    t1 = time.monotonic_ns()
    assert run.verdict == TcAction.SHOT
    records = node.event_records()
    assert [len(r) for r in records] == [EVENT_SIZE]
    ev = decode(records[0])
    assert isinstance(ev, DropEvent) and ev.type == "drop"
    assert (ev.reason, ev.reason_name, ev.reason_text) == (Reason.DROP_INVALID_SIP, "DROP_INVALID_SIP",
                                                           "Invalid source ip")
    assert (ev.saddr, ev.daddr, ev.proto, ev.proto_name) == (IPv4Address(SPOOFED), IPv4Address(DST.ip), 17, "UDP")
    assert (ev.sport, ev.dport) == (40000, 7777)
    assert (ev.ifindex, ev.dir, ev.direction) == (1, Direction.EGRESS, "egress")
    assert ev.len_orig == len(frame) and ev.data == frame[:CAP_LEN]
    assert t0 <= ev.ktime_ns <= t1 and abs(ev.time - time.time()) < 5
    # The event names the same call site the drop was counted at.
    (key,) = keys(node, Reason.DROP_INVALID_SIP)
    assert (ev.file_id, ev.line) == (key.file, key.line) == (source_file_id("bpf_lxc.c"), key.line)
    assert ev.source == f"bpf_lxc.c:{key.line}"
    assert ev.describe() == (f"xx drop (Invalid source ip) flow 0x0 to endpoint 0, ifindex 1, file "
                             f"bpf_lxc.c:{key.line}, {SPOOFED}:40000 -> {DST.ip}:7777 UDP")
    row = ev.as_dict()
    assert (row["type"], row["reason"], row["saddr"], row["daddr"], row["proto"]) == (
        "drop", 132, SPOOFED, DST.ip, "UDP")
    assert node.counts() == Counter({Reason.DROP_INVALID_SIP: 1})  # no event was lost


def test_icmp_drop_has_addresses_and_no_ports(node: DatapathObjects) -> None:
    assert node.run(icmp_frame(src=SPOOFED)).verdict == TcAction.SHOT
    (ev,) = node.events()
    assert (ev.saddr, ev.daddr, ev.proto, ev.sport, ev.dport) == (IPv4Address(SPOOFED), IPv4Address(DST.ip), 1,
                                                                  None, None)
    assert ev.describe().endswith(f", {SPOOFED} -> {DST.ip} ICMP")


def test_wrong_mac_drop_reason(node: DatapathObjects) -> None:
    assert node.run(icmp_frame(smac="0a:66:66:66:66:66")).verdict == TcAction.SHOT
    (ev,) = node.events()
    assert ev.reason == Reason.DROP_INVALID_SMAC and ev.saddr == IPv4Address(SRC.ip)


def test_non_ipv4_drop_carries_the_frame(node: DatapathObjects) -> None:
    src6, dst6 = bytes.fromhex("fe80" + "00" * 12 + "0001"), bytes.fromhex("ff02" + "00" * 12 + "0002")
    ip6 = bytes.fromhex("6000000000083aff") + src6 + dst6 + bytes(8)
    frame = eth(SRC.node_mac, SRC.mac, ETH_P_IPV6) + ip6
    assert node.run(frame).verdict == TcAction.SHOT
    (ev,) = node.events()
    assert ev.reason == Reason.DROP_UNKNOWN_L3
    assert (ev.saddr, ev.proto, ev.sport) == (None, None, None)
    assert ev.data == frame[:CAP_LEN] and ev.ethertype == ETH_P_IPV6
    assert ev.flow_text() == "IPv6 fe80::1 -> ff02::2"


def test_short_frame_is_captured_whole(node: DatapathObjects) -> None:
    frame = arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, "10.244.5.1")[:41]
    assert node.run(frame).verdict == TcAction.SHOT
    (ev,) = node.events()
    assert ev.reason == Reason.DROP_INVALID and ev.len_orig == 41 and ev.data == frame
    assert ev.saddr is None


def test_arp_drop_is_described(node: DatapathObjects) -> None:
    frame = arp_frame(ARPOP_REQUEST, SRC.mac, SPOOFED, "10.244.5.1")
    assert node.run(frame).verdict == TcAction.SHOT
    (ev,) = node.events()
    assert ev.reason == Reason.DROP_INVALID_SIP
    assert ev.flow_text() == f"ARP request {SPOOFED} -> 10.244.5.1"


def test_forwarded_packets_send_nothing_by_default(node: DatapathObjects) -> None:
    assert node.run(udp_frame()).verdict == TcAction.REDIRECT
    assert node.run(icmp_frame(dst="192.0.2.1")).verdict == TcAction.OK
    assert node.event_records() == []


def test_drop_events_can_be_switched_off(make_node: Callable[..., DatapathObjects]) -> None:
    node = make_node(monitor_drops=False)
    assert node.objects["lxc"].rodata["drop_events"] == 0
    assert node.run(udp_frame(src=SPOOFED)).verdict == TcAction.SHOT
    assert node.event_records() == []
    assert node.counts() == Counter({Reason.DROP_INVALID_SIP: 1})


def test_objects_of_a_node_share_the_ring(datapath_objects: DatapathFactory) -> None:
    node = load(datapath_objects, DatapathConfig(), ("lxc", "overlay"))
    # test_run carries no tunnel metadata: every frame is DROP_NO_TUNNEL_KEY (csrc/README.md).
    assert node.run(icmp_frame(), "cil_from_overlay").verdict == TcAction.SHOT
    assert node.run(udp_frame(src=SPOOFED)).verdict == TcAction.SHOT
    first, second = node.events()
    assert (first.reason, first.file, first.dir) == (Reason.DROP_NO_TUNNEL_KEY, "bpf_overlay.c", Direction.INGRESS)
    assert (second.reason, second.file) == (Reason.DROP_INVALID_SIP, "bpf_lxc.c")
    assert first.ktime_ns <= second.ktime_ns


# -- trace events --------------------------------------------------------------------------------------
def test_trace_events_at_entry_and_decision(make_node: Callable[..., DatapathObjects]) -> None:
    node = make_node(monitor_trace=True)
    assert node.objects["lxc"].rodata["trace_events"] == 1
    frame = udp_frame(payload=b"honest")
    assert node.run(frame).verdict == TcAction.REDIRECT
    entry, delivered = node.events()
    assert isinstance(entry, TraceEvent) and isinstance(delivered, TraceEvent)
    assert (entry.point, entry.point_name, entry.inbound, entry.file) == (
        TracePoint.FROM_LXC, "from-container", True, "bpf_lxc.c")
    assert entry.data == frame[:CAP_LEN] and entry.dst_ifindex == 0
    assert (delivered.point_name, delivered.reason, delivered.dst_ifindex, delivered.file) == (
        "redirect-peer", Reason.FORWARDED, DST.ifindex, "l3.h")
    (key,) = keys(node, Reason.FORWARDED)
    assert delivered.line == key.line + 1  # traced right after it was counted
    assert (delivered.saddr, delivered.daddr, delivered.sport, delivered.dport) == (
        IPv4Address(SRC.ip), IPv4Address(DST.ip), 40000, 7777)
    assert delivered.data[:12] == bytes.fromhex((DST.mac + DST.node_mac).replace(":", ""))  # after the rewrite
    assert delivered.describe() == (f"-> redirect-peer (Forwarded) flow 0x0 ifindex 1 to ifindex 42, file "
                                    f"l3.h:{delivered.line}, {SRC.ip}:40000 -> {DST.ip}:7777 UDP")
    assert entry.describe().startswith("<- from-container flow 0x0 ifindex 1, file bpf_lxc.c:")
    assert delivered.as_dict()["observation_point"] == "redirect-peer"


def test_trace_to_stack_arp_reply_and_drop(make_node: Callable[..., DatapathObjects]) -> None:
    node = make_node(monitor_trace=True)
    assert node.run(icmp_frame(dst="192.0.2.1")).verdict == TcAction.OK
    assert node.run(arp_frame(ARPOP_REQUEST, SRC.mac, SRC.ip, "10.244.5.1")).verdict == TcAction.REDIRECT
    assert node.run(udp_frame(src=SPOOFED)).verdict == TcAction.SHOT
    got = [(e.type, e.point_name if isinstance(e, TraceEvent) else None, e.reason) for e in node.events()]
    assert got == [("trace", "from-container", 0), ("trace", "to-stack", Reason.TO_STACK),
                   ("trace", "from-container", 0), ("trace", "arp-reply", Reason.ARP_REPLY),
                   ("trace", "from-container", 0), ("drop", None, Reason.DROP_INVALID_SIP)]


# -- the Monitor reader --------------------------------------------------------------------------------
def test_monitor_reads_the_pinned_ring(make_node: Callable[..., DatapathObjects]) -> None:
    node = make_node(monitor_trace=True)
    with Monitor(node.pin_dir, types={"drop"}, node="n1") as mon:
        assert node.run(udp_frame(src=SPOOFED)).verdict == TcAction.SHOT
        got = list(mon.events(max_seconds=0.3))
        assert [(e.type, e.reason, str(e.saddr), e.node) for e in got] == [
            ("drop", Reason.DROP_INVALID_SIP, SPOOFED, "n1")]
        assert mon.received == 2  # the from-container trace was read and filtered out
    with Monitor(node.pin_dir) as mon:
        assert node.run(udp_frame(src=SPOOFED)).verdict == TcAction.SHOT
        seen: list[str] = []
        mon.follow(lambda e: seen.append(e.type), stop=lambda: len(seen) >= 2, timeout_ms=50)
        assert seen == ["trace", "drop"]
        assert node.run(udp_frame(src=SPOOFED)).verdict == TcAction.SHOT
        assert [e.type for e in watch([mon], max_seconds=0.3)] == ["trace", "drop"]


def test_monitor_without_events_map(bpffs_dir: str) -> None:
    with pytest.raises(EventsUnavailable, match="no cilium_events ring buffer"):
        Monitor(bpffs_dir)


# -- rate limit ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [1000, 100])
def test_a_flood_is_rate_limited_not_slowed(make_node: Callable[..., DatapathObjects], one_cpu: int, rate: int) -> None:
    node = make_node(events_per_sec=rate)
    repeat = 100_000
    t0 = time.monotonic()
    run = node.run(udp_frame(src=SPOOFED), repeat=repeat)
    elapsed = time.monotonic() - t0
    assert run.verdict == TcAction.SHOT
    events = node.events()
    # At most the burst (= the rate), plus what the bucket refilled while the flood lasted.
    assert rate * 0.9 <= len(events) <= rate + rate * elapsed + 2, (len(events), elapsed)
    assert all(e.reason == Reason.DROP_INVALID_SIP and e.cpu == one_cpu for e in events)
    counts = node.counts()
    assert counts[Reason.DROP_INVALID_SIP] == repeat  # every packet dropped and counted, events or not
    assert counts[Reason.EVENT_LOST_RATE_LIMIT] == repeat - len(events)
    assert counts[Reason.EVENT_LOST_RING_FULL] == 0
    (key,) = keys(node, Reason.EVENT_LOST_RATE_LIMIT)
    assert (key.file, key.dir) == (source_file_id("trace.h"), Direction.EGRESS)
    # Per packet, a lost event costs a bucket check and a counter: the flood stays cheap.
    assert run.duration_ns < 5_000, run.duration_ns


def test_bucket_refills_at_the_rate(make_node: Callable[..., DatapathObjects], one_cpu: int) -> None:
    node = make_node(events_per_sec=1000)
    frame = udp_frame(src=SPOOFED)
    node.run(frame, repeat=5000)
    t0 = time.monotonic()  # the bucket is empty from (about) here
    assert 1000 <= len(node.events()) < 1100
    time.sleep(0.25)
    node.run(frame, repeat=5000)
    elapsed = time.monotonic() - t0
    refilled = len(node.events())
    assert 200 <= refilled <= 1000 * elapsed + 2, (refilled, elapsed)


def test_full_ring_loses_events_without_blocking(make_node: Callable[..., DatapathObjects], one_cpu: int) -> None:
    node = make_node(events_per_sec=0)  # no rate limit: only the ring's size holds events back
    repeat = 5000
    run = node.run(udp_frame(src=SPOOFED), repeat=repeat)
    assert run.verdict == TcAction.SHOT
    counts = node.counts()
    assert counts[Reason.EVENT_LOST_RATE_LIMIT] == 0
    assert counts[Reason.EVENT_LOST_RING_FULL] == repeat - RING_RECORDS
    assert len(node.events()) == RING_RECORDS
    # Read out, the ring takes events again.
    assert node.run(udp_frame(src=SPOOFED)).verdict == TcAction.SHOT
    assert len(node.events()) == 1
    assert run.duration_ns < 5_000, run.duration_ns


# -- the codec, without the kernel ---------------------------------------------------------------------
def _record(etype: int = 1, subtype: int = int(Reason.DROP_INVALID_SIP), version: int = 1, flags: int = 3,
            reason: int = 0, point_data: bytes = b"") -> bytes:
    import struct

    hdr = struct.pack("<BBBBHBBQIIIHBxI4x", etype, subtype, version, 2, 123, 1, reason, 5_000_000_000, 7, 9, 99,
                      len(point_data), flags, 3)
    flow = IPv4Address("10.0.0.1").packed + IPv4Address("10.0.0.2").packed + struct.pack("!HHB3x", 1234, 80, 6)
    return hdr + flow + point_data.ljust(CAP_LEN, b"\0")


def test_decode_synthetic_records() -> None:
    ev = decode(_record(), node="n", clock_offset_ns=1_000_000_000)
    assert isinstance(ev, DropEvent)
    assert (ev.time, ev.ifindex, ev.len_orig, ev.cpu, ev.node, ev.source) == (6.0, 7, 99, 3, "n", "bpf_lxc.c:123")
    assert ev.flow_text() == "10.0.0.1:1234 -> 10.0.0.2:80 TCP"
    no_l4 = decode(_record(flags=1))
    assert (no_l4.sport, no_l4.dport, no_l4.proto_name) == (None, None, "TCP")
    tr = decode(_record(etype=2, subtype=42, reason=int(Reason.TO_STACK)))
    assert isinstance(tr, TraceEvent) and tr.point_name == "point 42" and tr.dst_ifindex == 9
    assert tr.describe().startswith("-> point 42 (Passed to the kernel stack) flow 0x0 ifindex 7 to ifindex 9")
    assert decode(_record(subtype=250)).reason_text == "Unknown drop reason 250"
    assert decode(_record(flags=0, point_data=b"\xff" * 12 + b"\x88\xcc")).flow_text() == "ethertype 0x88cc"


@pytest.mark.parametrize(("raw", "match"), [
    (_record()[:100], "100 bytes"),
    (_record(version=2), "version 2"),
    (_record(etype=7), "unknown event type 7"),
])
def test_decode_rejects_what_it_does_not_know(raw: bytes, match: str) -> None:
    from ciliumlite.datapath.events import EventDecodeError

    with pytest.raises(EventDecodeError, match=match):
        decode(raw)


def test_lost_events_are_not_forwarded_traffic_in_prometheus() -> None:
    from ciliumlite.cli import format as fmt
    from ciliumlite.node import MetricRow

    rows = fmt.metric_rows("n1", [MetricRow(0, 2, 10, 1000), MetricRow(int(Reason.EVENT_LOST_RATE_LIMIT), 2, 7, 700)])
    text = fmt.prometheus(rows)
    assert 'ciliumlite_forward_count_total{direction="egress",node="n1"} 10' in text
    assert 'ciliumlite_events_lost_total{reason="Event lost (rate limit)",node="n1"} 7' in text
    assert "ciliumlite_events_lost_total" not in fmt.prometheus(rows[:1])
