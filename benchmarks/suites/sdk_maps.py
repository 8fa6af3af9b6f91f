"""sdk_maps: program a 100k-entry hash map from Python, one element per call vs batch syscalls,
and read a 1M-entry conntrack table into numpy and pandas.

perf.md §5 and §7.6 (C1, C2), issue 16 ("maps at numpy speed"). The map is ``test_hash`` of
tests/bpf/objects/test_maps.o (8-byte ``test_key``, 16-byte ``test_value``), resized before load to
hold every entry.

Arms, per operation (interleaved per round, map state reset before every timed run):

- insert: ``Map.set`` per element (records) | ``update_batch`` of record sequences |
  ``update_batch`` of pre-packed bytes | ``update_batch`` of numpy structured arrays
  (``m.key_dtype``/``m.value_dtype``). Plus the Python encoding alone (``Record.pack`` of every key
  and value, no syscall) to attribute the records-vs-bytes gap.
- lookup: ``Map.get`` per element (records, decoded) | ``lookup_batch()`` (decoded records) |
  ``lookup_batch_raw()`` (packed bytes) | ``lookup_batch_numpy()`` (structured arrays). Plus the
  decoding alone (``Record.unpack`` of every key and value).
- delete: ``Map.delete`` per element | ``delete_batch`` of records | of bytes | of an array.
- dump (C2): one ``lookup_batch_raw()`` of the map at 1 % fill vs 100 % fill, same ``max_entries``;
  ``to_numpy()`` and ``to_pandas()`` of the full map against the raw dump.
- ct: a conntrack table of the datapath's records (``Ipv4CtTuple`` -> ``CtEntry``, 14 + 56 bytes) with
  1M entries (100k with --quick) in a BPF hash map created from user space: one whole-table read as
  ``lookup_batch_raw()`` bytes, ``lookup_batch()`` records, ``to_numpy()``, ``to_pandas()`` and
  ``to_pandas(decode=True)`` (dotted-quad address columns). Sources spread over 10.244.0.0/16 (65,536
  addresses), destinations over 1,024 service addresses, distinct source ports.

Record objects, packed buffers and arrays are built once, outside the timed regions: the insert arms
time what the SDK does with them (encode + syscalls), not building Python objects.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

import numpy as np

from benchmarks.harness import Arm, Context, Measurement, Summary, fmt_value, frozen_heap, interleave, ratio
from benchmarks.suites._common import TestKey, TestValue, resize
from ciliumlite.bpf import BpfObject, Map, MapType
from ciliumlite.datapath.records import CtEntry, Ipv4CtTuple

DESCRIPTION = ("100k hash-map entries from Python: per-element calls vs batch ops (records, packed bytes, numpy "
               "arrays); a 1M-entry conntrack table into numpy and pandas")
NEEDS_ROOT = True

N_FULL = 100_000
N_QUICK = 10_000
CT_FULL = 1_000_000
CT_QUICK = 100_000
MAP = "test_hash"

# Measurement names (stable across runs: trend lines key on them).
SET_EACH = "insert: Map.set per element"
UPD_REC = "insert: update_batch(records)"
UPD_BYTES = "insert: update_batch(bytes)"
UPD_NP = "insert: update_batch(structured arrays)"
ENCODE = "insert: Record.pack of keys+values only (no syscall)"
GET_EACH = "lookup: Map.get per element"
LB_DEC = "lookup: lookup_batch() decoded records"
LB_RAW = "lookup: lookup_batch_raw() bytes"
LB_NP = "lookup: lookup_batch_numpy() arrays"
DECODE = "lookup: Record.unpack of keys+values only (no syscall)"
DEL_EACH = "delete: Map.delete per element"
DEL_REC = "delete: delete_batch(records)"
DEL_BYTES = "delete: delete_batch(bytes)"
DEL_NP = "delete: delete_batch(structured array)"
DUMP_1 = "dump: lookup_batch_raw() at 1% fill"
DUMP_100 = "dump: lookup_batch_raw() at 100% fill"
DUMP_NP = "dump: to_numpy() at 100% fill"
DUMP_PD = "dump: to_pandas() at 100% fill"
CT_RAW = "ct: lookup_batch_raw() bytes"
CT_REC = "ct: lookup_batch() records"
CT_NP = "ct: to_numpy()"
CT_PD = "ct: to_pandas()"
CT_PD_DEC = "ct: to_pandas(decode=True)"

R_SET_REC = "insert: per-element ÷ batch(records)"
R_SET_BYTES = "insert: per-element ÷ batch(bytes)"
R_UPD_REC_BYTES = "insert: batch(records) ÷ batch(bytes)"
R_GET_DEC = "lookup: per-element ÷ batch(decoded)"
R_GET_RAW = "lookup: per-element ÷ batch(raw)"
R_LB_DEC_RAW = "lookup: batch(decoded) ÷ batch(raw)"
R_DEL_REC = "delete: per-element ÷ batch(records)"
R_DEL_BYTES = "delete: per-element ÷ batch(bytes)"
R_DEL_REC_BYTES = "delete: batch(records) ÷ batch(bytes)"
R_DUMP = "dump: 1% fill ÷ 100% fill (whole call)"
R_SET_NP = "insert: per-element ÷ batch(arrays)"
R_UPD_NP_BYTES = "insert: batch(arrays) ÷ batch(bytes)"
R_GET_NP = "lookup: per-element ÷ batch(arrays)"
R_LB_NP_RAW = "lookup: batch(arrays) ÷ batch(raw)"
R_DEL_NP = "delete: per-element ÷ batch(array)"
R_DUMP_NP = "dump: to_numpy() ÷ lookup_batch_raw()"
R_DUMP_PD = "dump: to_pandas() ÷ lookup_batch_raw()"
R_CT_REC = "ct: lookup_batch() records ÷ raw"
R_CT_NP = "ct: to_numpy() ÷ raw"
R_CT_PD = "ct: to_pandas() ÷ raw"
R_CT_PD_DEC = "ct: to_pandas(decode=True) ÷ raw"

C1_GOAL = 10.0  # perf.md §7.6 C1: per-element ÷ batch, normalised per element, >= 10
ARRAY_LOOKUP_GOAL = 2.0  # issue 16: lookup_batch into an array within 2x of the raw-bytes batch
FRAME_GOAL = 3.0  # issue 16: a 1M-entry conntrack dump into a DataFrame <= 3x the raw-bytes dump ...
FRAME_SECONDS_GOAL = 1.0  # ... and under 1 s on this machine


def _ops(m: Map[TestKey, TestValue], keys: list[TestKey], values: list[TestValue], kbuf: bytes,
         vbuf: bytes) -> dict[str, Callable[[], object]]:
    """The map operations the arms time and the untimed state resets around them."""
    n = len(keys)

    def count() -> int:
        return m.lookup_batch_raw()[2]

    def clear() -> None:
        raw_keys, _, live = m.lookup_batch_raw()
        if live:
            m.delete_batch(raw_keys)

    def fill() -> None:
        clear()
        if m.update_batch(kbuf, vbuf) != n:
            raise RuntimeError("fill: short batch update")

    def fill_1pct() -> None:
        clear()
        k = max(n // 100, 1)
        m.update_batch(kbuf[: k * TestKey.SIZE], vbuf[: k * TestValue.SIZE])

    def expect(want: int) -> Callable[[], None]:
        def check() -> None:
            got = count()
            if got != want:
                raise RuntimeError(f"map holds {got} entries, expected {want}")
        return check

    def set_each() -> None:
        s = m.set
        for k, v in zip(keys, values, strict=True):
            s(k, v)

    def get_each() -> None:
        g = m.get
        misses = 0
        for k in keys:
            if g(k) is None:
                misses += 1
        if misses:
            raise RuntimeError(f"{misses} lookups missed")

    def del_each() -> None:
        d = m.delete
        for k in keys:
            d(k)

    def lb_decoded() -> None:
        if len(m.lookup_batch()) != n:
            raise RuntimeError("lookup_batch: wrong count")

    def lb_raw() -> None:
        if m.lookup_batch_raw()[2] != n:
            raise RuntimeError("lookup_batch_raw: wrong count")

    def encode() -> None:
        b"".join([k.pack() for k in keys])
        b"".join([v.pack() for v in values])

    def decode() -> None:
        [TestKey.unpack(kbuf, i) for i in range(0, len(kbuf), TestKey.SIZE)]
        [TestValue.unpack(vbuf, i) for i in range(0, len(vbuf), TestValue.SIZE)]

    def lb_numpy() -> None:
        if len(m.lookup_batch_numpy()[0]) != n:
            raise RuntimeError("lookup_batch_numpy: wrong count")

    karr, varr = np.frombuffer(kbuf, m.key_dtype).copy(), np.frombuffer(vbuf, m.value_dtype).copy()

    return {
        "clear": clear, "fill": fill, "fill_1pct": fill_1pct, "expect_n": expect(n), "expect_0": expect(0),
        "set_each": set_each, "get_each": get_each, "del_each": del_each, "lb_decoded": lb_decoded,
        "lb_raw": lb_raw, "encode": encode, "decode": decode, "lb_numpy": lb_numpy,
        "upd_rec": lambda: m.update_batch(keys, values), "upd_bytes": lambda: m.update_batch(kbuf, vbuf),
        "upd_np": lambda: m.update_batch(karr, varr),
        "del_rec": lambda: m.delete_batch(keys), "del_bytes": lambda: m.delete_batch(kbuf),
        "del_np": lambda: m.delete_batch(karr),
        "dump": m.lookup_batch_raw, "to_numpy": m.to_numpy, "to_pandas": m.to_pandas,
    }


def _ct_arrays(m: Map[Ipv4CtTuple, CtEntry], n: int) -> tuple[np.ndarray, np.ndarray]:
    """n conntrack entries: clients spread over a /16 of pods, 1,024 service addresses, distinct ports."""
    rng = np.random.default_rng(16)
    keys, values = np.zeros(n, m.key_dtype), np.zeros(n, m.value_dtype)
    i = np.arange(n)
    keys["saddr"] = int(IPv4Address("10.244.0.0")) + i % 65536
    keys["sport"] = 1024 + i // 65536   # (saddr, sport) distinct for every i below 4.2M
    keys["daddr"] = int(IPv4Address("10.96.0.0")) + rng.integers(0, 1024, n)
    keys["dport"] = np.where(keys["daddr"] % 4 == 0, 443, 80)
    keys["nexthdr"], keys["flags"] = 6, 1
    values["packets"] = rng.integers(1, 10_000, n)
    values["bytes"] = values["packets"] * 800
    values["lifetime"], values["rev_nat_index"], values["src_sec_id"] = 3600, keys["daddr"] & 0x3FF, 256
    return keys, values


def _ct_run(ctx: Context, n: int, reps: int, warm: int) -> dict[str, list[float]]:
    """Fill a conntrack-shaped hash map with n entries, then time whole-table reads of it."""
    with Map.create(MapType.HASH, "bench_ct", Ipv4CtTuple, CtEntry, n) as ct:
        keys, values = _ct_arrays(ct, n)
        if ct.update_batch(keys, values) != n or ct.lookup_batch_raw()[2] != n:
            raise RuntimeError("ct: fill did not hold every entry")
        del keys, values

        def expect(fn: Callable[[], Any], count: Callable[[Any], int]) -> Callable[[], None]:
            def run() -> None:
                if count(fn()) != n:
                    raise RuntimeError("ct: a read missed entries")
            return run

        ctx.log(f"ct: {n} entries, {reps} repeats ...")
        return interleave([
            Arm(CT_RAW, expect(ct.lookup_batch_raw, lambda r: r[2]), 1),
            Arm(CT_REC, expect(ct.lookup_batch, len), 1),
            Arm(CT_NP, expect(ct.to_numpy, lambda r: len(r[0])), 1),
            Arm(CT_PD, expect(ct.to_pandas, len), 1),
            Arm(CT_PD_DEC, expect(lambda: ct.to_pandas(decode=True), len), 1),
        ], repeats=reps, warmup=warm)


def run(ctx: Context) -> list[Measurement]:
    """Time insert/lookup/delete of N entries per element and in batches; return ns/entry and ratios."""
    n = N_QUICK if ctx.quick else N_FULL
    n_ct = CT_QUICK if ctx.quick else CT_FULL
    reps, warm = ctx.repeats, ctx.warmup
    ctx.params.update(entries=n, map=f"{MAP} (BPF_MAP_TYPE_HASH, max_entries resized to {n})",
                      key_bytes=TestKey.SIZE, value_bytes=TestValue.SIZE, repeats=reps, warmup=warm,
                      lookup_batch_chunk=4096, batch_size=f"{n} (one call)",
                      ct_entries=n_ct, ct_map=f"BPF_MAP_TYPE_HASH of Ipv4CtTuple -> CtEntry (14 + 56 bytes), "
                                             f"max_entries {n_ct}, created with Map.create",
                      numpy=np.__version__)

    importlib.import_module("pandas")   # imported here, not in the first timed to_pandas() round
    keys = [TestKey(a=i, b=i & 0xFFFF, c=i & 0xFF) for i in range(n)]
    values = [TestValue(x=i * 3, y=i, z=(~i) & 0xFFFFFFFF) for i in range(n)]
    kbuf = b"".join(k.pack() for k in keys)
    vbuf = b"".join(v.pack() for v in values)

    with frozen_heap():
        obj = BpfObject(ctx.obj_path("test_maps.o"))
        try:
            resize(obj, MAP, n)
            obj.load()
            m: Map[TestKey, TestValue] = obj.map(MAP, TestKey, TestValue)
            if m.max_entries != n:
                raise RuntimeError(f"{MAP} has max_entries {m.max_entries}, wanted {n}")
            op = _ops(m, keys, values, kbuf, vbuf)
            ctx.log(f"{MAP}: {m!r}; {reps} repeats after {warm} warmup round(s), interleaved")

            ctx.log(f"insert {n} entries ...")
            ins = interleave([
                Arm(SET_EACH, op["set_each"], n, setup=op["clear"], check=op["expect_n"]),
                Arm(UPD_REC, op["upd_rec"], n, setup=op["clear"], check=op["expect_n"]),
                Arm(UPD_BYTES, op["upd_bytes"], n, setup=op["clear"], check=op["expect_n"]),
                Arm(UPD_NP, op["upd_np"], n, setup=op["clear"], check=op["expect_n"]),
                Arm(ENCODE, op["encode"], n),
            ], repeats=reps, warmup=warm)

            ctx.log(f"lookup {n} entries ...")
            op["fill"]()
            look = interleave([
                Arm(GET_EACH, op["get_each"], n),
                Arm(LB_DEC, op["lb_decoded"], n),
                Arm(LB_RAW, op["lb_raw"], n),
                Arm(LB_NP, op["lb_numpy"], n),
                Arm(DECODE, op["decode"], n),
            ], repeats=reps, warmup=warm)

            ctx.log(f"delete {n} entries ...")
            dele = interleave([
                Arm(DEL_EACH, op["del_each"], n, setup=op["fill"], check=op["expect_0"]),
                Arm(DEL_REC, op["del_rec"], n, setup=op["fill"], check=op["expect_0"]),
                Arm(DEL_BYTES, op["del_bytes"], n, setup=op["fill"], check=op["expect_0"]),
                Arm(DEL_NP, op["del_np"], n, setup=op["fill"], check=op["expect_0"]),
            ], repeats=reps, warmup=warm)

            ctx.log("dump at 1 % and 100 % fill ...")
            dump = interleave([
                Arm(DUMP_1, op["dump"], 1, setup=op["fill_1pct"]),
                Arm(DUMP_100, op["dump"], 1, setup=op["fill"]),
                Arm(DUMP_NP, op["to_numpy"], 1, setup=op["fill"]),
                Arm(DUMP_PD, op["to_pandas"], 1, setup=op["fill"]),
            ], repeats=reps, warmup=warm)
            op["clear"]()
        finally:
            obj.close()
        ct = _ct_run(ctx, n_ct, reps, warm)


    per = "ns/entry"
    ms = [Measurement.from_samples(name, s, per, group="insert") for name, s in ins.items()]
    ms.append(ratio(R_SET_REC, ins[SET_EACH], ins[UPD_REC], group="insert", note="perf.md C1 goal >= 10"))
    ms.append(ratio(R_SET_BYTES, ins[SET_EACH], ins[UPD_BYTES], group="insert", note="perf.md C1 goal >= 10"))
    ms.append(ratio(R_UPD_REC_BYTES, ins[UPD_REC], ins[UPD_BYTES], group="insert",
                    note="cost of encoding records in Python"))
    ms.append(ratio(R_SET_NP, ins[SET_EACH], ins[UPD_NP], group="insert", note="issue 16 goal >= 10"))
    ms.append(ratio(R_UPD_NP_BYTES, ins[UPD_NP], ins[UPD_BYTES], group="insert",
                    note="array checks over a bare buffer"))
    ms += [Measurement.from_samples(name, s, per, group="lookup") for name, s in look.items()]
    ms.append(ratio(R_GET_DEC, look[GET_EACH], look[LB_DEC], group="lookup"))
    ms.append(ratio(R_GET_RAW, look[GET_EACH], look[LB_RAW], group="lookup"))
    ms.append(ratio(R_LB_DEC_RAW, look[LB_DEC], look[LB_RAW], group="lookup",
                    note="cost of decoding records in Python"))
    ms.append(ratio(R_GET_NP, look[GET_EACH], look[LB_NP], group="lookup"))
    ms.append(ratio(R_LB_NP_RAW, look[LB_NP], look[LB_RAW], group="lookup", note="issue 16 goal <= 2"))
    ms += [Measurement.from_samples(name, s, per, group="delete") for name, s in dele.items()]
    ms.append(ratio(R_DEL_REC, dele[DEL_EACH], dele[DEL_REC], group="delete"))
    ms.append(ratio(R_DEL_BYTES, dele[DEL_EACH], dele[DEL_BYTES], group="delete"))
    ms.append(ratio(R_DEL_REC_BYTES, dele[DEL_REC], dele[DEL_BYTES], group="delete"))
    ms.append(ratio(R_DEL_NP, dele[DEL_EACH], dele[DEL_NP], group="delete"))
    ms += [Measurement.from_samples(name, [x / 1e3 for x in s], "µs/call", group="dump",
                                    note=f"max_entries {n}") for name, s in dump.items()]
    ms.append(ratio(R_DUMP, dump[DUMP_1], dump[DUMP_100], group="dump",
                    note="perf.md C2: report; ≈1 if cost follows buckets, ≈0.01 if it follows live entries"))
    ms.append(ratio(R_DUMP_NP, dump[DUMP_NP], dump[DUMP_100], group="dump"))
    ms.append(ratio(R_DUMP_PD, dump[DUMP_PD], dump[DUMP_100], group="dump"))
    ms += [Measurement.from_samples(name, [x / 1e6 for x in s], "ms/call", group="ct", note=f"{n_ct} entries")
           for name, s in ct.items()]
    ms.append(ratio(R_CT_REC, ct[CT_REC], ct[CT_RAW], group="ct"))
    ms.append(ratio(R_CT_NP, ct[CT_NP], ct[CT_RAW], group="ct"))
    ms.append(ratio(R_CT_PD, ct[CT_PD], ct[CT_RAW], group="ct", note="issue 16 goal <= 3"))
    ms.append(ratio(R_CT_PD_DEC, ct[CT_PD_DEC], ct[CT_RAW], group="ct", note="issue 16 goal <= 3"))
    return ms


def summarize(ms: list[Measurement]) -> list[Summary]:
    """Per-element vs batch per operation (ns/entry and ratios); whole-map dumps against the raw bytes."""
    by = {m.name: m for m in ms}

    def t(name: str) -> str:
        return fmt_value(by[name].median, by[name].unit)

    def r(name: str, goal: float | None = None, *, at_most: bool = False) -> str:
        m = by[name]
        if goal is None:
            return fmt_value(m.median, "x")
        ok = m.ci95 is not None and (m.ci95[1] <= goal if at_most else m.ci95[0] >= goal)
        return f"{fmt_value(m.median, 'x')} {'✓' if ok else '✗'}"

    rows = [
        ["insert (set / update_batch)", t(SET_EACH), t(UPD_REC), t(UPD_BYTES), t(UPD_NP),
         r(R_SET_REC, C1_GOAL), r(R_SET_BYTES, C1_GOAL), r(R_SET_NP, C1_GOAL)],
        ["lookup (get / lookup_batch)", t(GET_EACH), t(LB_DEC), t(LB_RAW), t(LB_NP), r(R_GET_DEC), r(R_GET_RAW),
         r(R_GET_NP)],
        ["delete (delete / delete_batch)", t(DEL_EACH), t(DEL_REC), t(DEL_BYTES), t(DEL_NP), r(R_DEL_REC),
         r(R_DEL_BYTES), r(R_DEL_NP)],
    ]
    n = next((m.note for m in ms if m.name == DUMP_1), "")
    n_ct = next((m.note for m in ms if m.name == CT_RAW), "")
    secs = by[CT_PD_DEC].median / 1e3
    dumps = [
        [f"test_hash ({n}): lookup_batch_raw()", t(DUMP_100), "1x"],
        [f"test_hash ({n}): to_numpy()", t(DUMP_NP), r(R_DUMP_NP)],
        [f"test_hash ({n}): to_pandas()", t(DUMP_PD), r(R_DUMP_PD)],
        [f"conntrack ({n_ct}): lookup_batch_raw()", t(CT_RAW), "1x"],
        [f"conntrack ({n_ct}): lookup_batch() records", t(CT_REC), r(R_CT_REC)],
        [f"conntrack ({n_ct}): to_numpy()", t(CT_NP), r(R_CT_NP)],
        [f"conntrack ({n_ct}): to_pandas()", t(CT_PD), r(R_CT_PD, FRAME_GOAL, at_most=True)],
        [f"conntrack ({n_ct}): to_pandas(decode=True)", t(CT_PD_DEC), r(R_CT_PD_DEC, FRAME_GOAL, at_most=True)],
    ]
    return [
        Summary(
            title="ns per entry, per-element vs batch (median)",
            columns=["operation", "per element", "batch, records", "batch, bytes", "batch, arrays",
                     "elem ÷ batch(rec)", "elem ÷ batch(bytes)", "elem ÷ batch(arrays)"],
            rows=rows,
            note=(f"Python encoding alone: {t(ENCODE)} ns/entry (key+value Record.pack); decoding alone: "
                  f"{t(DECODE)} ns/entry (Record.unpack). Insert ratios are perf.md §7.6 C1 (goal ≥ "
                  f"{C1_GOAL:g}: ✓ when the 95 % CI's lower bound clears it). Lookup 'records' = lookup_batch() "
                  f"decoding to records, 'bytes' = lookup_batch_raw(), 'arrays' = lookup_batch_numpy(): "
                  f"{r(R_LB_NP_RAW, ARRAY_LOOKUP_GOAL, at_most=True)} the raw batch (issue 16 goal ≤ "
                  f"{ARRAY_LOOKUP_GOAL:g}: ✓ when the CI's upper bound is under it). C2 dump at 1 % ÷ 100 % fill "
                  f"({n}): {r(R_DUMP)}."),
        ),
        Summary(
            title="whole-map reads into Python (median per call, ratio to the raw-bytes dump of the same map)",
            columns=["read", "time", "÷ lookup_batch_raw()"],
            rows=dumps,
            note=(f"Issue 16 goals: a 1M-entry conntrack dump into a DataFrame ≤ {FRAME_GOAL:g}× the raw-bytes "
                  f"dump (✓ when the CI's upper bound is under it) and under {FRAME_SECONDS_GOAL:g} s: "
                  f"to_pandas(decode=True) took {secs:.2f} s "
                  f"({'✓' if secs < FRAME_SECONDS_GOAL else '✗'}; {n_ct} here). decode=True formats each "
                  f"distinct address once (categorical columns)."),
        ),
    ]
