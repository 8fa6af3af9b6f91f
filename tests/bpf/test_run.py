"""Program.run (BPF_PROG_TEST_RUN): verdicts, output frames, SkbContext and timing, plus feature probes."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest

from ciliumlite.bpf import (
    U32,
    U64,
    BpfError,
    BpfObject,
    ProgType,
    Record,
    SkbContext,
    TcAction,
    ValidationError,
    XdpAction,
    features,
)

pytestmark = pytest.mark.bpf

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


@dataclass(frozen=True, slots=True)
class Counter(Record, c_name="counter"):
    packets: Annotated[int, U64]
    bytes: Annotated[int, U64]


def csum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def frame(dport: int, *, proto: int = socket.IPPROTO_UDP, ethertype: int = 0x0800, frag_off: int = 0,
          payload: bytes = b"hello") -> bytes:
    """Ethernet + IPv4 + UDP (or another protocol's 8 header bytes) from 192.0.2.1 to 192.0.2.2."""
    l4 = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag_off, 64, proto, 0,
                     socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.2"))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return MAC_B + MAC_A + struct.pack("!H", ethertype) + ip + l4


@pytest.fixture
def tc(test_objects: Path) -> Iterator[BpfObject]:
    with BpfObject.load_file(test_objects / "test_tc.o", config={"drop_port": 5000}) as o:
        yield o


@pytest.fixture
def xdp(test_objects: Path) -> Iterator[BpfObject]:
    with BpfObject.load_file(test_objects / "test_xdp.o", config={"xdp_drop_port": 5000}) as o:
        yield o


def test_tc_swap_macs_output_frame(tc: BpfObject):
    pkt = frame(1234)
    res = tc.program("tc_swap_macs").run(pkt)
    assert res.retval == 0 and res.tc_action is TcAction.OK
    assert len(res.data) == len(pkt)
    assert res.data[:6] == MAC_A and res.data[6:12] == MAC_B
    assert res.data[12:] == pkt[12:]
    # and back again
    assert tc.program("tc_swap_macs").run(res.data).data == pkt


def test_tc_drop_udp_port_verdicts(tc: BpfObject):
    prog = tc.program("tc_drop_udp_port")
    assert prog.type is ProgType.SCHED_CLS
    counters = tc.map("tc_counters", key=U32, value=Counter)
    cases = [
        (frame(5000), TcAction.SHOT),
        (frame(5001), TcAction.OK),
        (frame(4999), TcAction.OK),
        (frame(0x8813), TcAction.OK),  # 5000 byte-swapped: the port is compared in the right byte order
        (frame(5000, proto=socket.IPPROTO_TCP), TcAction.OK),
        (frame(5000, ethertype=0x0806), TcAction.OK),
        (frame(5000, frag_off=100), TcAction.OK),  # a later fragment has no UDP header
        (frame(5000)[:14 + 20 + 4], TcAction.OK),  # truncated UDP header
    ]
    for pkt, verdict in cases:
        res = prog.run(pkt)
        assert res.tc_action is verdict, (pkt.hex(), res.retval)
        assert res.data == pkt  # the program does not modify the frame
    assert prog.run(frame(5000)).retval == 2
    drops, passes = counters[1], counters[3]
    assert drops.packets == 2 and passes.packets == len(cases) - 1
    assert drops.bytes == 2 * len(frame(5000))


def test_tc_drop_udp_port_default_config_drops_nothing_on_5000(test_objects: Path):
    with BpfObject.load_file(test_objects / "test_tc.o") as obj:
        assert obj.rodata["drop_port"] == 0
        prog = obj.program("tc_drop_udp_port")
        assert prog.run(frame(5000)).tc_action is TcAction.OK
        assert prog.run(frame(0)).tc_action is TcAction.SHOT


def test_xdp_drop_udp_port_verdicts(xdp: BpfObject):
    prog = xdp.program("xdp_drop_udp_port")
    assert prog.type is ProgType.XDP
    res = prog.run(frame(5000))
    assert res.retval == 1 and res.xdp_action is XdpAction.DROP
    for pkt in (frame(5001), frame(5000, proto=socket.IPPROTO_TCP), frame(5000, ethertype=0x0806)):
        res = prog.run(pkt)
        assert res.retval == 2 and res.xdp_action is XdpAction.PASS
        assert res.data == pkt
    counters = xdp.map("xdp_counters", key=U32, value=Counter)
    assert counters[1].packets == 1 and counters[0].packets == 3
    assert counters[1].bytes == len(frame(5000))
    assert xdp.program("xdp_pass").run(frame(1)).xdp_action is XdpAction.PASS
    assert counters[2].packets == 1


def test_skb_context_reaches_the_program(tc: BpfObject):
    prog = tc.program("tc_count")
    counters = tc.map("tc_counters", key=U32, value=Counter)
    pkt = frame(80)
    res = prog.run(pkt, ctx=SkbContext(ingress_ifindex=1, ifindex=1, mark=0x1234, cb0=7))
    assert res.tc_action is TcAction.OK
    assert counters[0] == Counter(1, len(pkt)) and counters[2] == Counter(0, 0)
    out = SkbContext.unpack(res.ctx)
    assert len(res.ctx) == SkbContext.SIZE == 192
    assert (out.mark, out.cb0, out.ingress_ifindex, out.ifindex) == (0x1234, 7, 1, 1)
    prog.run(pkt)  # no ctx: egress
    assert counters[0].packets == 1 and counters[2] == Counter(1, len(pkt))
    prog.run(pkt, ctx=SkbContext(ifindex=1).pack())  # raw bytes work too; no ingress_ifindex -> egress
    assert counters[2].packets == 2


def test_repeat_reports_duration(tc: BpfObject):
    prog = tc.program("tc_count")
    res = prog.run(frame(80), repeat=1000)
    assert res.duration_ns > 0
    assert res.duration_ns < 1_000_000  # an average per run, not the total
    assert tc.map("tc_counters", key=U32, value=Counter)[2].packets == 1000
    with pytest.raises(ValidationError, match="repeat"):
        prog.run(frame(80), repeat=0)


def test_run_errors(tc: BpfObject):
    with pytest.raises(BpfError) as info:
        tc.program("tc_count").run(b"\0" * 4)  # shorter than an Ethernet header
    assert info.value.operation == "test_run program" and info.value.target == "tc_count"
    with pytest.raises(BpfError):
        tc.program("tc_count").run(frame(80), ctx=b"\xff" * 192)  # fields the kernel does not accept


def test_probe_all():
    probes = features.probe_all()
    assert set(probes) == set(features.PROBES)
    assert all(type(v) is bool for v in probes.values()), probes
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) >= (6, 6):  # every probed feature but sockmap links is older than tcx (6.6)
        assert all(v for k, v in probes.items() if k != "sockmap_link"), probes
        features.require("tcx")
        features.require("batch_ops")
    if (major, minor) >= (6, 10):  # BPF_LINK_TYPE_SOCKMAP
        assert probes["sockmap_link"], probes
    with pytest.raises(ValidationError, match="unknown feature 'warp_drive'"):
        features.require("warp_drive")


def test_programs_of_a_closed_object_refuse_to_run(test_objects: Path):
    obj = BpfObject.load_file(test_objects / "test_tc.o")
    prog = obj.program("tc_count")
    assert prog.run(frame(80)).tc_action is TcAction.OK
    obj.close()
    with pytest.raises(BpfError, match="closed") as info:
        prog.run(frame(80))
    assert info.value.errno == errno.EBADF
