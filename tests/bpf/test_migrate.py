"""ciliumlite.datapath.migrate on real pinned maps: test_migrate_v1.o runs, test_migrate_v2.o is the
new build (a value with an appended field, a per-CPU value too, a map grown, one shrunk, one key
widened, one unchanged).

A refused upgrade raises before anything is created and leaves every running map as it was (same
map ids, same entries, no staging pin); an accepted one copies every entry (zero fill, per CPU,
through a converter), catches up what was written after the copy, and puts the new maps under
the pins; an abandoned one leaves no new pin behind.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciliumlite.bpf import BpfObject, Map
from ciliumlite.bpf._ffi import num_possible_cpus
from ciliumlite.bpf.inventory import map_ids
from ciliumlite.datapath import migrate

pytestmark = pytest.mark.bpf

NAMES = ("mig_grow", "mig_pcpu", "mig_shrink", "mig_key", "mig_same", "mig_lpm")


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


@pytest.fixture
def running(test_objects: Path, bpffs_dir: str) -> Iterator[BpfObject]:
    """v1 loaded with its maps pinned in a private directory and filled."""
    with BpfObject(test_objects / "test_migrate_v1.o", pin_root=bpffs_dir) as obj:
        obj.load()
        grow, pcpu, shrink, key = (obj.map(n) for n in NAMES[:4])
        for i in range(5):
            grow.set(u32(i), struct.pack("<QII", 100 + i, i, 7))
        pcpu.set(u32(1), [struct.pack("<Q", 10 + c) for c in range(num_possible_cpus())])
        for i in range(10):
            shrink.set(u32(i), u32(i * 2))
        for i in range(3):
            key.set(u32(i), u32(i + 40))
        for plen in (8, 16, 24):
            obj.map("mig_lpm").set(struct.pack("<I4s", plen, bytes([10, 1, 2, 0])), u32(plen))
        yield obj


def _view(pin_dir: str) -> dict[str, tuple[int, dict[bytes, object]]]:
    out = {}
    for name in NAMES:
        with Map.open_pinned(os.path.join(pin_dir, name)) as m:
            out[name] = (m.info.id, dict(m.items()))
    return out


def _freed(ids: set[int]) -> bool:
    """Whether the maps ``ids`` are gone (the kernel frees a map shortly after its last user)."""
    deadline = time.monotonic() + 5
    while ids & map_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not ids & map_ids()


def _widen(key: bytes, value: bytes) -> tuple[bytes, bytes]:
    return key + bytes(4), value  # the u32 key as a u64


def _upgrade(test_objects: Path, pin_dir: str, **kw: object) -> tuple[BpfObject, migrate.Migration]:
    mig = migrate.Migration(pin_dir, **kw)  # type: ignore[arg-type]
    new = BpfObject(test_objects / "test_migrate_v2.o", pin_root=pin_dir)
    try:
        mig.prepare(new)
        new.load()
    except BaseException:
        new.close()
        mig.abort()
        raise
    return new, mig


def test_a_refused_upgrade_leaves_every_map_as_it_was(running: BpfObject, test_objects: Path, bpffs_dir: str) -> None:
    before = _view(bpffs_dir)
    with pytest.raises(migrate.MigrationError) as exc:
        _upgrade(test_objects, bpffs_dir)
    text = str(exc.value)
    print(f"\n{text}")
    assert {c.name for c in exc.value.changes} == {"mig_shrink", "mig_key"}
    assert "mig_shrink: max_entries 64 -> 8; refuse: it holds 10 entries, more than the new max_entries 8" in text
    assert "mig_key: key unsigned int (4 bytes) -> unsigned long long (8 bytes); refuse: a key change needs a " \
        "declared converter" in text
    assert "running datapath is unchanged" in text
    assert _view(bpffs_dir) == before and not migrate.stale_staging_pins(bpffs_dir)


def test_an_upgrade_copies_every_entry_then_takes_the_pins(running: BpfObject, test_objects: Path,
                                                            bpffs_dir: str) -> None:
    shrink = running.map("mig_shrink")
    for i in range(8, 10):
        shrink.delete(u32(i))  # 8 entries now fit the smaller map
    before = _view(bpffs_dir)
    new, mig = _upgrade(test_objects, bpffs_dir, converters={"mig_key": _widen})
    with new:
        assert sorted(mig.changes) == ["mig_grow", "mig_key", "mig_lpm", "mig_pcpu", "mig_shrink"]  # mig_same reused
        mig.fill()
        # Written by the "old programs" after the copy (and one the new build already has).
        running.map("mig_grow").set(u32(9), struct.pack("<QII", 9, 9, 9))
        new.map("mig_grow").set(u32(4), struct.pack("<QIIQ", 4, 4, 4, 4))
        running.map("mig_grow").set(u32(4), struct.pack("<QII", 99, 99, 99))
        report = mig.commit()
        after = _view(bpffs_dir)
        by_name = {c.name: c for c in report.changes}
        assert by_name["mig_grow"].copied == 5 and by_name["mig_grow"].caught_up == 1
        grow = after["mig_grow"][1]
        assert grow[u32(0)] == struct.pack("<QIIQ", 100, 0, 7, 0)  # the new field zero
        assert grow[u32(9)] == struct.pack("<QIIQ", 9, 9, 9, 0)  # caught up after the swap
        assert grow[u32(4)] == struct.pack("<QIIQ", 4, 4, 4, 4)  # the new build's entry wins
        pcpu = after["mig_pcpu"][1]
        assert pcpu[u32(1)] == [struct.pack("<QI", 10 + c, 0) + bytes(4) for c in range(num_possible_cpus())]
        assert len(pcpu) == 8
        assert after["mig_shrink"][1] == before["mig_shrink"][1]
        assert after["mig_lpm"][1] == before["mig_lpm"][1] and len(after["mig_lpm"][1]) == 3
        assert after["mig_key"][1] == {u32(i) + bytes(4): u32(i + 40) for i in range(3)}
        assert after["mig_same"][0] == before["mig_same"][0]  # reused, not copied
        assert all(after[n][0] != before[n][0] for n in by_name)
        with Map.open_pinned(os.path.join(bpffs_dir, "mig_grow")) as m:
            assert m.max_entries == 128 and m.info.value_size == 24
        assert not migrate.stale_staging_pins(bpffs_dir)
        assert sorted(report.migrated) == sorted(by_name) and report.reset == []
    running.close()  # the old object was the last user of the old maps
    assert _freed({before[n][0] for n in by_name})


def test_an_abandoned_upgrade_removes_its_new_maps(running: BpfObject, test_objects: Path, bpffs_dir: str) -> None:
    running.map("mig_shrink").delete(u32(9))
    running.map("mig_shrink").delete(u32(8))
    before = _view(bpffs_dir)
    new, mig = _upgrade(test_objects, bpffs_dir, converters={"mig_key": _widen})
    staged = migrate.stale_staging_pins(bpffs_dir)
    assert len(staged) == 5
    with new:
        mig.fill()
        new_ids = {n: new.map(n).info.id for n in mig.changes}
        mig.abort()  # e.g. a program swap failed
    assert _view(bpffs_dir) == before and not migrate.stale_staging_pins(bpffs_dir)
    assert _freed(set(new_ids.values()))  # gone with the new object


def test_a_leftover_staging_pin_is_never_reused(running: BpfObject, test_objects: Path, bpffs_dir: str) -> None:
    # What an upgrade killed between its loads and its commit leaves: a filled <name>:next.
    running.map("mig_shrink").delete(u32(9))
    running.map("mig_shrink").delete(u32(8))
    with BpfObject(test_objects / "test_migrate_v2.o", pin_root=bpffs_dir) as stale:
        stale.set_pin_path("mig_grow", os.path.join(bpffs_dir, "mig_grow" + migrate.STAGING_SUFFIX))
        for n in NAMES[1:]:
            stale.set_pin_path(n, os.path.join(bpffs_dir, n + ":stale"))
        stale.load()
        stale.map("mig_grow").set(u32(63), bytes(24))
    new, mig = _upgrade(test_objects, bpffs_dir, converters={"mig_key": _widen})
    with new:
        mig.fill()
        mig.commit()
    with Map.open_pinned(os.path.join(bpffs_dir, "mig_grow")) as m:
        assert u32(63) not in m and len(m) == 5


def test_recover_finishes_a_swapped_upgrade_and_removes_an_unswapped_one(running: BpfObject, test_objects: Path,
                                                                        bpffs_dir: str) -> None:
    # An upgrade killed after its loads: its new maps are pinned at <name>:next, filled.
    running.map("mig_shrink").delete(u32(9))
    running.map("mig_shrink").delete(u32(8))
    before = _view(bpffs_dir)
    new, mig = _upgrade(test_objects, bpffs_dir, converters={"mig_key": _widen})
    with new:
        mig.fill()
        new_ids = {n: new.map(n).info.id for n in mig.changes}
        # Its programs were swapped in (here: loaded and alive, so they use the new maps): finished.
        assert migrate.recover(bpffs_dir) == dict.fromkeys(sorted(new_ids), "finished")
        after = _view(bpffs_dir)
        assert {n: after[n][0] for n in new_ids} == new_ids and not migrate.stale_staging_pins(bpffs_dir)
        assert after["mig_same"] == before["mig_same"]
    # Killed before any swap (no program uses the new maps): removed, the running maps kept.
    with BpfObject(test_objects / "test_migrate_v1.o", pin_root=bpffs_dir) as again:
        # The pins now hold the new layout: back to v1 would shrink values; stage by hand instead.
        for n in NAMES:
            again.set_pin_path(n, os.path.join(bpffs_dir, n + migrate.STAGING_SUFFIX))
        again.load()
        staged = {n: again.map(n).info.id for n in NAMES}
    assert migrate.recover(bpffs_dir) == dict.fromkeys(sorted(NAMES), "removed")
    assert _freed(set(staged.values())) and not migrate.stale_staging_pins(bpffs_dir)
    assert {n: m[0] for n, m in _view(bpffs_dir).items()} == {n: after[n][0] for n in NAMES}
