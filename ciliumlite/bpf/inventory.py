"""What BPF objects the kernel holds right now (ids of programs, maps and links), for leak checks."""

from __future__ import annotations

from collections.abc import Callable

from ciliumlite.bpf._ffi import ffi, lib


def _ids(next_id: Callable[[int, object], int]) -> set[int]:
    out: set[int] = set()
    cur = ffi.new("__u32 *", 0)
    start = 0
    while next_id(start, cur) == 0:
        start = int(cur[0])
        out.add(start)
    return out


def prog_ids() -> set[int]:
    """Ids of every loaded BPF program."""
    return _ids(lib.bpf_prog_get_next_id)


def map_ids() -> set[int]:
    """Ids of every BPF map."""
    return _ids(lib.bpf_map_get_next_id)


def link_ids() -> set[int]:
    """Ids of every BPF link."""
    return _ids(lib.bpf_link_get_next_id)
