"""Pieces shared by the SDK suites: the test object's records and a pre-load map resize."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from ciliumlite.bpf import U8, U16, U32, U64, BpfObject, Record, ValidationError
from ciliumlite.bpf._ffi import lib


@dataclass(frozen=True, slots=True)
class TestKey(Record, c_name="test_key"):
    """struct test_key {u32 a; u16 b; u8 c; u8 pad;} (tests/bpf/progs/test_maps.c), 8 bytes."""

    a: Annotated[int, U32]
    b: Annotated[int, U16]
    c: Annotated[int, U8]


@dataclass(frozen=True, slots=True)
class TestValue(Record, c_name="test_value"):
    """struct test_value {u64 x; u32 y; u32 z;}, 16 bytes."""

    x: Annotated[int, U64]
    y: Annotated[int, U32]
    z: Annotated[int, U32]


def resize(obj: BpfObject, map_name: str, max_entries: int) -> None:
    """Set ``max_entries`` of a map before ``load()``.

    Uses ``BpfObject.resize`` when the SDK has it; otherwise libbpf's ``bpf_map__set_max_entries``
    on the object's map handle (the same call such a method would make).
    """
    method = getattr(obj, "resize", None)
    if callable(method):
        method(map_name, max_entries)
        return
    if obj.loaded:
        raise ValidationError(f"{obj.name}: resize {map_name!r} before load()")
    handle = obj._map_handles.get(map_name)
    if handle is None:
        raise ValidationError(f"{obj.name}: no map {map_name!r}")
    rc = int(lib.bpf_map__set_max_entries(handle, max_entries))
    if rc < 0:
        raise ValidationError(f"{obj.name}: cannot resize {map_name} to {max_entries} (errno {-rc})")
