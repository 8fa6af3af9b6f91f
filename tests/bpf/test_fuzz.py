"""The fuzzer (``ciliumlite.testing.fuzz``): its fast subset, its checker, and the bugs it found.

Markers: the checker and generator tests are ``unit`` (no kernel); the rest ``bpf``.

* The checker (scapy) flags what it must: a TCP/UDP/ICMP checksum a program broke, a broken IPv4
  header checksum, a UDP length that disagrees with IP, a new (encapsulating) header that is
  invalid; and it forgives a checksum that was already wrong on input.
* The fast subset: every program of three configurations (VXLAN + SNAT + masquerade; native + SNAT
  + masquerade + XDP; native + DSR + XDP), 15,000 frames each (the sweep and random draws), no
  invariant failure. The full run is ``make fuzz`` (docs/testing.md, Fuzzing).
* Regression: an ICMP echo *reply* a pod sends out with masquerade on left ``cil_to_netdev`` with
  its identifier rewritten as a source port and the ICMP checksum updated from 0 instead of from
  the identifier (invalid checksum, found by the fuzzer); it now leaves untouched, while an echo
  request is still masqueraded with a valid checksum.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from ciliumlite.testing.fuzz import (
    CLIENT_IP,
    NODE_IP,
    OUTSIDE,
    PROGRAMS,
    TC_OK,
    UNDERLAY_MAC,
    FrameGenerator,
    FuzzConfig,
    FuzzNode,
    all_configs,
    check_frame,
    fuzz_program,
    golden_frames,
    prepare_netns,
)

FAST_FRAMES = 15_000
FAST_CONFIGS = [FuzzConfig("vxlan", "snat", True, False), FuzzConfig("native", "snat", True, True),
                FuzzConfig("native", "dsr", False, True)]


def frame(pkt: object) -> bytes:
    return bytes(pkt)  # type: ignore[call-overload]


def tcp_frame(**ip: object) -> bytes:
    return frame(Ether(src="0e:00:00:00:00:01", dst=UNDERLAY_MAC) / IP(src=OUTSIDE, dst=NODE_IP, id=7, **ip)
                 / TCP(sport=1000, dport=80, flags="S"))


def corrupt(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


# -- the checker ----------------------------------------------------------------------------------------------
@pytest.mark.unit
def test_checker_accepts_valid_frames() -> None:
    for name, g in golden_frames():
        assert check_frame(g, g) == [], name


@pytest.mark.unit
def test_checker_flags_an_l4_checksum_the_program_broke() -> None:
    good = tcp_frame()
    bad = corrupt(good, 14 + 20 + 16)  # TCP checksum
    assert any("TCP checksum" in p for p in check_frame(bad, good))
    # Broken on input already: a rewrite that keeps it broken is not the program's fault.
    assert check_frame(bad, bad) == []


@pytest.mark.unit
def test_checker_flags_ip_header_checksum_and_lengths() -> None:
    good = tcp_frame()
    assert any("header checksum" in p for p in check_frame(corrupt(good, 14 + 10), good))
    udp = frame(Ether() / IP(src=OUTSIDE, dst=NODE_IP, id=9) / UDP(sport=1, dport=2) / (b"x" * 10))
    b = bytearray(udp)
    b[14 + 20 + 4:14 + 20 + 6] = struct.pack("!H", 12)   # UDP length 12, IP says 18
    problems = check_frame(bytes(b), udp)
    assert any("UDP length" in p for p in problems), problems
    icmp = frame(Ether() / IP(src=OUTSIDE, dst=NODE_IP, id=10) / ICMP(id=1, seq=1) / b"ping")
    assert any("ICMP checksum" in p for p in check_frame(corrupt(icmp, 14 + 20 + 2), icmp))


@pytest.mark.unit
def test_checker_holds_new_headers_to_full_validity() -> None:
    inner = frame(Ether() / IP(src=CLIENT_IP, dst="10.244.2.7", id=3) / ICMP())
    encap = frame(Ether() / IP(src=NODE_IP, dst="10.0.0.13", id=99) / UDP(sport=5, dport=8472)
                  / VXLAN(vni=5, flags=0x08) / Ether(inner))
    assert check_frame(encap, inner) == []
    problems = check_frame(corrupt(encap, 14 + 10), inner)
    assert any(p.startswith("outer new header") for p in problems), problems


# -- the fast subset ------------------------------------------------------------------------------------------
@pytest.fixture
def fuzz_ns(netns: str) -> str:
    prepare_netns(netns)
    return netns


@pytest.mark.unit
def test_configurations_cover_every_valid_combination() -> None:
    names = {c.name for c in all_configs()}
    assert len(names) == 10
    assert "native/dsr/masq/xdp" in names and "vxlan/snat/nomasq/noxdp" in names
    assert all(set(c.programs()) <= set(PROGRAMS) for c in all_configs())


@pytest.mark.unit
def test_generator_is_reproducible() -> None:
    a, b = FrameGenerator(5), FrameGenerator(5)
    assert [a.random_frame() for _ in range(200)] == [b.random_frame() for _ in range(200)]
    assert sum(1 for _ in FrameGenerator(0).sweep()) > 5000


@pytest.mark.bpf
@pytest.mark.parametrize("config", FAST_CONFIGS, ids=lambda c: c.name)
def test_fast_subset(fuzz_ns: str, config: FuzzConfig) -> None:
    for prog in config.programs():
        with FuzzNode(config, fuzz_ns) as node:
            res = fuzz_program(node, prog, FAST_FRAMES, seed=13)
        assert res.frames == FAST_FRAMES
        assert res.failures == [], [(f.invariant, f.detail, f.frame) for f in res.failures[:3]]
        if prog != "cil_from_overlay":   # test_run never has tunnel metadata: every frame drops at once
            assert res.changed or (prog == "cil_to_netdev" and not config.masquerade) or \
                (prog == "cil_xdp_entry" and not config.xdp), (prog, dict(res.verdicts))


# -- regression: ICMP echo replies and masquerade -------------------------------------------------------------
@pytest.fixture
def masq_node(fuzz_ns: str) -> Iterator[FuzzNode]:
    with FuzzNode(FuzzConfig("native", "snat", True, False), fuzz_ns) as node:
        yield node


def echo(icmp_type: int) -> bytes:
    return frame(Ether(src=UNDERLAY_MAC, dst="0e:00:00:00:00:fe") / IP(src=CLIENT_IP, dst=OUTSIDE, id=77)
                 / ICMP(type=icmp_type, id=0x676F, seq=1) / b"golden")


@pytest.mark.bpf
def test_pod_echo_reply_leaves_unmasqueraded(masq_node: FuzzNode) -> None:
    reply = echo(0)
    run = masq_node.dp.run(reply, "cil_to_netdev", ifindex=masq_node.ifindex["eth0"])
    assert run.verdict == TC_OK
    assert run.data == reply   # before the fix: id rewritten, ICMP checksum invalid


@pytest.mark.bpf
def test_pod_echo_request_is_masqueraded_with_valid_checksums(masq_node: FuzzNode) -> None:
    request = echo(8)
    run = masq_node.dp.run(request, "cil_to_netdev", ifindex=masq_node.ifindex["eth0"])
    assert run.verdict == TC_OK
    out = Ether(run.data)
    assert out[IP].src == NODE_IP
    assert check_frame(run.data, request) == []
