"""The numpy layer of maps without a kernel: dtypes of kinds, records and hand-written BTF, the batch
buffers (per-CPU padding, growth, a hash bucket that does not fit), address and MAC text."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address
from typing import Any

import numpy as np
import pytest

from ciliumlite.bpf import BpfError, ValidationError
from ciliumlite.bpf import record as kinds
from ciliumlite.bpf.arrays import MapArrays, btf_dtype, format_ipv4, format_mac, kind_dtype, record_dtype
from ciliumlite.bpf.btf import MemberInfo, StructInfo, TypeInfo
from ciliumlite.bpf.mapinfo import RawBytes
from ciliumlite.bpf.record import Scalar
from ciliumlite.datapath.records import EndpointInfo, Lb4Backend

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("kind", "want"), [
    ("U8", "|u1"), ("U16", "<u2"), ("U32", "<u4"), ("U64", "<u8"), ("S32", "<i4"), ("S64", "<i8"),
    ("BE16", ">u2"), ("BE32", ">u4"), ("IPV4", ">u4"), ("MAC", "<u8")])
def test_kind_dtypes(kind: str, want: str):
    k = getattr(kinds, kind)
    assert kind_dtype(k).str == want and kind_dtype(k).itemsize == k.size
    assert kind_dtype(kinds.Bytes(3)) == np.dtype(("u1", (3,)))


def test_record_dtype_reads_the_bytes_pack_writes():
    dt = record_dtype(Lb4Backend)
    assert dt.names == ("address", "port", "proto", "flags", "cluster_id", "zone") and dt.itemsize == 12
    assert [dt.fields[n][1] for n in dt.names] == [f.offset for f in Lb4Backend.LAYOUT]
    be = Lb4Backend(address=IPv4Address("10.1.2.3"), port=8080, proto=17, cluster_id=0x0102)
    row = np.frombuffer(be.pack(), dt)[0]
    assert (int(row["address"]), int(row["port"]), int(row["cluster_id"])) == (int(be.address), 8080, 0x0102)
    assert format_ipv4(row["address"])[0] == "10.1.2.3"
    info = EndpointInfo(ifindex=3, lxc_id=7, flags=1, mac="aa:bb:cc:dd:ee:01", node_mac="02:00:00:00:00:09", sec_id=5)
    rows = np.frombuffer(info.pack(), record_dtype(EndpointInfo))
    assert format_mac(rows["mac"]).tolist() == ["aa:bb:cc:dd:ee:01"] and int(rows["lxc_id"][0]) == 7
    arr = np.zeros(1, record_dtype(EndpointInfo))
    arr[0] = rows[0]
    assert EndpointInfo.unpack(arr.tobytes()) == info


_U8, _U16, _U32 = TypeInfo("int", "__u8", 1), TypeInfo("int", "__u16", 2), TypeInfo("int", "__u32", 4)


def test_btf_dtype_of_arrays_unions_bitfields_and_padding():
    be32 = TypeInfo("int", "unsigned int", 4, big_endian=True)
    info = StructInfo("s", 32, "struct", (
        MemberInfo("ip", 0, be32),
        MemberInfo("ok", 4, TypeInfo("int", "_Bool", 1, is_bool=True)),
        MemberInfo("pad1", 5, _U8),
        MemberInfo("delta", 6, TypeInfo("int", "short", 2, signed=True)),
        MemberInfo("words", 8, TypeInfo("array", "", 8, elem_size=2, elem=_U16)),
        MemberInfo("grid", 16, TypeInfo("array", "", 4, elem_size=2,
                                        elem=TypeInfo("array", "", 2, elem_size=1, elem=_U8))),
        MemberInfo("u", 20, TypeInfo("union", "", 4)),
        MemberInfo("lo", 24, _U32, bit_size=4), MemberInfo("hi", 24, _U32, bit_size=28),
        MemberInfo("", 28, TypeInfo("struct", "", 4)),
    ))
    dt = btf_dtype(info)
    assert dt.names == ("ip", "ok", "delta", "words", "grid", "u") and dt.itemsize == 32
    fmt = {n: (dt.fields[n][0], dt.fields[n][1]) for n in dt.names}
    assert fmt["ip"] == (np.dtype(">u4"), 0) and fmt["ok"] == (np.dtype("?"), 4)
    assert fmt["delta"] == (np.dtype("<i2"), 6)
    assert fmt["words"] == (np.dtype(("<u2", (4,))), 8) and fmt["grid"] == (np.dtype(("u1", (2, 2))), 16)
    assert fmt["u"] == (np.dtype("V4"), 20)
    assert btf_dtype(StructInfo("__be16", 2, "int", (), scalar=TypeInfo("int", "unsigned short", 2, big_endian=True))) \
        == np.dtype(">u2")
    assert btf_dtype(StructInfo("x", 4, "int", ())) == np.dtype("<u4")


def arrays(ncpus: int = 0) -> MapArrays:
    return MapArrays("m", Scalar(kinds.U32), Scalar(kinds.U32), None, None, 4, 4, ncpus=ncpus, vstride=8 if ncpus else 0)


def test_percpu_values_are_laid_out_8_bytes_apart():
    a = arrays(ncpus=2)
    buf, n = a.batch_input(np.array([[1, 2], [3, 4]], np.uint32), "values")
    assert n == 2 and buf.tobytes() == b"".join(v.to_bytes(4, "little") + bytes(4) for v in (1, 2, 3, 4))
    buf, n = a.batch_input(np.array([9, 8], np.uint32), "values")   # one value: every CPU
    assert n == 2 and a.views(np.zeros(8, np.uint8), buf, 2)[1].tolist() == [[9, 9], [8, 8]]
    with pytest.raises(ValidationError, match=r"need shape \(n, 2\) or \(n,\), got \(2, 3\)"):
        a.batch_input(np.zeros((2, 3), np.uint32), "values")


def fake_reader(entries: int, bucket: int = 1) -> tuple[Any, list[int]]:
    """A kernel walk of ``entries`` u32 keys (values = key * 10), refusing requests below ``bucket``."""
    asked: list[int] = []
    pos = 0

    def read(kbuf: Any, vbuf: Any, n: int) -> tuple[int, bool]:
        nonlocal pos
        asked.append(n)
        if n < bucket and pos < entries:
            raise BpfError("lookup map (batch)", errno.ENOSPC, target="m")
        got = min(n, entries - pos)
        keys = np.arange(pos, pos + got, dtype=np.uint32)
        np.frombuffer(kbuf, np.uint8)[:got * 4] = keys.view(np.uint8)
        np.frombuffer(vbuf, np.uint8)[:got * 4] = (keys * 10).view(np.uint8)
        pos += got
        return got, pos == entries
    return read, asked


def test_collect_grows_past_the_expected_size_and_retries_a_bucket_that_did_not_fit():
    read, asked = fake_reader(25, bucket=4)
    keys, values = arrays().collect(read, capacity=10, chunk=8)
    assert keys.tolist() == list(range(25)) and values.tolist() == [k * 10 for k in range(25)]
    assert asked[:3] == [8, 2, 8]   # 2 left of 10 is below a bucket: grow and ask again
    read, _ = fake_reader(3, bucket=4)
    with pytest.raises(BpfError):
        arrays().collect(read, capacity=10, chunk=2)   # a whole chunk refused: the caller's chunk is too small


def test_chunks_and_empty_walks():
    a = arrays()
    read, _ = fake_reader(0)
    keys, values = a.collect(read, capacity=16, chunk=4)
    assert keys.shape == values.shape == (0,) and keys.dtype == np.dtype("<u4")
    pairs = iter([(i.to_bytes(4, "little"), (i * 2).to_bytes(4, "little")) for i in range(5)])
    assert [k.tolist() for k, _ in a.chunks(pairs, 2)] == [[0, 1], [2, 3], [4]]
    raw = MapArrays("r", RawBytes(3), RawBytes(2), None, None, 3, 2)
    assert raw.key_dtype == np.dtype("V3") and raw.value_dtype == np.dtype("V2")


def test_format_ipv4_and_mac():
    addrs = [int(IPv4Address(a)) for a in ("0.0.0.0", "10.244.1.254", "255.255.255.255", "192.0.2.1")]
    assert format_ipv4(np.array(addrs, ">u4")).tolist() == ["0.0.0.0", "10.244.1.254", "255.255.255.255", "192.0.2.1"]
    assert format_ipv4(np.array(addrs, "<u4")).tolist() == format_ipv4(np.array(addrs, ">u4")).tolist()
    mac = int.from_bytes(bytes.fromhex("0a1b2c3d4e5f") + b"\0\0", "little")
    assert format_mac(np.array([mac, 0], "<u8")).tolist() == ["0a:1b:2c:3d:4e:5f", "00:00:00:00:00:00"]
