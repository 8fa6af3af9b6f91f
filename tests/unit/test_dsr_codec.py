"""The DSR IPv4 option codec (``ciliumlite.datapath.dsr``) against the reference's byte examples
(shared/reference/cilium-datapath.md §3.1-§3.3), Cilium's little-endian quirk included. No root."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath.dsr import OPT_LEN, OPT_TYPE, DsrOption

pytestmark = pytest.mark.unit

# §3.1: service 10.0.0.1:30080 -> option bytes.
REF_OPTION = bytes.fromhex("9a 08 80 75 01 00 00 0a")
# §3.2 worked example: the header that leaves the LB node (IHL 7, option appended).
REF_LEAVES = bytes.fromhex("47 00 00 44 12 34 40 00 3f 06 3d f5 c0 00 02 0a 0a f4 01 05 9a 08 80 75 01 00 00 0a")
REF_ARRIVES = bytes.fromhex("45 00 00 3c 12 34 40 00 40 06 5c 7d c0 00 02 0a 0a 00 00 01")

addresses = st.ip_addresses(v=4).map(str)
ports = st.integers(min_value=1, max_value=65535)


def _csum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_reference_example_encodes_byte_exact() -> None:
    assert DsrOption("10.0.0.1", 30080).encode() == REF_OPTION
    assert len(REF_OPTION) == OPT_LEN == 8 and REF_OPTION[0] == OPT_TYPE == 0x9A


def test_reference_example_decodes() -> None:
    assert DsrOption.decode(REF_OPTION) == DsrOption("10.0.0.1", 30080)


def test_bytes_are_little_endian_not_network_order() -> None:
    # The quirk is the point: network order would be 75 80 / 0a 00 00 01.
    raw = DsrOption("192.168.1.2", 0x1234).encode()
    assert raw[2:4] == b"\x34\x12"
    assert raw[4:8] == bytes([2, 1, 168, 192])


def test_from_ipv4_header_on_reference_worked_example() -> None:
    hdr = REF_LEAVES
    assert hdr[0] & 0x0F == 7 and struct.unpack("!H", hdr[2:4])[0] == 68
    assert _csum(hdr) == 0, "the reference header's checksum verifies"
    assert DsrOption.from_ipv4_header(hdr) == DsrOption("10.0.0.1", 30080)
    # ...and the header it came from carries no option.
    assert DsrOption.from_ipv4_header(REF_ARRIVES) is None


def test_from_ipv4_header_ignores_a_header_without_dsr_first() -> None:
    # Only the first option slot is examined (as Cilium does): a NOP before the option hides it.
    nop_first = bytearray(REF_LEAVES[:20]) + b"\x01\x01\x01\x01" + REF_OPTION
    nop_first[0] = 0x48
    assert DsrOption.from_ipv4_header(bytes(nop_first)) is None
    other = bytearray(REF_LEAVES)
    other[20] = 0x94  # router alert in the slot
    assert DsrOption.from_ipv4_header(bytes(other)) is None
    truncated = REF_LEAVES[:27]
    assert DsrOption.from_ipv4_header(truncated) is None
    ihl5 = bytearray(REF_LEAVES)
    ihl5[0] = 0x45  # option bytes present after the header, but IHL says there are none
    assert DsrOption.from_ipv4_header(bytes(ihl5)) is None


@given(addresses, ports)
def test_round_trip(addr: str, port: int) -> None:
    raw = DsrOption(addr, port).encode()
    assert len(raw) == 8 and raw[:2] == b"\x9a\x08"
    assert raw[2:4] == port.to_bytes(2, "little")
    assert raw[4:8] == int(ipaddress.IPv4Address(addr)).to_bytes(4, "little")
    assert DsrOption.decode(raw) == DsrOption(addr, port)
    hdr = bytes([0x47]) + bytes(19) + raw
    assert DsrOption.from_ipv4_header(hdr) == DsrOption(addr, port)


@pytest.mark.parametrize("raw", [
    b"", b"\x9a", b"\x9a\x08", REF_OPTION[:7],
    b"\x9b" + REF_OPTION[1:],             # wrong type
    b"\x1a" + REF_OPTION[1:],             # copied bit missing
    b"\x9a\x07" + REF_OPTION[2:],         # wrong length
    b"\x9a\x0c" + REF_OPTION[2:],
    b"\x00" * 8, b"\xff" * 8,
], ids=["empty", "1-byte", "2-bytes", "7-bytes", "type-9b", "type-1a", "len-7", "len-12", "zeros", "ones"])
def test_decode_of_garbage_is_a_validation_error(raw: bytes) -> None:
    with pytest.raises(ValidationError, match="not a DSR option"):
        DsrOption.decode(raw)


@given(st.binary(min_size=0, max_size=16))
def test_decode_never_raises_anything_but_validation_error(raw: bytes) -> None:
    try:
        DsrOption.decode(raw)
    except ValidationError:
        pass


@given(st.sampled_from([b"\x9a\x08", b"\x9a\x07", b"\x9b\x08"]) | st.binary(min_size=2, max_size=2),
       st.binary(min_size=6, max_size=6))
def test_whatever_decodes_encodes_back_to_the_same_bytes(head: bytes, body: bytes) -> None:
    raw = head + body
    # The codec is symmetric: an option decode() accepts is one encode() can produce. (A port of 0
    # is not a service port; Cilium's backend drops such a SYN with DROP_INVALID.)
    try:
        opt = DsrOption.decode(raw)
    except ValidationError:
        return
    assert opt.encode() == raw


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_encode_refuses_port_out_of_range(port: int) -> None:
    with pytest.raises(ValidationError, match=r"outside 1\.\.65535"):
        DsrOption("10.0.0.1", port).encode()


@pytest.mark.parametrize(("addr", "port"), [("10.0.0", 80), ("not-an-ip", 80), ("10.0.0.1", True)])
def test_encode_refuses_bad_values_with_validation_error(addr: str, port: int) -> None:
    with pytest.raises(ValidationError):
        DsrOption(addr, port).encode()
