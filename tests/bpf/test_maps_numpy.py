"""Maps at numpy speed on real kernel maps: dtypes against BTF, batches of structured arrays, to_numpy,
iter_batches, per-CPU shapes, refusals that leave the map alone, DataFrames with decoded columns."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prog_records import HashKey, HashValue

from ciliumlite.bpf import U32, U64, BpfError, BpfObject, Map, MapType, NotSupportedError, ValidationError
from ciliumlite.bpf.arrays import btf_dtype, record_dtype
from ciliumlite.datapath import maps as dpmaps
from ciliumlite.datapath.loader import OBJECTS, object_path
from ciliumlite.datapath.records import (
    Cidr4Key,
    Cidr4Value,
    CtEntry,
    EndpointInfo,
    EndpointKey,
    Ipv4CtTuple,
    Lb4Key,
    Lb4Service,
    MetricsKey,
    MetricsValue,
)

pytestmark = pytest.mark.bpf

N = 10_000
BPF_F_NO_PREALLOC = 1


def possible_cpus() -> int:
    with open("/sys/devices/system/cpu/possible") as f:
        return sum(int(hi or lo) - int(lo) + 1 for lo, _, hi in (p.partition("-") for p in f.read().strip().split(",")))


def pandas() -> Any:
    return pytest.importorskip("pandas", reason="pandas is the optional extra: pip install 'ciliumlite[pandas]'")


@pytest.fixture
def ct() -> Iterator[Map[Ipv4CtTuple, CtEntry]]:
    with Map.create(MapType.HASH, "np_ct", Ipv4CtTuple, CtEntry, N) as m:
        yield m


def ct_arrays(m: Map[Any, Any], n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """n CT entries: 300 clients to one ClusterIP, distinct source ports."""
    keys, values = np.zeros(n, m.key_dtype), np.zeros(n, m.value_dtype)
    keys["daddr"] = int(IPv4Address("10.96.0.10"))
    keys["saddr"] = int(IPv4Address("10.244.1.0")) + np.arange(n) % 300
    keys["dport"], keys["sport"], keys["nexthdr"], keys["flags"] = 80, 1024 + np.arange(n), 6, 1
    values["backend_id"], values["packets"], values["bytes"] = np.arange(n) % 7, np.arange(n), np.arange(n) * 60
    values["flags"], values["rev_nat_index"], values["src_sec_id"] = 0x10, 3, 256 + np.arange(n) % 5
    return keys, values


def by_sport(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys["sport"], kind="stable")
    return keys[order], values[order]


# -- dtypes --------------------------------------------------------------------------------------------
def datapath_layouts() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in OBJECTS:
        obj = BpfObject.open(object_path(name))   # BTF only: nothing is loaded
        try:
            out.update((m, obj.map_layout(m)) for m in obj.map_names if m not in out)
        finally:
            obj.close()
    return out


SPECS = [s for s in vars(dpmaps).values() if isinstance(s, dpmaps.MapSpec)]


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_record_dtypes_have_the_btf_layout_of_every_datapath_map(spec: dpmaps.MapSpec[Any, Any]):
    layout = datapath_layouts()[spec.name]
    for rec, info, size in ((spec.key, layout.key, layout.key_size), (spec.value, layout.value, layout.value_size)):
        if not (isinstance(rec, type) and info is not None and info.members):
            continue
        dt, c = record_dtype(rec), btf_dtype(info)
        assert dt.itemsize == c.itemsize == size == rec.SIZE
        assert dt.names == c.names == tuple(f.name for f in rec.LAYOUT)
        members = {m.name: m for m in info.members}
        for name in dt.names:
            assert dt.fields[name][1] == c.fields[name][1] == members[name].offset
            assert dt.fields[name][0].itemsize == members[name].type.size


def test_btf_byte_order_typedefs_match_the_records():
    layouts = datapath_layouts()
    for mapname, krec, vrec in (("cilium_ct4_global", Ipv4CtTuple, CtEntry), ("cilium_lb4_services_v2", Lb4Key, Lb4Service),
                                ("cilium_lxc", EndpointKey, EndpointInfo), ("cilium_metrics", MetricsKey, MetricsValue)):
        layout = layouts[mapname]
        assert btf_dtype(layout.key) == record_dtype(krec), mapname
        assert btf_dtype(layout.value) == record_dtype(vrec), mapname
    ct = record_dtype(Ipv4CtTuple)
    assert [(n, ct.fields[n][0].str, ct.fields[n][1]) for n in ct.names] == [
        ("daddr", ">u4", 0), ("saddr", ">u4", 4), ("dport", ">u2", 8), ("sport", ">u2", 10),
        ("nexthdr", "|u1", 12), ("flags", "|u1", 13)]
    assert ct.itemsize == 14
    svc = record_dtype(Lb4Service)
    assert svc.fields["rev_nat_index"][0].str == ">u2" and svc.fields["qcount"][1] == 10 and svc.itemsize == 12
    assert btf_dtype(layouts["cilium_lb4_reverse_nat"].key) == np.dtype(">u2")   # a __be16 scalar key


def test_map_dtypes_follow_records_scalars_btf_or_raw_bytes(test_objects: Path):
    with BpfObject.load_file(test_objects / "test_maps.o") as obj:
        raw = obj.map("test_hash")   # untyped: the C members of the BTF (padding left out)
        assert raw.key_dtype.names == ("a", "b", "c") and raw.key_dtype.itemsize == 8
        assert raw.key_dtype == record_dtype(HashKey) and raw.value_dtype == record_dtype(HashValue)
        typed = obj.map("test_hash", key=HashKey, value=HashValue)
        assert typed.key_dtype == raw.key_dtype
        arr = obj.map("test_array", key=U32, value=U64)
        assert (arr.key_dtype, arr.value_dtype) == (np.dtype("<u4"), np.dtype("<u8"))
        typed[HashKey(a=7, b=8, c=9)] = HashValue(x=1, y=2, z=3)
        keys, values = raw.to_numpy()
        assert keys.tolist() == [(7, 8, 9)] and values.tolist() == [(1, 2, 3)]
    with Map.create(MapType.HASH, "np_raw", HashKey, HashValue, 4) as m:
        assert m.typed(None, None).key_dtype == np.dtype("V8")   # no BTF, no record: raw bytes


# -- batches with arrays -------------------------------------------------------------------------------
def test_round_trip_of_10k_entries_through_arrays(ct: Map[Ipv4CtTuple, CtEntry]):
    keys, values = ct_arrays(ct)
    assert ct.update_batch(keys, values) == N
    assert len(ct) == N
    for got in (ct.to_numpy(), ct.lookup_batch_numpy(), ct.lookup_batch_numpy(chunk=1000)):
        gk, gv = by_sport(*got)
        assert gk.dtype == ct.key_dtype and gv.dtype == ct.value_dtype
        assert np.array_equal(gk, keys) and np.array_equal(gv, values)
    # The record layer reads the same entries: byte order and addresses agree with the arrays.
    rec = ct[Ipv4CtTuple(IPv4Address("10.96.0.10"), IPv4Address("10.244.1.17"), 80, 1024 + 17, 6, 1)]
    assert rec == CtEntry(backend_id=17 % 7, packets=17, bytes=17 * 60, lifetime=0, flags=0x10, rev_nat_index=3,
                          ifindex=0, tx_flags_seen=0, rx_flags_seen=0, src_sec_id=256 + 17 % 5)
    records = dict(ct.lookup_batch())
    assert len(records) == N and records[Ipv4CtTuple.unpack(keys[5].tobytes())] == CtEntry.unpack(values[5].tobytes())


def test_records_written_are_read_as_arrays(ct: Map[Ipv4CtTuple, CtEntry]):
    tup = Ipv4CtTuple(IPv4Address("192.0.2.1"), IPv4Address("198.51.100.2"), 443, 50000, 17, 0)
    ct[tup] = CtEntry(backend_id=1, packets=2, bytes=3, lifetime=4, flags=5, rev_nat_index=0x1234, ifindex=7,
                      tx_flags_seen=8, rx_flags_seen=9, src_sec_id=10)
    keys, values = ct.to_numpy()
    assert keys.tolist() == [(int(IPv4Address("192.0.2.1")), int(IPv4Address("198.51.100.2")), 443, 50000, 17, 0)]
    assert values["rev_nat_index"][0] == 0x1234 and values["src_sec_id"][0] == 10


def test_delete_batch_of_an_array(ct: Map[Ipv4CtTuple, CtEntry]):
    keys, values = ct_arrays(ct)
    ct.update_batch(keys, values)
    assert ct.delete_batch(keys[::2]) == N // 2
    gk, gv = by_sport(*ct.to_numpy())
    assert np.array_equal(gk, keys[1::2]) and np.array_equal(gv, values[1::2])
    assert ct.delete_batch(np.ascontiguousarray(keys[1::2][::-1])) == N // 2
    assert len(ct) == 0


def test_padding_numpy_left_undefined_does_not_reach_the_kernel():
    with Map.create(MapType.HASH, "np_pad", HashKey, HashValue, 1000) as m:
        keys = np.zeros(1000, m.key_dtype)   # struct test_key: byte 7 is padding
        keys["a"], keys["b"] = np.arange(1000), 5
        values = np.zeros(1000, m.value_dtype)
        values["x"] = np.arange(1000) * 2
        np.frombuffer(memoryview(keys).cast("B"), np.uint8).reshape(1000, 8)[:, 7] = 0xFF   # as .copy() may leave it
        assert m.update_batch(keys, values) == 1000
        assert m[HashKey(a=7, b=5, c=0)] == HashValue(x=14, y=0, z=0)   # records write zero padding
        assert m.delete_batch(keys[::-1]) == 1000 and len(m) == 0


def test_raw_buffers_of_whole_entries_are_taken(ct: Map[Ipv4CtTuple, CtEntry]):
    keys, values = ct_arrays(ct, 100)
    as_bytes = np.frombuffer(keys.tobytes(), np.uint8).reshape(100, 14)   # uint8, a row per key
    as_void = values.view(np.dtype("V56"))
    assert ct.update_batch(as_bytes, as_void) == 100
    assert np.array_equal(by_sport(*ct.to_numpy())[1], values)
    assert ct.delete_batch(np.frombuffer(keys[:10].tobytes(), np.uint8)) == 10 and len(ct) == 90


def test_iter_batches_walks_the_map_in_chunks(ct: Map[Ipv4CtTuple, CtEntry]):
    keys, values = ct_arrays(ct)
    ct.update_batch(keys, values)
    chunks = list(ct.iter_batches(chunk=1500))
    assert len(chunks) >= N // 1500 and all(0 < len(k) == len(v) <= 1500 for k, v in chunks)
    gk, gv = by_sport(np.concatenate([k for k, _ in chunks]), np.concatenate([v for _, v in chunks]))
    assert np.array_equal(gk, keys) and np.array_equal(gv, values)
    with pytest.raises(ValidationError, match="chunk must be at least 1"):
        next(ct.iter_batches(chunk=0))


def test_array_maps_dump_every_slot():
    with Map.create(MapType.ARRAY, "np_arr", U32, U64, 64) as m:
        m.update_batch(np.arange(10, dtype=np.uint32), np.arange(10, dtype=np.uint64) * 3)
        keys, values = m.to_numpy()
        assert keys.tolist() == list(range(64)) and values[:10].tolist() == [i * 3 for i in range(10)]
        assert not values[10:].any()


def test_maps_without_batch_lookups_are_walked(monkeypatch: pytest.MonkeyPatch):
    with Map.create(MapType.LPM_TRIE, "np_lpm", Cidr4Key, Cidr4Value, 64, flags=BPF_F_NO_PREALLOC) as m:
        for i in range(20):
            m[Cidr4Key(prefixlen=24, addr=IPv4Address(f"10.{i}.0.0"))] = Cidr4Value(flags=i)
        expected = sorted((int(IPv4Address(f"10.{i}.0.0")), i) for i in range(20))
        walked = m.to_numpy()

        def no_batches(self: Map[Any, Any]) -> Any:   # a kernel whose LPM tries have no batch lookups
            def read(kbuf: Any, vbuf: Any, n: int) -> tuple[int, bool]:
                raise BpfError("lookup map (batch)", errno.EOPNOTSUPP, target=self.name)
            return read

        monkeypatch.setattr(Map, "_batch_reader", no_batches)
        with pytest.raises(BpfError):
            m.lookup_batch_numpy()
        for keys, values in (walked, m.to_numpy()):
            assert sorted(zip(keys["addr"].tolist(), values["flags"].tolist(), strict=True)) == expected
        chunks = list(m.iter_batches(chunk=6))
        assert [len(k) for k, _ in chunks] == [6, 6, 6, 2]
        assert sorted(int(a) for k, _ in chunks for a in k["addr"]) == [a for a, _ in expected]


# -- per-CPU -------------------------------------------------------------------------------------------
def test_percpu_values_have_a_cpu_axis():
    ncpu = possible_cpus()
    # u32 values: the kernel keeps each CPU's value 8 bytes apart, the arrays do not show the padding.
    with Map.create(MapType.PERCPU_HASH, "np_pc", U32, U32, 100) as m:
        assert m.value_dtype == np.dtype("<u4")
        keys = np.arange(10, dtype=np.uint32)
        per = (keys[:, None] * 100 + np.arange(ncpu)).astype(np.uint32)
        assert m.update_batch(keys, per) == 10
        assert m[3] == [300 + c for c in range(ncpu)]
        gk, gv = m.to_numpy()
        assert gv.shape == (10, ncpu)
        order = np.argsort(gk)
        assert np.array_equal(gk[order], keys) and np.array_equal(gv[order], per)
        m.update_batch(keys[:2], np.array([7, 8], np.uint32))   # (n,): the same value on every CPU
        assert m[0] == [7] * ncpu and m[1] == [8] * ncpu
        with pytest.raises(ValidationError, match=rf"per-CPU values need shape \(n, {ncpu}\)"):
            m.update_batch(keys, np.zeros((10, ncpu + 1), np.uint32))
        empty_k, empty_v = Map.create(MapType.PERCPU_HASH, "np_pc0", U32, U32, 4).to_numpy()
        assert empty_k.shape == (0,) and empty_v.shape == (0, ncpu)
    with Map.create(MapType.PERCPU_HASH, "np_pcm", MetricsKey, MetricsValue, 100) as m:
        keys = np.zeros(3, m.key_dtype)
        keys["reason"], keys["line"] = [1, 2, 3], 100
        values = np.zeros((3, ncpu), m.value_dtype)
        values["count"] = np.arange(3)[:, None] + np.arange(ncpu)
        m.update_batch(keys, values)
        assert m[MetricsKey(reason=2, dir=0, line=100, file=0)] == [MetricsValue(count=1 + c, bytes=0) for c in range(ncpu)]
        gk, gv = m.to_numpy()
        assert np.array_equal(gv[np.argsort(gk["reason"])], values)


def test_percpu_dataframe_has_a_row_per_cpu():
    pd = pandas()
    ncpu = possible_cpus()
    with Map.create(MapType.PERCPU_HASH, "np_pcdf", MetricsKey, MetricsValue, 10) as m:
        m[MetricsKey(reason=5, dir=1, line=7, file=2)] = [MetricsValue(count=c + 1, bytes=10 * c) for c in range(ncpu)]
        df = m.to_pandas()
        assert list(df.columns) == ["reason", "dir", "line", "file", "cpu", "count", "bytes"]
        assert df["cpu"].tolist() == list(range(ncpu)) and df["count"].tolist() == [c + 1 for c in range(ncpu)]
        assert df.groupby(["reason", "line"])["count"].sum().tolist() == [sum(range(1, ncpu + 1))]
        assert isinstance(df, pd.DataFrame)


# -- refusals ------------------------------------------------------------------------------------------
def test_wrong_arrays_are_refused_and_the_map_is_unchanged(ct: Map[Ipv4CtTuple, CtEntry]):
    keys, values = ct_arrays(ct, 100)
    ct.update_batch(keys[:50], values[:50])
    before = by_sport(*ct.to_numpy())
    host_order = np.zeros(50, ct.key_dtype.newbyteorder("<"))   # same fields, ports in host order
    with pytest.raises(ValidationError, match=r"keys array has dtype .*field 'daddr' is <u4 at offset 0, expected >u4"):
        ct.update_batch(host_order, values[:50])
    renamed = keys.astype({"names": ["d", "s", "dp", "sp", "nh", "fl"], "formats": [">u4", ">u4", ">u2", ">u2", "u1", "u1"],
                           "offsets": [0, 4, 8, 10, 12, 13], "itemsize": 14})
    with pytest.raises(ValidationError, match="fields d, s, dp, sp, nh, fl, expected daddr, saddr"):
        ct.update_batch(renamed, values)
    with pytest.raises(ValidationError, match=r"values array .*: 16-byte entries, expected 56 \(make one with np.zeros\(n, m.value_dtype\)\)"):
        ct.update_batch(keys, np.zeros(100, [("a", "<u8"), ("b", "<u8")]))
    with pytest.raises(ValidationError, match="expected"):
        ct.update_batch(keys, np.zeros(100, np.int64))
    with pytest.raises(ValidationError, match="not a multiple of 14"):
        ct.update_batch(np.zeros(100, np.uint8), values[:1])
    with pytest.raises(ValidationError, match="100 keys but 99 values"):
        ct.update_batch(keys, values[:99])
    with pytest.raises(ValidationError, match=r"1-D array, got shape \(10, 10\)"):
        ct.update_batch(keys.reshape(10, 10), values.reshape(10, 10))
    with pytest.raises(ValidationError, match="keys array has dtype"):
        ct.delete_batch(host_order)
    after = by_sport(*ct.to_numpy())
    assert np.array_equal(after[0], before[0]) and np.array_equal(after[1], before[1])


def test_empty_map_gives_empty_arrays_and_frame(ct: Map[Ipv4CtTuple, CtEntry]):
    keys, values = ct.to_numpy()
    assert keys.shape == values.shape == (0,)
    assert keys.dtype == ct.key_dtype and values.dtype == ct.value_dtype
    assert list(ct.iter_batches()) == []
    assert ct.update_batch(keys, values) == 0 and ct.delete_batch(keys) == 0
    pandas()
    df = ct.to_pandas(decode=True)
    assert len(df) == 0 and "daddr" in df.columns and "value.flags" in df.columns


# -- pandas --------------------------------------------------------------------------------------------
def test_to_pandas_columns_and_decoded_addresses(ct: Map[Ipv4CtTuple, CtEntry]):
    pd = pandas()
    keys, values = ct_arrays(ct, 1000)
    ct.update_batch(keys, values)
    df = ct.to_pandas().sort_values("sport", ignore_index=True)
    assert list(df.columns) == ["daddr", "saddr", "dport", "sport", "nexthdr", "key.flags", "backend_id", "packets",
                                "bytes", "lifetime", "value.flags", "rev_nat_index", "ifindex", "tx_flags_seen",
                                "rx_flags_seen", "src_sec_id", "last_tx_report", "last_rx_report"]
    assert len(df) == 1000
    assert df["daddr"][0] == int(IPv4Address("10.96.0.10")) and df["dport"].unique().tolist() == [80]
    assert df["sport"].tolist() == list(range(1024, 2024)) and df["rev_nat_index"].unique().tolist() == [3]
    assert df["key.flags"].unique().tolist() == [1] and df["value.flags"].unique().tolist() == [0x10]
    dec = ct.to_pandas(decode=True).sort_values("sport", ignore_index=True)
    assert isinstance(dec["daddr"].dtype, pd.CategoricalDtype)
    assert dec["daddr"].unique().tolist() == ["10.96.0.10"]
    assert dec["saddr"][:3].tolist() == ["10.244.1.0", "10.244.1.1", "10.244.1.2"] and dec["saddr"].nunique() == 300
    assert dec["dport"].tolist() == [80] * 1000 and dec["sport"][0] == 1024   # host integers, as undecoded
    assert (dec["saddr"] == "10.244.1.7").sum() == len(range(7, 1000, 300))


def test_to_pandas_decodes_macs_and_scalar_columns():
    pandas()
    with Map.create(MapType.HASH, "np_lxc", EndpointKey, EndpointInfo, 8) as m:
        m[EndpointKey(ip4=IPv4Address("10.244.0.5"))] = EndpointInfo(ifindex=4, lxc_id=9, flags=0, mac="0a:00:00:00:00:05",
                                                                     node_mac="aa:bb:cc:dd:ee:ff", sec_id=1234)
        row = m.to_pandas(decode=True).iloc[0]
        assert (row["ip4"], row["mac"], row["node_mac"], row["sec_id"]) == ("10.244.0.5", "0a:00:00:00:00:05",
                                                                           "aa:bb:cc:dd:ee:ff", 1234)
        assert row["key"] == 0 and row["flags"] == 0 and row["family"] == 1
    with Map.create(MapType.ARRAY, "np_arrdf", U32, U64, 3) as m:
        m[1] = 5
        df = m.to_pandas()
        assert list(df.columns) == ["key", "value"] and df["value"].tolist() == [0, 5, 0]


def test_to_pandas_without_pandas_says_how_to_install_it(ct: Map[Ipv4CtTuple, CtEntry], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pandas", None)   # import pandas -> ImportError
    with pytest.raises(NotSupportedError, match=r"pip install 'ciliumlite\[pandas\]'"):
        ct.to_pandas()


def test_batch_lookup_errors_keep_their_errno(ct: Map[Ipv4CtTuple, CtEntry]):
    keys, values = ct_arrays(ct)
    ct.update_batch(keys, values)
    # A one-entry batch cannot hold a hash bucket of two (10k entries in 16k buckets collide).
    with pytest.raises(BpfError) as info:
        list(ct.iter_batches(chunk=1))
    assert info.value.errno == errno.ENOSPC and "pass a larger chunk" in str(info.value)
