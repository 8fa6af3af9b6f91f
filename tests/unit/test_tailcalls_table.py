"""ciliumlite.datapath.tailcalls mirrors csrc/include/ciliumlite/tailcall.h and the objects' sources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ciliumlite.datapath import tailcalls

CSRC = Path(__file__).resolve().parents[2] / "csrc"
# "#define CL_CALL_HOST_MASQ_NEW   0   /* tail_masq_new: ..."
_SLOT = re.compile(r"#define\s+CL_CALL_([A-Z]+)_(\w+)\s+(\d+)\s+/\*\s*(\w+):")
_SIZE = re.compile(r"#define\s+CL_CALLS_([A-Z]+)_SIZE\s+(\d+)")
# Which CL_CALL_<OBJ>_ prefix belongs to which object and calls map.
_PREFIX = {"HOST": "bpf_host"}


def _header() -> tuple[dict[str, dict[int, str]], dict[str, int]]:
    text = (CSRC / "include" / "ciliumlite" / "tailcall.h").read_text()
    slots: dict[str, dict[int, str]] = {}
    for obj, _, value, prog in _SLOT.findall(text):
        table = slots.setdefault(_PREFIX[obj], {})
        assert int(value) not in table, f"tailcall.h gives slot {value} of {obj} twice"
        table[int(value)] = prog
    sizes = {_PREFIX[obj]: int(n) for obj, n in _SIZE.findall(text)}
    return slots, sizes


def test_python_table_is_the_header_s() -> None:
    slots, sizes = _header()
    assert {name: dict(spec.slots) for name, spec in tailcalls.CALLS.items()} == slots
    for name, spec in tailcalls.CALLS.items():
        assert sizes[name] == max(spec.slots) + 1, f"CL_CALLS_*_SIZE of {name} leaves slots unused or too few"


@pytest.mark.parametrize("name", sorted(tailcalls.CALLS))
def test_every_tail_program_of_the_source_has_a_slot_and_every_call_a_name(name: str) -> None:
    spec = tailcalls.CALLS[name]
    src = (CSRC / f"{name}.c").read_text()
    defined = set(re.findall(r'SEC\("tc"\)\s*\nint\s+(tail_\w+)\s*\(', src))
    assert defined == set(spec.slots.values()), "tail_* programs in the source vs the table"
    assert f"CL_CALLS_MAP({spec.map_name}," in src
    called = set(re.findall(rf"tail_call_or_drop\(ctx,\s*{spec.map_name},\s*(CL_CALL_\w+)", src))
    declared = {f"CL_CALL_{obj}_{slot}" for obj, slot, _, _ in
                _SLOT.findall((CSRC / "include" / "ciliumlite" / "tailcall.h").read_text())}
    assert called and called <= declared, called - declared


def test_objects_without_a_table_have_no_tail_programs() -> None:
    for src in sorted(CSRC.glob("bpf_*.c")):
        if src.stem in tailcalls.CALLS:
            continue
        text = src.read_text()
        assert "CL_CALLS_MAP(" not in text and not re.search(r"\nint\s+tail_\w+\s*\(", text), \
            f"{src.name} has tail calls: add its calls map to ciliumlite.datapath.tailcalls.CALLS"


def test_pin_paths() -> None:
    spec = tailcalls.CALLS["bpf_host"]
    assert spec.pin_path("/sys/fs/bpf/n1") == "/sys/fs/bpf/n1/cilium_calls_host"
    assert spec.pin_path("/sys/fs/bpf/n1", pending=True) == "/sys/fs/bpf/n1/cilium_calls_host:pending"
