"""Record and scalar codecs: round trips, byte order, offsets, packing and range checks (no root)."""

from __future__ import annotations

import struct
from dataclasses import FrozenInstanceError, dataclass
from ipaddress import IPv4Address
from typing import Annotated

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciliumlite.bpf import (
    BE16,
    BE32,
    IPV4,
    MAC,
    S32,
    S64,
    U8,
    U16,
    U32,
    U64,
    At,
    Bytes,
    LayoutError,
    Record,
    ValidationError,
)
from ciliumlite.bpf.record import Kind, Scalar, codec_for

pytestmark = pytest.mark.unit

INT_KINDS = {"u8": (U8, 0, 2**8 - 1), "u16": (U16, 0, 2**16 - 1), "u32": (U32, 0, 2**32 - 1),
             "u64": (U64, 0, 2**64 - 1), "s32": (S32, -(2**31), 2**31 - 1), "s64": (S64, -(2**63), 2**63 - 1)}
LE_FORMAT = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q", "s32": "<i", "s64": "<q"}


@dataclass(frozen=True, slots=True)
class Ints(Record, c_name="ints"):
    u8: Annotated[int, U8]
    u16: Annotated[int, U16]
    u32: Annotated[int, U32]
    u64: Annotated[int, U64]
    s32: Annotated[int, S32]
    s64: Annotated[int, S64]


@dataclass(frozen=True, slots=True)
class Wire(Record):
    addr: Annotated[IPv4Address, IPV4]
    port: Annotated[int, BE16]
    proto: Annotated[int, U8]
    mac: Annotated[str, MAC]
    seq: Annotated[int, BE32]


@dataclass(frozen=True, slots=True)
class Placed(Record):
    a: Annotated[int, U8]
    b: Annotated[int, U32, At(8)]
    c: Annotated[int, U16]


@dataclass(frozen=True, slots=True)
class PlacedWide(Record):
    a: Annotated[int, U64, At(0)]
    b: Annotated[int, U8]


@dataclass(frozen=True, slots=True)
class Packed(Record, packed=True):
    a: Annotated[int, U8]
    b: Annotated[int, U32]
    c: Annotated[int, BE16]
    d: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class Sized(Record, size=16):
    a: Annotated[int, U32]
    tag: Annotated[bytes, Bytes(3)]


# No deadline: the suite runs next to kernel-heavy tests, and a slow example is not a wrong one.
relaxed = settings(deadline=None, max_examples=100)

ints_strategy = st.builds(Ints, **{name: st.integers(lo, hi) for name, (_, lo, hi) in INT_KINDS.items()})
mac_strategy = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))


# -- integers ------------------------------------------------------------------------------------------
def test_ints_layout_follows_c_alignment():
    assert [(f.name, f.offset) for f in Ints.LAYOUT] == [
        ("u8", 0), ("u16", 2), ("u32", 4), ("u64", 8), ("s32", 16), ("s64", 24)]
    assert Ints.SIZE == 32
    assert Ints.C_NAME == "ints"


@relaxed
@given(ints_strategy)
def test_ints_round_trip_and_match_hand_packed_bytes(rec: Ints):
    raw = rec.pack()
    assert raw == struct.pack("<BxHIQi4xq", rec.u8, rec.u16, rec.u32, rec.u64, rec.s32, rec.s64)
    assert Ints.unpack(raw) == rec
    assert Ints.decode(Ints.encode(rec)) == rec


@pytest.mark.parametrize("name", INT_KINDS)
def test_int_kinds_at_their_bounds(name: str):
    kind, lo, hi = INT_KINDS[name]
    codec = Scalar(kind)
    assert struct.calcsize(LE_FORMAT[name]) == codec.SIZE
    for v in (lo, lo + 1, hi - 1, hi, 0):
        raw = codec.encode(v)
        assert raw == struct.pack(LE_FORMAT[name], v)
        assert codec.decode(raw) == v
    for bad in (lo - 1, hi + 1):
        with pytest.raises(ValidationError, match=name):
            codec.encode(bad)


@pytest.mark.parametrize("name", INT_KINDS)
@relaxed
@given(data=st.data())
def test_int_kinds_round_trip_anywhere_in_range(name: str, data: st.DataObject):
    kind, lo, hi = INT_KINDS[name]
    v = data.draw(st.integers(lo, hi))
    assert Scalar(kind).decode(Scalar(kind).encode(v)) == v


@pytest.mark.parametrize("name", INT_KINDS)
def test_record_field_out_of_range_raises_validation_error_naming_the_field(name: str):
    _, lo, hi = INT_KINDS[name]
    ok = {n: 0 for n in INT_KINDS}
    for bad in (lo - 1, hi + 1):
        with pytest.raises(ValidationError, match=rf"Ints\.{name}"):
            Ints(**{**ok, name: bad})


@pytest.mark.parametrize("bad", [1.0, "1", None, True, b"\x01"])
def test_int_fields_reject_non_integers(bad: object):
    with pytest.raises(ValidationError, match="expected an integer"):
        Scalar(U32).encode(bad)
    with pytest.raises(ValidationError):
        Ints(u8=bad, u16=0, u32=0, u64=0, s32=0, s64=0)  # type: ignore[arg-type]


def test_validation_error_is_a_value_error():
    with pytest.raises(ValueError):
        Scalar(U8).encode(256)


def test_records_are_frozen():
    rec = Ints(1, 2, 3, 4, 5, 6)
    with pytest.raises(FrozenInstanceError):
        rec.u8 = 9  # type: ignore[misc]


# -- byte order, addresses -----------------------------------------------------------------------------
def test_be16_be32_are_network_order_on_the_wire():
    assert Scalar(BE16).encode(0x1234) == b"\x12\x34"
    assert Scalar(BE16).encode(80) == b"\x00\x50"
    assert Scalar(BE16).decode(b"\x1f\x90") == 8080
    assert Scalar(BE32).encode(0x01020304) == b"\x01\x02\x03\x04"
    assert Scalar(BE32).decode(b"\xde\xad\xbe\xef") == 0xDEADBEEF
    # ... while the plain kinds are host (little-endian) order
    assert Scalar(U16).encode(0x1234) == b"\x34\x12"
    assert Scalar(U32).encode(0x01020304) == b"\x04\x03\x02\x01"


@relaxed
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF))
def test_be_kinds_round_trip(v16: int, v32: int):
    assert Scalar(BE16).encode(v16) == v16.to_bytes(2, "big")
    assert Scalar(BE32).encode(v32) == v32.to_bytes(4, "big")
    assert Scalar(BE16).decode(v16.to_bytes(2, "big")) == v16
    assert Scalar(BE32).decode(v32.to_bytes(4, "big")) == v32


@pytest.mark.parametrize(("kind", "bad"), [(BE16, -1), (BE16, 0x10000), (BE32, -1), (BE32, 2**32)])
def test_be_kinds_range_errors(kind: Kind, bad: int):
    with pytest.raises(ValidationError, match=kind.name):
        Scalar(kind).encode(bad)


def test_wire_record_hand_written_bytes():
    rec = Wire(addr="10.0.0.1", port=8080, proto=17, mac="AA-BB-cc-dd-ee-01", seq=0x01020304)  # type: ignore[arg-type]
    assert rec.addr == IPv4Address("10.0.0.1")
    assert rec.mac == "aa:bb:cc:dd:ee:01"
    assert [(f.name, f.offset) for f in Wire.LAYOUT] == [
        ("addr", 0), ("port", 4), ("proto", 6), ("mac", 8), ("seq", 16)]
    assert Wire.SIZE == 24
    expected = (b"\x0a\x00\x00\x01" + b"\x1f\x90" + b"\x11" + b"\x00"
                + b"\xaa\xbb\xcc\xdd\xee\x01\x00\x00" + b"\x01\x02\x03\x04" + b"\x00" * 4)
    assert rec.pack() == expected
    assert Wire.unpack(expected) == rec


@relaxed
@given(st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF), st.integers(0, 255), mac_strategy,
       st.integers(0, 2**32 - 1))
def test_wire_record_round_trip(addr: int, port: int, proto: int, mac: str, seq: int):
    rec = Wire(addr=addr, port=port, proto=proto, mac=mac, seq=seq)  # type: ignore[arg-type]
    raw = rec.pack()
    assert raw[0:4] == addr.to_bytes(4, "big")
    assert raw[4:6] == port.to_bytes(2, "big")
    assert raw[8:14] == bytes.fromhex(mac.replace(":", "")) and raw[14:16] == b"\0\0"
    assert raw[16:20] == seq.to_bytes(4, "big")
    assert Wire.unpack(raw) == rec


@pytest.mark.parametrize("bad", ["10.0.0.256", "10.0.0", "::1", "host", -1, 2**32])
def test_ipv4_rejects_non_addresses(bad: object):
    with pytest.raises(ValidationError, match="IPv4"):
        Wire(addr=bad, port=0, proto=0, mac="00:00:00:00:00:00", seq=0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Scalar(IPV4).encode(bad)


def test_ipv4_scalar_accepts_str_int_and_address():
    for v in ("192.0.2.7", 0xC0000207, IPv4Address("192.0.2.7")):
        assert Scalar(IPV4).encode(v) == b"\xc0\x00\x02\x07"
    assert Scalar(IPV4).decode(b"\xc0\x00\x02\x07") == IPv4Address("192.0.2.7")


@pytest.mark.parametrize("bad", ["aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "zz:bb:cc:dd:ee:ff", "", 5])
def test_mac_rejects_non_macs(bad: object):
    with pytest.raises(ValidationError, match="MAC"):
        Scalar(MAC).encode(bad)


@relaxed
@given(mac_strategy)
def test_mac_scalar_round_trip(mac: str):
    raw = Scalar(MAC).encode(mac.upper())
    assert raw == bytes.fromhex(mac.replace(":", "")) + b"\0\0"
    assert Scalar(MAC).decode(raw) == mac


# -- placement -----------------------------------------------------------------------------------------
def test_at_pins_offsets():
    assert [(f.name, f.offset) for f in Placed.LAYOUT] == [("a", 0), ("b", 8), ("c", 12)]
    # C: struct { u8 a; u8 gap[7]; u32 b; u16 c; } is 16 bytes (tail padding to the u32's alignment)
    assert Placed.SIZE == 16
    rec = Placed(a=1, b=0x11223344, c=0x5566)
    raw = rec.pack()
    assert raw == b"\x01" + b"\0" * 7 + b"\x44\x33\x22\x11" + b"\x66\x55" + b"\0\0"
    assert Placed.unpack(raw) == rec


def test_at_placed_fields_count_for_struct_alignment():
    # C: struct { u64 a; u8 b; } is 16 bytes: the u64 member makes the struct 8-aligned even when pinned with At.
    assert [(f.name, f.offset) for f in PlacedWide.LAYOUT] == [("a", 0), ("b", 8)]
    assert PlacedWide.SIZE == 16
    assert len(PlacedWide(a=1, b=2).pack()) == 16


def test_at_overlapping_previous_field_is_a_layout_error():
    with pytest.raises(LayoutError, match=r"Bad\.b: At\(2\) overlaps"):
        @dataclass(frozen=True, slots=True)
        class Bad(Record):
            a: Annotated[int, U32]
            b: Annotated[int, U16, At(2)]


def test_packed_has_no_padding():
    assert [(f.name, f.offset) for f in Packed.LAYOUT] == [("a", 0), ("b", 1), ("c", 5), ("d", 7)]
    assert Packed.SIZE == 15


@relaxed
@given(st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1))
def test_packed_round_trip_against_hand_bytes(a: int, b: int, c: int, d: int):
    rec = Packed(a=a, b=b, c=c, d=d)
    raw = rec.pack()
    assert raw == bytes([a]) + b.to_bytes(4, "little") + c.to_bytes(2, "big") + d.to_bytes(8, "little")
    assert Packed.unpack(raw) == rec


def test_explicit_size_pads_the_tail():
    assert Sized.SIZE == 16
    raw = Sized(a=7, tag=b"abc").pack()
    assert raw == b"\x07\0\0\0abc" + b"\0" * 9
    assert Sized.unpack(raw) == Sized(a=7, tag=b"abc")


def test_explicit_size_smaller_than_fields_is_a_layout_error():
    with pytest.raises(LayoutError, match="smaller than its fields"):
        @dataclass(frozen=True, slots=True)
        class TooSmall(Record, size=4):
            a: Annotated[int, U64]


def test_pack_into_and_iter_unpack():
    recs = [Packed(a=i, b=i * 1000, c=i * 7, d=2**64 - 1 - i) for i in range(5)]
    buf = bytearray(Packed.SIZE * len(recs))
    for i, r in enumerate(recs):
        r.pack_into(buf, i * Packed.SIZE)
    assert bytes(buf) == b"".join(r.pack() for r in recs)
    assert list(Packed.iter_unpack(buf)) == recs
    assert Packed.unpack(buf, 2 * Packed.SIZE) == recs[2]


def test_codec_for_and_encode_type_checks():
    assert codec_for(Ints) is Ints
    assert isinstance(codec_for(U32), Scalar)
    with pytest.raises(ValidationError, match="not a record class or scalar kind"):
        codec_for(int)
    with pytest.raises(ValidationError, match="expected Ints, got Packed"):
        Ints.encode(Packed(a=0, b=0, c=0, d=0))


# -- the generated fast paths ------------------------------------------------------------------------
def test_generated_codecs_agree_with_the_generic_methods():
    rec = Wire(addr="10.0.0.1", port=8080, proto=17, mac="aa:bb:cc:dd:ee:01", seq=5)  # type: ignore[arg-type]
    for r in (rec, Ints(1, 2, 3, 4, -5, -6), Packed(a=1, b=2, c=3, d=4), Sized(a=7, tag=b"abc")):
        cls = type(r)
        assert cls.pack is not Record.pack and cls.unpack is not Record.unpack
        raw = Record.pack(r)
        assert r.pack() == raw and cls.unpack(raw) == Record.unpack.__func__(cls, raw) == r  # type: ignore[attr-defined]
        buf = bytearray(cls.SIZE + 3)
        r.pack_into(buf, 3)
        assert bytes(buf[3:]) == raw and cls.decode(raw) == r


def test_constructor_fast_path_keeps_the_checks():
    import enum

    class Proto(enum.IntEnum):
        TCP = 6

    class Addr(IPv4Address):
        pass

    rec = Wire(addr=Addr("10.0.0.2"), port=Proto.TCP, proto=Proto.TCP, mac="AA:BB:CC:DD:EE:FF", seq=0)
    assert type(rec.addr) is Addr and rec.proto is Proto.TCP and rec.mac == "aa:bb:cc:dd:ee:ff"
    with pytest.raises(ValidationError, match=r"Wire\.proto: expected an integer, got True"):
        Wire(addr="10.0.0.2", port=1, proto=True, mac="00:00:00:00:00:00", seq=0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"Wire\.port: 65536 does not fit in be16"):
        Wire(addr="10.0.0.2", port=65536, proto=1, mac="00:00:00:00:00:00", seq=0)  # type: ignore[arg-type]


def test_a_record_keeps_a_method_it_writes_itself():
    @dataclass(frozen=True, slots=True)
    class Own(Record):
        a: Annotated[int, U32]

        def pack(self) -> bytes:
            return b"own!"

    assert Own(a=1).pack() == b"own!" and Own.unpack(b"\x01\0\0\0") == Own(a=1)
