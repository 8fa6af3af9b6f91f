"""sdk_maps: program a 100k-entry hash map from Python, one element per call vs batch syscalls.

perf.md §5 and §7.6 (C1, C2). The map is ``test_hash`` of tests/bpf/objects/test_maps.o
(8-byte ``test_key``, 16-byte ``test_value``), resized before load to hold every entry.

Arms, per operation (interleaved per round, map state reset before every timed run):

- insert: ``Map.set`` per element (records) | ``update_batch`` of record sequences |
  ``update_batch`` of pre-packed bytes. Plus the Python encoding alone (``Record.pack`` of every key
  and value, no syscall) to attribute the records-vs-bytes gap.
- lookup: ``Map.get`` per element (records, decoded) | ``lookup_batch()`` (decoded records) |
  ``lookup_batch_raw()`` (packed bytes).
- delete: ``Map.delete`` per element | ``delete_batch`` of records | ``delete_batch`` of bytes.
- dump (C2): one ``lookup_batch_raw()`` of the map at 1 % fill vs 100 % fill, same ``max_entries``.

Record objects and packed buffers are built once, outside the timed regions: the insert arms time
what the SDK does with them (encode + syscalls), not building Python objects.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.harness import Arm, Context, Measurement, Summary, fmt_value, frozen_heap, interleave, ratio
from benchmarks.suites._common import TestKey, TestValue, resize
from ciliumlite.bpf import BpfObject, Map

DESCRIPTION = "100k hash-map entries from Python: per-element calls vs batch ops (records and packed bytes)"
NEEDS_ROOT = True

N_FULL = 100_000
N_QUICK = 10_000
MAP = "test_hash"

# Measurement names (stable across runs: trend lines key on them).
SET_EACH = "insert: Map.set per element"
UPD_REC = "insert: update_batch(records)"
UPD_BYTES = "insert: update_batch(bytes)"
ENCODE = "insert: Record.pack of keys+values only (no syscall)"
GET_EACH = "lookup: Map.get per element"
LB_DEC = "lookup: lookup_batch() decoded records"
LB_RAW = "lookup: lookup_batch_raw() bytes"
DEL_EACH = "delete: Map.delete per element"
DEL_REC = "delete: delete_batch(records)"
DEL_BYTES = "delete: delete_batch(bytes)"
DUMP_1 = "dump: lookup_batch_raw() at 1% fill"
DUMP_100 = "dump: lookup_batch_raw() at 100% fill"

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

C1_GOAL = 10.0  # perf.md §7.6 C1: per-element ÷ batch, normalised per element, >= 10


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

    return {
        "clear": clear, "fill": fill, "fill_1pct": fill_1pct, "expect_n": expect(n), "expect_0": expect(0),
        "set_each": set_each, "get_each": get_each, "del_each": del_each, "lb_decoded": lb_decoded,
        "lb_raw": lb_raw, "encode": encode,
        "upd_rec": lambda: m.update_batch(keys, values), "upd_bytes": lambda: m.update_batch(kbuf, vbuf),
        "del_rec": lambda: m.delete_batch(keys), "del_bytes": lambda: m.delete_batch(kbuf),
        "dump": m.lookup_batch_raw,
    }


def run(ctx: Context) -> list[Measurement]:
    """Time insert/lookup/delete of N entries per element and in batches; return ns/entry and ratios."""
    n = N_QUICK if ctx.quick else N_FULL
    reps, warm = ctx.repeats, ctx.warmup
    ctx.params.update(entries=n, map=f"{MAP} (BPF_MAP_TYPE_HASH, max_entries resized to {n})",
                      key_bytes=TestKey.SIZE, value_bytes=TestValue.SIZE, repeats=reps, warmup=warm,
                      lookup_batch_chunk=4096, batch_size=f"{n} (one call)")

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
                Arm(ENCODE, op["encode"], n),
            ], repeats=reps, warmup=warm)

            ctx.log(f"lookup {n} entries ...")
            op["fill"]()
            look = interleave([
                Arm(GET_EACH, op["get_each"], n),
                Arm(LB_DEC, op["lb_decoded"], n),
                Arm(LB_RAW, op["lb_raw"], n),
            ], repeats=reps, warmup=warm)

            ctx.log(f"delete {n} entries ...")
            dele = interleave([
                Arm(DEL_EACH, op["del_each"], n, setup=op["fill"], check=op["expect_0"]),
                Arm(DEL_REC, op["del_rec"], n, setup=op["fill"], check=op["expect_0"]),
                Arm(DEL_BYTES, op["del_bytes"], n, setup=op["fill"], check=op["expect_0"]),
            ], repeats=reps, warmup=warm)

            ctx.log("dump at 1 % and 100 % fill ...")
            dump = interleave([
                Arm(DUMP_1, op["dump"], 1, setup=op["fill_1pct"]),
                Arm(DUMP_100, op["dump"], 1, setup=op["fill"]),
            ], repeats=reps, warmup=warm)
            op["clear"]()
        finally:
            obj.close()


    per = "ns/entry"
    ms = [Measurement.from_samples(name, s, per, group="insert") for name, s in ins.items()]
    ms.append(ratio(R_SET_REC, ins[SET_EACH], ins[UPD_REC], group="insert", note="perf.md C1 goal >= 10"))
    ms.append(ratio(R_SET_BYTES, ins[SET_EACH], ins[UPD_BYTES], group="insert", note="perf.md C1 goal >= 10"))
    ms.append(ratio(R_UPD_REC_BYTES, ins[UPD_REC], ins[UPD_BYTES], group="insert",
                    note="cost of encoding records in Python"))
    ms += [Measurement.from_samples(name, s, per, group="lookup") for name, s in look.items()]
    ms.append(ratio(R_GET_DEC, look[GET_EACH], look[LB_DEC], group="lookup"))
    ms.append(ratio(R_GET_RAW, look[GET_EACH], look[LB_RAW], group="lookup"))
    ms.append(ratio(R_LB_DEC_RAW, look[LB_DEC], look[LB_RAW], group="lookup",
                    note="cost of decoding records in Python"))
    ms += [Measurement.from_samples(name, s, per, group="delete") for name, s in dele.items()]
    ms.append(ratio(R_DEL_REC, dele[DEL_EACH], dele[DEL_REC], group="delete"))
    ms.append(ratio(R_DEL_BYTES, dele[DEL_EACH], dele[DEL_BYTES], group="delete"))
    ms.append(ratio(R_DEL_REC_BYTES, dele[DEL_REC], dele[DEL_BYTES], group="delete"))
    ms += [Measurement.from_samples(name, [x / 1e3 for x in s], "µs/call", group="dump",
                                    note=f"max_entries {n}") for name, s in dump.items()]
    ms.append(ratio(R_DUMP, dump[DUMP_1], dump[DUMP_100], group="dump",
                    note="perf.md C2: report; ≈1 if cost follows buckets, ≈0.01 if it follows live entries"))
    return ms


def summarize(ms: list[Measurement]) -> list[Summary]:
    """One row per operation: ns/entry of the three arms and the per-element ÷ batch ratios."""
    by = {m.name: m for m in ms}

    def t(name: str) -> str:
        return fmt_value(by[name].median, by[name].unit)

    def r(name: str, goal: float | None = None) -> str:
        m = by[name]
        mark = "" if goal is None else (" ✓" if m.ci95 and m.ci95[0] >= goal else " ✗")
        return f"{fmt_value(m.median, 'x')}{mark}"

    rows = [
        ["insert (set / update_batch)", t(SET_EACH), t(UPD_REC), t(UPD_BYTES),
         r(R_SET_REC, C1_GOAL), r(R_SET_BYTES, C1_GOAL)],
        ["lookup (get / lookup_batch)", t(GET_EACH), t(LB_DEC), t(LB_RAW), r(R_GET_DEC), r(R_GET_RAW)],
        ["delete (delete / delete_batch)", t(DEL_EACH), t(DEL_REC), t(DEL_BYTES), r(R_DEL_REC), r(R_DEL_BYTES)],
    ]
    n = next((m.note for m in ms if m.name == DUMP_1), "")
    return [Summary(
        title="ns per entry, per-element vs batch (median)",
        columns=["operation", "per element", "batch, records", "batch, bytes", "elem ÷ batch(rec)",
                 "elem ÷ batch(bytes)"],
        rows=rows,
        note=(f"Python encoding alone: {t(ENCODE)} ns/entry (key+value Record.pack). "
              f"Insert ratios are perf.md §7.6 C1 (goal ≥ {C1_GOAL:g}: ✓ when the 95 % CI's lower bound "
              f"clears it). Lookup 'records' = lookup_batch() decoding to records, 'bytes' = "
              f"lookup_batch_raw(). C2 dump at 1 % ÷ 100 % fill ({n}): {r(R_DUMP)}."),
    )]
