"""Record layouts checked against the BTF of a real object (test_maps.o: struct test_key/test_value)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
from prog_records import HashKey as GoodKey
from prog_records import HashValue as GoodValue

from ciliumlite.bpf import U8, U16, U32, U64, At, BpfObject, LayoutError, Record

pytestmark = pytest.mark.bpf


@dataclass(frozen=True, slots=True)
class MisnamedKey(Record):
    a: Annotated[int, U32]
    bb: Annotated[int, U16]
    c: Annotated[int, U8]


@dataclass(frozen=True, slots=True)
class MisplacedKey(Record):
    a: Annotated[int, U32]
    b: Annotated[int, U16, At(5)]
    c: Annotated[int, U8]


@dataclass(frozen=True, slots=True)
class NarrowKey(Record):
    a: Annotated[int, U32]
    b: Annotated[int, U8]
    c: Annotated[int, U8, At(6)]


@dataclass(frozen=True, slots=True)
class WideValue(Record):
    x: Annotated[int, U64]
    y: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class ValueWithoutZ(Record):
    x: Annotated[int, U64]
    y: Annotated[int, U32]


@dataclass(frozen=True, slots=True)
class BigValue(Record):
    x: Annotated[int, U64]
    y: Annotated[int, U32]
    z: Annotated[int, U32]
    w: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class OneU64(Record):
    v: Annotated[int, U64]


@pytest.fixture
def obj(test_objects: Path) -> Iterator[BpfObject]:
    with BpfObject.load_file(test_objects / "test_maps.o") as o:
        yield o


def test_matching_records_are_accepted(obj: BpfObject):
    m = obj.map("test_hash", key=GoodKey, value=GoodValue)
    m[GoodKey(1, 2, 3)] = GoodValue(4, 5, 6)
    assert m[GoodKey(1, 2, 3)] == GoodValue(4, 5, 6)
    obj.map("test_array", key=U32, value=U64)


def test_wrong_field_name(obj: BpfObject):
    with pytest.raises(LayoutError) as info:
        obj.map("test_hash", key=MisnamedKey, value=GoodValue)
    msg = str(info.value)
    assert "map test_hash key" in msg
    assert "MisnamedKey.bb has no member of that name in struct test_key" in msg
    assert "C members: a, b, c, pad" in msg


def test_wrong_offset(obj: BpfObject):
    with pytest.raises(LayoutError, match=r"map test_hash key: MisplacedKey\.b is at offset 5, size 2; "
                                          r"C has offset 4, size 2"):
        obj.map("test_hash", key=MisplacedKey, value=GoodValue)


def test_wrong_field_size(obj: BpfObject):
    assert NarrowKey.SIZE == 8  # same total size as the C struct: only the field check can catch it
    with pytest.raises(LayoutError, match=r"NarrowKey\.b is at offset 4, size 1; C has offset 4, size 2"):
        obj.map("test_hash", key=NarrowKey, value=GoodValue)
    assert WideValue.SIZE == 16
    with pytest.raises(LayoutError, match=r"map test_hash value: WideValue\.y is at offset 8, size 8; "
                                          r"C has offset 8, size 4"):
        obj.map("test_hash", key=GoodKey, value=WideValue)


def test_missing_c_member(obj: BpfObject):
    assert ValueWithoutZ.SIZE == 16  # tail padding hides the gap: only the member check can catch it
    with pytest.raises(LayoutError, match=r"map test_hash value: struct test_value member 'z' \(offset 12\) "
                                          r"has no field in ValueWithoutZ"):
        obj.map("test_hash", key=GoodKey, value=ValueWithoutZ)


def test_wrong_total_size(obj: BpfObject):
    with pytest.raises(LayoutError, match=r"BigValue is 24 bytes but the C type test_value is 16 bytes"):
        obj.map("test_hash", key=GoodKey, value=BigValue)
    with pytest.raises(LayoutError, match=r"map test_array value: .* is 4 bytes but the C type .* is 8 bytes"):
        obj.map("test_array", key=U32, value=U32)


def test_record_for_a_scalar_c_type(obj: BpfObject):
    with pytest.raises(LayoutError, match=r"map test_array value: OneU64 is a record but the C type is a int"):
        obj.map("test_array", key=U32, value=OneU64)


def test_typed_view_is_checked_too(obj: BpfObject):
    raw = obj.map("test_hash")
    with pytest.raises(LayoutError, match=r"MisnamedKey\.bb"):
        raw.typed(MisnamedKey, GoodValue)
    assert raw.typed(GoodKey, GoodValue).get(GoodKey(0, 0, 0)) is None
