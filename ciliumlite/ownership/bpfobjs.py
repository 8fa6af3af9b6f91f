"""Which BPF programs belong to a pin directory: the maps and links pinned there, and the
programs that use those maps (how ``cleanup`` proves a program on a device is ciliumlite's)."""

from __future__ import annotations

import contextlib
import os
import struct

from ciliumlite.bpf import inventory
from ciliumlite.bpf._ffi import ffi, lib

# struct bpf_prog_info (uapi/linux/bpf.h): nr_map_ids at 52, map_ids (a user pointer) at 56, name at 64.
_PROG_INFO_SIZE = 256
_NR_MAP_IDS, _MAP_IDS, _NAME = 52, 56, 64


def _fdinfo(fd: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def pinned_ids(pin_dir: str) -> tuple[set[int], set[int]]:
    """(map ids, program ids of pinned links) of every object pinned below ``pin_dir``.

    Unreadable pins are skipped (the caller only learns less); never raises.
    """
    maps: set[int] = set()
    progs: set[int] = set()
    for d, _, files in os.walk(pin_dir):
        for n in files:
            fd = lib.bpf_obj_get(os.path.join(d, n).encode())
            if fd < 0:
                continue
            try:
                info = _fdinfo(fd)
            except OSError:
                continue
            finally:
                os.close(fd)
            # A map's fdinfo has map_id; a link's has link_id and the prog_id it runs.
            if "map_id" in info:
                maps.add(int(info["map_id"]))
            elif "link_id" in info and "prog_id" in info:
                progs.add(int(info["prog_id"]))
    return maps, progs


def prog_info(prog_id: int) -> tuple[str, set[int]] | None:
    """(kernel name, ids of the maps it uses) of program ``prog_id``, or None if it has gone."""
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        buf = ffi.new("char[]", _PROG_INFO_SIZE)
        n = ffi.new("__u32 *", _PROG_INFO_SIZE)
        if lib.bpf_obj_get_info_by_fd(fd, buf, n) != 0:
            return None
        count = struct.unpack_from("<I", ffi.buffer(buf, _PROG_INFO_SIZE), _NR_MAP_IDS)[0]
        name = bytes(ffi.buffer(buf, _PROG_INFO_SIZE)[_NAME:_NAME + 16]).split(b"\0")[0].decode(errors="replace")
        if count == 0:
            return name, set()
        ids = ffi.new("__u32[]", count)
        buf2 = ffi.new("char[]", _PROG_INFO_SIZE)
        view = ffi.buffer(buf2, _PROG_INFO_SIZE)
        struct.pack_into("<IQ", view, _NR_MAP_IDS, count, int(ffi.cast("uintptr_t", ids)))
        n[0] = _PROG_INFO_SIZE
        if lib.bpf_obj_get_info_by_fd(fd, buf2, n) != 0:
            return name, set()
        return name, {int(ids[i]) for i in range(count)}
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def programs_using(map_ids: set[int]) -> set[int]:
    """Ids of the loaded programs that use any of ``map_ids``."""
    if not map_ids:
        return set()
    out = set()
    for pid in inventory.prog_ids():
        info = prog_info(pid)
        if info is not None and info[1] & map_ids:
            out.add(pid)
    return out


def links_of(prog_ids: set[int]) -> set[int]:
    """Ids of the BPF links (tcx, XDP, cgroup...) that run any of ``prog_ids``."""
    if not prog_ids:
        return set()
    out = set()
    for lid in inventory.link_ids():
        fd = lib.bpf_link_get_fd_by_id(lid)
        if fd < 0:
            continue
        try:
            if int(_fdinfo(fd).get("prog_id", "0")) in prog_ids:
                out.add(lid)
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
    return out
