"""The rules of ciliumlite.datapath.migrate, on map layouts as BTF and the kernel describe them.

Each rule of the module's table: what differs (in words, old -> new) and the action taken. The
kernel side (copying, staging pins, refusals leaving a running node untouched) is in
tests/bpf/test_migrate.py and tests/integration/test_upgrade.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from ciliumlite.bpf.btf import MemberInfo, StructInfo, TypeInfo
from ciliumlite.bpf.map import MapType
from ciliumlite.bpf.object import MapLayout
from ciliumlite.datapath.migrate import decide, differences

pytestmark = pytest.mark.unit

U32, U64 = TypeInfo("int", "__u32", 4), TypeInfo("int", "__u64", 8)


def struct(name: str, *fields: tuple[str, TypeInfo]) -> StructInfo:
    members, off = [], 0
    for fname, t in fields:
        members.append(MemberInfo(fname, off, t))
        off += t.size
    return StructInfo(name, off, "struct", tuple(members))


KEY = struct("key", ("ip", U32), ("port", U32))
VALUE = struct("value", ("a", U64), ("b", U32), ("c", U32))
GROWN = struct("value", ("a", U64), ("b", U32), ("c", U32), ("d", U64))


def layout(name: str = "cilium_lxc", *, key: StructInfo = KEY, value: StructInfo = VALUE,
           type: MapType = MapType.HASH, max_entries: int = 1024, flags: int = 1) -> MapLayout:
    return MapLayout(name, type, key.size, value.size, max_entries, flags, key, value)


def test_the_same_layout_needs_nothing() -> None:
    assert differences(layout(), layout()) == []


def test_an_appended_field_is_copied_with_zero_fill() -> None:
    old, new = layout(), layout(value=GROWN)
    assert differences(old, new) == ["value 16 -> 24 bytes (appended: d)"]
    action, reason = decide(old, new, 10)
    assert action == "migrate" and "zero" in reason


def test_max_entries_grown_copies_all_and_shrunk_copies_what_fits() -> None:
    old = layout(max_entries=100)
    assert decide(old, layout(max_entries=200), 100) == ("migrate", "entries copied")
    assert differences(old, layout(max_entries=10)) == ["max_entries 100 -> 10"]
    assert decide(old, layout(max_entries=10), 10)[0] == "migrate"
    action, reason = decide(old, layout(max_entries=10), 11)
    assert action == "refuse" and "holds 11 entries, more than the new max_entries 10" in reason


def test_the_entries_are_counted_only_when_the_map_shrinks() -> None:
    def count() -> int:
        raise AssertionError("counted")

    assert decide(layout(max_entries=1), layout(max_entries=2), count)[0] == "migrate"
    assert decide(layout(max_entries=2), layout(max_entries=1), lambda: 1)[0] == "migrate"


def test_a_flag_change_is_copied() -> None:
    old, new = layout(flags=1), layout(flags=0)
    assert differences(old, new) == ["flags 0x1 -> 0x0"]
    assert decide(old, new, 5)[0] == "migrate"


@pytest.mark.parametrize(("new", "what", "why"), [
    (layout(key=struct("key", ("ip", U32), ("port", U32), ("zone", U32))), "key struct key (8 bytes: ip, port) -> "
     "struct key (12 bytes: ip, port, zone)", "key change needs a declared converter"),
    (layout(key=struct("key", ("port", U32), ("ip", U32))), "key layout", "key change"),
    (layout(value=struct("value", ("a", U64), ("b", U32))), "value struct value (16 bytes: a, b, c) -> "
     "struct value (12 bytes: a, b)", "shrank"),
    (layout(value=struct("value", ("x", U32), ("a", U64), ("b", U32), ("c", U32))), "value", "no prefix"),
    (layout(value=struct("value", ("a", U64), ("c", U32), ("b", U32))), "value layout", "moved"),
    (layout(type=MapType.LRU_HASH), "map type HASH -> LRU_HASH", "map type change"),
])
def test_a_change_without_a_converter_is_refused(new: MapLayout, what: str, why: str) -> None:
    old = layout()
    assert any(what in d for d in differences(old, new)), differences(old, new)
    action, reason = decide(old, new, 3)
    assert action == "refuse" and why in reason, reason
    # A declared converter migrates it instead.
    assert decide(old, new, 3, converter=True)[0] == "migrate"


def test_soft_state_starts_empty_unless_strict() -> None:
    old = layout("cilium_ct4_global", type=MapType.LRU_HASH, value=GROWN)
    new = replace(old, value_size=VALUE.size, value=VALUE)  # a downgrade: the value shrinks
    action, reason = decide(old, new, 1000)
    assert action == "reset" and "starts empty" in reason and "shrank" in reason
    assert decide(old, new, 1000, strict=True)[0] == "refuse"
    # ... and migrates when it can.
    assert decide(new, old, 1000)[0] == "migrate"


@pytest.mark.parametrize(("mtype", "action"), [
    (MapType.PROG_ARRAY, "fresh"), (MapType.RINGBUF, "reset"), (MapType.SOCKHASH, "refuse"),
    (MapType.HASH_OF_MAPS, "refuse"),
])
def test_maps_user_space_cannot_copy(mtype: MapType, action: str) -> None:
    old = MapLayout("m", mtype, 4, 4, 8, 0)
    assert decide(old, replace(old, max_entries=16), 0)[0] == action


def test_a_value_without_btf_cannot_be_shown_to_grow_at_its_end() -> None:
    old = MapLayout("m", MapType.HASH, 4, 4, 8, 0)
    new = replace(old, value_size=8)
    assert differences(old, new) == ["value 4 bytes -> 8 bytes"]
    assert decide(old, new, 1)[0] == "refuse"
