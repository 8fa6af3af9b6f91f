"""Map pinning on bpffs: pin, open_pinned (typed, layout-checked), unpin, lifetime past the object."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
from prog_records import HashKey, HashValue

from ciliumlite.bpf import U16, U32, U64, BpfError, BpfObject, LayoutError, Map, Record, ValidationError
from ciliumlite.bpf.inventory import map_ids

pytestmark = pytest.mark.bpf


@dataclass(frozen=True, slots=True)
class SwappedValue(Record):
    x: Annotated[int, U64]
    z: Annotated[int, U32]
    y: Annotated[int, U32]


@pytest.fixture
def obj(test_objects: Path) -> Iterator[BpfObject]:
    with BpfObject.load_file(test_objects / "test_maps.o") as o:
        yield o


def wait_gone(map_id: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while map_id in map_ids():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_pin_open_pinned_unpin(obj: BpfObject, bpffs_dir: str):
    path = os.path.join(bpffs_dir, "test_hash")
    m = obj.map("test_hash", key=HashKey, value=HashValue)
    m[HashKey(1, 2, 3)] = HashValue(4, 5, 6)
    m.pin(path)
    assert m.pin_path == path and os.path.exists(path)
    map_id = m.info.id

    with Map.open_pinned(path, key=HashKey, value=HashValue) as pinned:
        assert pinned.info.id == map_id and pinned.name == "test_hash"
        assert pinned.fd != m.fd
        assert pinned[HashKey(1, 2, 3)] == HashValue(4, 5, 6)
        pinned[HashKey(7, 8, 9)] = HashValue(10, 11, 12)
        assert m[HashKey(7, 8, 9)] == HashValue(10, 11, 12)
    with pytest.raises(BpfError) as info:
        _ = pinned.fd  # closed handle
    assert info.value.errno == errno.EBADF

    # the pin keeps the map (and its contents) alive after the object is closed
    obj.close()
    assert map_id in map_ids()
    with Map.open_pinned(path, key=HashKey, value=HashValue) as again:
        assert dict(again.items()) == {HashKey(1, 2, 3): HashValue(4, 5, 6), HashKey(7, 8, 9): HashValue(10, 11, 12)}
        again.unpin()
        assert not os.path.exists(path) and again.pin_path is None
    assert wait_gone(map_id), "map still exists after unpin and close"


def test_open_pinned_untyped(obj: BpfObject, bpffs_dir: str):
    path = os.path.join(bpffs_dir, "small")
    small = obj.map("test_small", key=U32, value=U64)
    small[3] = 30
    small.pin(path)
    try:
        with Map.open_pinned(path) as raw:
            assert dict(raw.items()) == {b"\x03\0\0\0": (30).to_bytes(8, "little")}
        with Map.open_pinned(path, key=U32, value=U64) as typed:
            assert typed[3] == 30
    finally:
        small.unpin()
    assert not os.path.exists(path)


def test_typed_open_pinned_checks_layout(obj: BpfObject, bpffs_dir: str):
    path = os.path.join(bpffs_dir, "test_hash")
    obj.map("test_hash").pin(path)
    fds_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(LayoutError, match=r"SwappedValue\.z is at offset 8, size 4; C has offset 12, size 4"):
        Map.open_pinned(path, key=HashKey, value=SwappedValue)
    with pytest.raises(LayoutError, match="is 4 bytes but the C type"):
        Map.open_pinned(path, key=U32, value=HashValue)
    assert len(os.listdir("/proc/self/fd")) == fds_before  # the failed opens closed their fds


def test_open_pinned_errors(obj: BpfObject, bpffs_dir: str):
    with pytest.raises(BpfError) as info:
        Map.open_pinned(os.path.join(bpffs_dir, "missing"))
    assert info.value.errno == errno.ENOENT and "open pinned map" in str(info.value)
    path = os.path.join(bpffs_dir, "dup")
    small = obj.map("test_small")
    small.pin(path)
    with pytest.raises(BpfError) as info:
        obj.map("test_array").pin(path)
    assert info.value.errno == errno.EEXIST
    small.unpin()
    small.unpin()  # idempotent
    assert not os.path.exists(path)


def test_map_size_mismatch_without_btf_is_a_validation_error(obj: BpfObject, bpffs_dir: str):
    # Map() without BTF falls back to comparing sizes.
    info = obj.map("test_small").info
    with pytest.raises(ValidationError, match="key type is 2 bytes, map has 4"):
        Map(obj.map("test_small").fd, info, key=U16, value=U64)
