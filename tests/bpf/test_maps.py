"""Map operations on real kernel maps: hash, array, LPM trie, per-CPU array, flags, full maps, batches."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any

import pytest
from prog_records import HashKey, HashValue

from ciliumlite.bpf import (
    ANY,
    EXIST,
    IPV4,
    NOEXIST,
    U32,
    U64,
    BpfError,
    BpfObject,
    Map,
    MapFullError,
    MapType,
    Record,
    ValidationError,
)

pytestmark = pytest.mark.bpf


@dataclass(frozen=True, slots=True)
class LpmKey(Record, c_name="test_lpm_key"):
    prefixlen: Annotated[int, U32]
    addr: Annotated[IPv4Address, IPV4]


def possible_cpus() -> int:
    """Count /sys/devices/system/cpu/possible ourselves (e.g. "0-1" or "0,2-5")."""
    with open("/sys/devices/system/cpu/possible") as f:
        total = 0
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            total += int(hi or lo) - int(lo) + 1
        return total


def key(i: int) -> HashKey:
    return HashKey(a=i, b=i & 0xFFFF, c=i & 0xFF)


def value(i: int) -> HashValue:
    return HashValue(x=i * 3 + 2**40, y=i, z=0xFFFFFFFF - i)


@pytest.fixture
def obj(test_objects: Path) -> Iterator[BpfObject]:
    with BpfObject.load_file(test_objects / "test_maps.o") as o:
        yield o


@pytest.fixture
def hmap(obj: BpfObject) -> Map[HashKey, HashValue]:
    return obj.map("test_hash", key=HashKey, value=HashValue)


# -- hash ----------------------------------------------------------------------------------------------
def test_map_info(obj: BpfObject, hmap: Map[HashKey, HashValue]):
    assert hmap.name == "test_hash" and hmap.type is MapType.HASH
    assert (hmap.info.key_size, hmap.info.value_size, hmap.max_entries) == (8, 16, 1024)
    assert hmap.fd >= 0 and hmap.info.id > 0 and hmap.info.btf_id > 0
    assert obj.map("test_lpm").type is MapType.LPM_TRIE
    assert obj.map("test_percpu").type is MapType.PERCPU_ARRAY
    assert obj.map("test_array").type is MapType.ARRAY


def test_hash_crud(hmap: Map[HashKey, HashValue]):
    assert len(hmap) == 0 and list(hmap.items()) == []
    assert hmap.get(key(1)) is None
    assert hmap.get(key(1), "dflt") == "dflt"
    assert key(1) not in hmap
    hmap.set(key(1), value(1))
    hmap[key(2)] = value(2)
    assert hmap[key(1)] == value(1) and hmap.get(key(2)) == value(2)
    assert key(1) in hmap and key(3) not in hmap
    assert len(hmap) == 2
    assert sorted(hmap.keys(), key=lambda k: k.a) == [key(1), key(2)]
    assert dict(hmap.items()) == {key(1): value(1), key(2): value(2)}
    assert sorted(hmap.values(), key=lambda v: v.y) == [value(1), value(2)]
    hmap[key(1)] = value(100)  # replace
    assert hmap[key(1)] == value(100) and len(hmap) == 2
    del hmap[key(1)]
    assert key(1) not in hmap
    with pytest.raises(KeyError):
        hmap.delete(key(1))
    with pytest.raises(KeyError):
        _ = hmap[key(1)]
    assert hmap.pop(key(2)) == value(2)
    assert len(hmap) == 0
    with pytest.raises(KeyError):
        hmap.pop(key(2))
    assert hmap.pop(key(2), None) is None


def test_hash_clear(hmap: Map[HashKey, HashValue]):
    for i in range(50):
        hmap[key(i)] = value(i)
    assert len(hmap) == 50
    hmap.clear()
    assert len(hmap) == 0 and list(hmap.keys()) == []


def test_hash_values_reach_the_kernel_as_c_bytes(obj: BpfObject, hmap: Map[HashKey, HashValue]):
    hmap[HashKey(a=0x01020304, b=0x0506, c=7)] = HashValue(x=1, y=2, z=3)
    raw = obj.map("test_hash")  # untyped view of the same kernel map
    assert dict(raw.items()) == {b"\x04\x03\x02\x01\x06\x05\x07\x00":
                                 (1).to_bytes(8, "little") + (2).to_bytes(4, "little") + (3).to_bytes(4, "little")}
    raw[b"\x01\0\0\0\x02\0\x03\0"] = bytes(range(16))
    assert hmap[HashKey(a=1, b=2, c=3)] == HashValue(x=int.from_bytes(bytes(range(8)), "little"),
                                                     y=int.from_bytes(bytes(range(8, 12)), "little"),
                                                     z=int.from_bytes(bytes(range(12, 16)), "little"))
    with pytest.raises(ValidationError, match="expected 8 bytes, got 4"):
        raw[b"\0" * 4] = bytes(16)
    with pytest.raises(ValidationError, match="expected HashKey"):
        hmap[HashValue(x=0, y=0, z=0)] = value(0)  # type: ignore[index]


def test_flag_noexist(hmap: Map[HashKey, HashValue]):
    hmap.set(key(1), value(1), NOEXIST)  # absent: created
    with pytest.raises(BpfError) as info:
        hmap.set(key(1), value(2), NOEXIST)
    assert info.value.errno == errno.EEXIST
    assert not isinstance(info.value, KeyError)
    assert "EEXIST" in str(info.value)
    assert hmap[key(1)] == value(1)  # unchanged


def test_flag_exist(hmap: Map[HashKey, HashValue]):
    with pytest.raises(KeyError):
        hmap.set(key(5), value(5), EXIST)
    assert key(5) not in hmap
    hmap.set(key(5), value(5), ANY)
    hmap.set(key(5), value(6), EXIST)  # present: replaced
    assert hmap[key(5)] == value(6)


def test_full_map_via_set(obj: BpfObject):
    small = obj.map("test_small", key=U32, value=U64)
    for i in range(4):
        small[i] = i * 10
    with pytest.raises(MapFullError) as info:
        small[4] = 40
    assert isinstance(info.value, BpfError)
    assert info.value.errno == errno.E2BIG
    assert "test_small" in str(info.value)
    assert len(small) == 4 and 4 not in small
    small[3] = 33  # replacing in a full map still works
    assert small[3] == 33


# -- array ---------------------------------------------------------------------------------------------
def test_array_ops(obj: BpfObject):
    arr = obj.map("test_array", key=U32, value=U64)
    assert len(arr) == 8
    assert dict(arr.items()) == dict.fromkeys(range(8), 0)
    arr[5] = 2**64 - 1
    arr.set(6, 42, EXIST)
    assert arr[5] == 2**64 - 1 and arr.get(6) == 42
    assert 7 in arr and 8 not in arr
    assert arr.get(8) is None
    assert dict(arr.items()) == {**dict.fromkeys(range(8), 0), 5: 2**64 - 1, 6: 42}
    with pytest.raises(BpfError) as info:
        arr.set(0, 1, NOEXIST)  # every array slot exists
    assert info.value.errno == errno.EEXIST
    with pytest.raises(BpfError) as info:
        arr.delete(5)  # array slots cannot be deleted
    assert info.value.errno == errno.EINVAL
    arr.clear()
    assert list(arr.values()) == [0] * 8
    with pytest.raises(ValidationError, match="does not fit in u64"):
        arr[1] = -1


def test_array_index_out_of_range_is_not_a_full_map(obj: BpfObject):
    arr = obj.map("test_array", key=U32, value=U64)
    with pytest.raises(ValidationError, match=r"index 8 is outside 0\.\.7") as info:
        arr[8] = 1
    assert not isinstance(info.value, MapFullError)
    pc = obj.map("test_percpu", key=U32, value=U64)
    with pytest.raises(ValidationError, match=r"outside 0\.\.3"):
        pc[4] = 1


# -- LPM trie ------------------------------------------------------------------------------------------
def test_lpm_trie(obj: BpfObject):
    lpm = obj.map("test_lpm", key=LpmKey, value=U32)
    net24 = LpmKey(prefixlen=24, addr="10.0.0.0")  # type: ignore[arg-type]
    host = LpmKey(prefixlen=32, addr="10.0.0.5")  # type: ignore[arg-type]
    lpm[net24] = 24
    lpm[host] = 32
    assert len(lpm) == 2
    assert lpm[net24] == 24 and lpm[host] == 32
    # longest-prefix match for lookups of /32s
    assert lpm[LpmKey(prefixlen=32, addr=IPv4Address("10.0.0.5"))] == 32
    assert lpm[LpmKey(prefixlen=32, addr=IPv4Address("10.0.0.77"))] == 24
    assert LpmKey(prefixlen=32, addr=IPv4Address("10.0.1.1")) not in lpm
    assert dict(lpm.items()) == {net24: 24, host: 32}
    assert set(lpm.keys()) == {net24, host}
    with pytest.raises(BpfError) as info:
        lpm.set(net24, 1, NOEXIST)
    assert info.value.errno == errno.EEXIST
    assert lpm.pop(host) == 32
    assert lpm[LpmKey(prefixlen=32, addr=IPv4Address("10.0.0.5"))] == 24
    with pytest.raises(KeyError):
        lpm.delete(host)
    lpm[LpmKey(prefixlen=8, addr=IPv4Address("192.0.0.0"))] = 8
    lpm.clear()
    assert len(lpm) == 0 and LpmKey(prefixlen=32, addr=IPv4Address("10.0.0.5")) not in lpm


# -- per-CPU -------------------------------------------------------------------------------------------
def test_percpu_array(obj: BpfObject):
    ncpu = possible_cpus()
    pc = obj.map("test_percpu", key=U32, value=U64)
    assert len(pc) == 4
    assert pc[0] == [0] * ncpu
    pc[1] = 9  # one value goes to every CPU
    assert pc[1] == [9] * ncpu
    per = [1000 + c for c in range(ncpu)]
    pc[2] = per
    assert pc[2] == per
    assert dict(pc.items()) == {0: [0] * ncpu, 1: [9] * ncpu, 2: per, 3: [0] * ncpu}
    with pytest.raises(ValidationError, match=f"needs {ncpu} entries"):
        pc[3] = [1] * (ncpu + 1)
    pc.clear()
    assert list(pc.values()) == [[0] * ncpu] * 4


def test_percpu_update_batch(obj: BpfObject):
    ncpu = possible_cpus()
    pc = obj.map("test_percpu", key=U32, value=U64)
    rows = [[k * 100 + c for c in range(ncpu)] for k in range(4)]
    assert pc.update_batch([0, 1, 2, 3], rows) == 4
    assert [pc[k] for k in range(4)] == rows
    assert pc.lookup_batch() == list(enumerate(rows))


# -- batches -------------------------------------------------------------------------------------------
def test_batch_with_records(hmap: Map[HashKey, HashValue]):
    keys = [key(i) for i in range(1000)]
    values = [value(i) for i in range(1000)]
    assert hmap.update_batch(keys, values) == 1000
    assert len(hmap) == 1000
    got = hmap.lookup_batch()
    assert len(got) == 1000
    assert dict(got) == dict(zip(keys, values, strict=True))
    assert hmap[key(999)] == value(999)
    assert hmap.delete_batch(keys[:600]) == 600
    assert len(hmap) == 400
    assert dict(hmap.items()) == dict(zip(keys[600:], values[600:], strict=True))
    assert hmap.update_many((key(i), value(i + 1)) for i in range(10)) == 10
    assert hmap[key(3)] == value(4)
    assert len(hmap) == 410


def test_batch_with_packed_buffers(hmap: Map[HashKey, HashValue]):
    n = 1000
    kbuf = bytearray(HashKey.SIZE * n)
    vbuf = bytearray(HashValue.SIZE * n)
    for i in range(n):
        key(i).pack_into(kbuf, i * HashKey.SIZE)
        value(i).pack_into(vbuf, i * HashValue.SIZE)
    assert hmap.update_batch(bytes(kbuf), memoryview(vbuf)) == n
    rk, rv, count = hmap.lookup_batch_raw()
    assert count == n and len(rk) == n * 8 and len(rv) == n * 16
    pairs = {rk[i * 8:(i + 1) * 8]: rv[i * 16:(i + 1) * 16] for i in range(n)}
    expected = {bytes(kbuf[i * 8:(i + 1) * 8]): bytes(vbuf[i * 16:(i + 1) * 16]) for i in range(n)}
    assert pairs == expected
    assert dict(zip(HashKey.iter_unpack(rk), HashValue.iter_unpack(rv), strict=True))[key(17)] == value(17)
    assert hmap.delete_batch(kbuf[: 250 * 8]) == 250
    assert len(hmap) == n - 250 and key(0) not in hmap and key(250) in hmap


def test_batch_input_errors(hmap: Map[HashKey, HashValue]):
    with pytest.raises(ValidationError, match="not a multiple of 8"):
        hmap.update_batch(b"\0" * 12, b"\0" * 16)
    with pytest.raises(ValidationError, match="2 keys but 1 values"):
        hmap.update_batch([key(1), key(2)], [value(1)])
    assert hmap.update_batch([], []) == 0
    assert hmap.delete_batch([]) == 0
    assert len(hmap) == 0


@pytest.mark.parametrize("flags", [NOEXIST, EXIST], ids=["NOEXIST", "EXIST"])
def test_batch_update_flags_are_refused(hmap: Map[HashKey, HashValue], flags: int):
    # The kernel accepts only BPF_F_LOCK in a batch's elem_flags; NOEXIST/EXIST are refused up front.
    hmap[key(2)] = value(2)
    with pytest.raises(ValidationError, match="NOEXIST/EXIST"):
        hmap.update_batch([key(1), key(2), key(3)], [value(1), value(20), value(3)], flags)
    assert dict(hmap.items()) == {key(2): value(2)}


def test_delete_batch_of_absent_key(hmap: Map[HashKey, HashValue]):
    hmap.update_batch([key(1), key(2)], [value(1), value(2)])
    with pytest.raises(BpfError) as info:
        hmap.delete_batch([key(1), key(9), key(2)])
    assert info.value.errno == errno.ENOENT
    assert "1 of 3 deleted" in str(info.value)


def test_full_map_via_update_batch(obj: BpfObject):
    small = obj.map("test_small", key=U32, value=U64)
    small[100] = 1
    with pytest.raises(MapFullError) as info:
        small.update_batch(list(range(6)), [i * 2 for i in range(6)])
    assert info.value.errno == errno.E2BIG
    assert "test_small: 3 of 6 entries applied" in str(info.value)
    assert dict(small.items()) == {100: 1, 0: 0, 1: 2, 2: 4}


def test_items_on_array_use_batches_and_agree_with_get(obj: BpfObject):
    arr = obj.map("test_array", key=U32, value=U64)
    assert arr.update_batch(list(range(8)), [i * i for i in range(8)]) == 8
    assert arr.lookup_batch() == [(i, i * i) for i in range(8)]
    assert [arr[i] for i in range(8)] == [i * i for i in range(8)]


def test_map_handles_share_one_kernel_map(obj: BpfObject):
    a: Map[Any, Any] = obj.map("test_small", key=U32, value=U64)
    b: Map[Any, Any] = obj.maps["test_small"].typed(U32, U64)
    a[1] = 11
    assert b[1] == 11
    assert a.info.id == b.info.id


def test_handles_of_a_closed_object_refuse_to_work(test_objects: Path):
    obj = BpfObject.load_file(test_objects / "test_maps.o")
    m = obj.map("test_small", key=U32, value=U64)
    view = obj.map("test_small").typed(U32, U64)
    m[1] = 1
    obj.close()
    # the fd numbers may be reused by anything now: the handles must not touch them
    with open("/dev/null") as reuse:
        assert reuse.fileno() >= 0
        for handle in (m, view):
            with pytest.raises(BpfError) as info:
                handle[1] = 2
            assert info.value.errno == errno.EBADF
            with pytest.raises(BpfError):
                _ = handle.fd
