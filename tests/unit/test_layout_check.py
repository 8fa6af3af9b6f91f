"""check_layout against hand-written BTF descriptions (the real-BTF cases are in tests/bpf/test_layout.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest

from ciliumlite.bpf import U8, U16, U32, U64, LayoutError, Record
from ciliumlite.bpf.btf import MemberInfo, StructInfo, TypeInfo
from ciliumlite.bpf.record import check_layout

pytestmark = pytest.mark.unit

_U8, _U16, _U32 = TypeInfo("int", "__u8", 1), TypeInfo("int", "__u16", 2), TypeInfo("int", "__u32", 4)
# struct key { __u32 a; __u16 b; __u8 c; __u8 pad; }
KEY = StructInfo("key", 8, "struct", (MemberInfo("a", 0, _U32), MemberInfo("b", 4, _U16),
                                      MemberInfo("c", 6, _U8), MemberInfo("pad", 7, _U8)))
# struct hdr { __u32 a; union { __u32 v4; __u8 v6[4]; }; }  (anonymous union member)
UNION = StructInfo("hdr", 8, "struct", (MemberInfo("a", 0, _U32),
                                        MemberInfo("addr", 4, TypeInfo("union", "", 4))))


@dataclass(frozen=True, slots=True)
class Key(Record):
    a: Annotated[int, U32]
    b: Annotated[int, U16]
    c: Annotated[int, U8]


@dataclass(frozen=True, slots=True)
class KeyNoC(Record, size=8):
    a: Annotated[int, U32]
    b: Annotated[int, U16]


@dataclass(frozen=True, slots=True)
class Hdr(Record):
    a: Annotated[int, U32]
    addr: Annotated[int, U32]


def test_matching_record_passes_and_pad_members_need_no_field():
    check_layout(Key, KEY, what="map m key")
    check_layout(Hdr, UNION, what="map m key")


def test_missing_member_is_named():
    with pytest.raises(LayoutError, match=r"map m key: struct key member 'c' \(offset 6\) has no field in KeyNoC"):
        check_layout(KeyNoC, KEY, what="map m key")


def test_scalar_size_mismatch():
    with pytest.raises(LayoutError, match="is 4 bytes but the C type key is 8 bytes"):
        check_layout(U32, KEY, what="map m key")
    check_layout(U64, KEY, what="map m key")  # a scalar of the right size is accepted as raw storage


def test_record_on_scalar_c_type():
    @dataclass(frozen=True, slots=True)
    class One(Record):
        v: Annotated[int, U32]

    with pytest.raises(LayoutError, match="is a record but the C type is a int"):
        check_layout(One, StructInfo("__u32", 4, "int", ()), what="map m value")
