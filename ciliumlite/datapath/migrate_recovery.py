"""Recovery of an upgrade (:mod:`ciliumlite.datapath.migrate`) whose process died half-way.

An upgrade builds each new map at ``<name>:next`` and renames it over ``<name>`` only after the
program swap; a process killed in between leaves those pins. :func:`recover` (run by every
``Datapath.restore``) finishes the renames if the swap had begun, else removes them.
"""

from __future__ import annotations

import logging
import os
import struct

from ciliumlite.bpf import Map, inventory
from ciliumlite.bpf._ffi import ffi, lib
from ciliumlite.bpf.errors import BpfError

log = logging.getLogger(__name__)

#: Suffix of the pin a new map is built under until the programs using it are swapped in.
STAGING_SUFFIX = ":next"


def stale_staging_pins(pin_dir: str) -> list[str]:
    """The ``<name>:next`` pins an upgrade that died half-way left in ``pin_dir``."""
    try:
        return sorted(os.path.join(pin_dir, n) for n in os.listdir(pin_dir) if n.endswith(STAGING_SUFFIX))
    except FileNotFoundError:
        return []


_PROG_INFO = struct.Struct("<II8sIIQQQIIQ")  # struct bpf_prog_info up to map_ids
_PROG_INFO_SIZE = 232


def maps_in_use() -> set[int]:
    """Ids of the maps some loaded program uses (``bpf_prog_info.map_ids`` of every program)."""
    used: set[int] = set()
    for prog_id in inventory.prog_ids():
        fd = lib.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            continue  # gone meanwhile
        try:
            buf = ffi.new("char[]", _PROG_INFO_SIZE)
            n = ffi.new("__u32 *", _PROG_INFO_SIZE)
            if lib.bpf_obj_get_info_by_fd(fd, buf, n) < 0:
                continue
            nr = _PROG_INFO.unpack_from(ffi.buffer(buf, _PROG_INFO_SIZE))[9]
            if not nr:
                continue
            ids = ffi.new("__u32[]", nr)
            buf = ffi.new("char[]", _PROG_INFO_SIZE)
            fields = list(_PROG_INFO.unpack_from(bytes(_PROG_INFO_SIZE)))
            fields[9], fields[10] = nr, int(ffi.cast("uintptr_t", ids))
            ffi.memmove(buf, _PROG_INFO.pack(*fields), _PROG_INFO.size)
            n[0] = _PROG_INFO_SIZE
            if lib.bpf_obj_get_info_by_fd(fd, buf, n) == 0:
                got = min(nr, _PROG_INFO.unpack_from(ffi.buffer(buf, _PROG_INFO_SIZE))[9])
                used.update(int(ids[i]) for i in range(got))
        finally:
            os.close(fd)
    return used


def recover(pin_dir: str) -> dict[str, str]:
    """Finish or undo an upgrade of the node in ``pin_dir`` that died half-way (its process was
    killed between building the new maps and renaming them over the pins).

    The ``<name>:next`` maps are one upgrade's (a new upgrade removes older ones first). If a
    loaded program uses any of them, the programs were swapped (at least one attach point runs the
    new build): every rename is finished. If none is used, the upgrade never swapped: they are
    removed and the old maps stay. Returns what was done per map (``"finished"`` or
    ``"removed"``); reload with the new build afterwards to bring every attach point to it (a swap
    can have stopped half-way).
    """
    staged = {}
    for pin in stale_staging_pins(pin_dir):
        try:
            with Map.open_pinned(pin) as m:
                staged[pin] = m.info.id
        except BpfError:
            continue
    if not staged:
        return {}
    live = bool(set(staged.values()) & maps_in_use())
    done: dict[str, str] = {}
    for pin in sorted(staged):
        name = os.path.basename(pin)[: -len(STAGING_SUFFIX)]
        if live:
            os.rename(pin, os.path.join(pin_dir, name))
        else:
            os.unlink(pin)
        done[name] = "finished" if live else "removed"
    log.warning("%s: an upgrade that died half-way left %s: %s", pin_dir, ", ".join(done),
                "its programs run on the new maps, which now take the pins (reload with the new build)" if live
                else "removed (no program used them; the old maps stay)")
    return done


__all__ = ["STAGING_SUFFIX", "maps_in_use", "recover", "stale_staging_pins"]
