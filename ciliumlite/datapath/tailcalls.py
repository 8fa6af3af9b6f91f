"""The datapath's tail calls: each object's calls map (``BPF_MAP_TYPE_PROG_ARRAY``), filled and pinned.

A program too large for the verifier's budget is split (``csrc/include/ciliumlite/tailcall.h``):
its entry program jumps to a slot of the object's calls map, here ``cilium_calls_host`` of
``bpf_host.o``. :data:`CALLS` names, per object, which program goes into which slot (it mirrors
the ``CL_CALL_*`` numbers of ``tailcall.h``; ``tests/unit/test_tailcalls_table.py`` checks that).

Lifetime, as Cilium's loader does it since cilium/cilium#28740 (never refill a calls map that
running programs jump through: a packet would run half the old build, half the new):

* every load makes a **fresh** calls map (it is not pinned by name, so libbpf never reuses one),
  and :func:`fill` writes every slot right after the load, before any program is attached;
* :func:`pin` pins it in the node's pin directory, because the kernel empties a prog array when
  its last user reference goes (the process exiting would cut every tail call): at
  ``<map name>`` for a new node, at ``<map name>:pending`` for a reload, whose old programs still
  jump through the map at ``<map name>``;
* after the reload swapped every attach point, :func:`commit` renames the pending pin over the
  old one (one ``rename``: the pin always names a filled map). :func:`discard` drops a pending pin
  when a reload is abandoned.

A node adopted by ``Datapath.restore`` needs none of this: its running programs hold their calls
map, and the pin keeps it filled.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from ciliumlite.bpf import BpfObject, Map, MapType
from ciliumlite.bpf.errors import BpfError, LayoutError
from ciliumlite.bpf.record import U32

__all__ = ["CALLS", "PENDING", "CallsMap", "TailCallError", "commit", "discard", "fill", "pin",
           "pinned_slots"]

#: Suffix of a calls map pinned by a reload and not yet committed.
PENDING: Final = ":pending"
#: Programs of an object whose name starts so are tail-call targets: each must have a slot.
TAIL_PREFIX: Final = "tail_"


class TailCallError(LayoutError):
    """An object's tail calls do not match :data:`CALLS`: a slot's program or the calls map is
    missing, or a tail program has no slot. The object is from another build than this
    ciliumlite; nothing was attached."""


@dataclass(frozen=True)
class CallsMap:
    """One object's calls map: its name and which program fills which slot."""

    object: str
    map_name: str
    slots: Mapping[int, str]

    def pin_path(self, pin_dir: str, *, pending: bool = False) -> str:
        """Where the node's (or a reload's pending) calls map of this object is pinned."""
        return os.path.join(pin_dir, self.map_name + (PENDING if pending else ""))


#: Per object (by the name of its ``.o``): its calls map. Mirrors ``tailcall.h`` (``CL_CALL_*``).
CALLS: Final[Mapping[str, CallsMap]] = MappingProxyType({
    "bpf_host": CallsMap("bpf_host", "cilium_calls_host", MappingProxyType({
        0: "tail_masq_new",        # CL_CALL_HOST_MASQ_NEW
        1: "tail_masq_rewrite",    # CL_CALL_HOST_MASQ_REWRITE
        2: "tail_nodeport_snat",   # CL_CALL_HOST_NODEPORT_SNAT
        3: "tail_nodeport_fwd",    # CL_CALL_HOST_NODEPORT_FWD
        4: "tail_icmp_err_from_netdev",  # CL_CALL_HOST_ICMP_ERR
    })),
})


def fill(name: str, obj: BpfObject) -> None:
    """Write every slot of object ``name``'s calls map with its program (``obj`` is loaded).

    An object without an entry in :data:`CALLS` must have no prog array and no ``tail_*``
    program. Raises :class:`TailCallError` when the map, a slot's program or a tail program's slot
    is missing, or the map is too small; :class:`BpfError` when the kernel refuses an update.
    """
    spec = CALLS.get(name)
    arrays = [m for m in obj.map_names if obj.map(m).type == MapType.PROG_ARRAY]
    tails = sorted(p for p in obj.programs if p.startswith(TAIL_PREFIX))
    if spec is None:
        if arrays or tails:
            raise TailCallError(f"{name}.o has tail calls ({', '.join(arrays + tails)}) that ciliumlite's "
                                "tail-call table does not know: it is from another build (rebuild: `make build`)")
        return
    if spec.map_name not in arrays:
        raise TailCallError(f"{name}.o has no prog array {spec.map_name!r} (has: {', '.join(arrays) or 'none'}): "
                            "it is from another build than ciliumlite.datapath.tailcalls (rebuild: `make build`)")
    missing = sorted(f"slot {slot}: {prog}" for slot, prog in spec.slots.items() if prog not in obj.programs)
    unknown = sorted(set(tails) - set(spec.slots.values()))
    if missing or unknown:
        what = [f"no program for {', '.join(missing)}"] if missing else []
        what += [f"no slot for {', '.join(unknown)}"] if unknown else []
        raise TailCallError(f"{name}.o's tail calls do not match {spec.map_name}: {'; '.join(what)} "
                            "(an empty slot drops every packet that reaches it; rebuild: `make build`)")
    calls = obj.map(spec.map_name, U32, U32)
    if calls.max_entries <= max(spec.slots):
        raise TailCallError(f"{name}.o's {spec.map_name} has {calls.max_entries} slots; the table needs "
                            f"{max(spec.slots) + 1} (rebuild: `make build`)")
    for slot, prog in sorted(spec.slots.items()):
        calls.set(slot, obj.program(prog).fd)


def pin(name: str, obj: BpfObject, pin_dir: str, *, pending: bool = False) -> str | None:
    """Pin object ``name``'s filled calls map in ``pin_dir`` (``pending``: at the reload's name),
    replacing what is pinned there; returns the path (None for an object without tail calls).

    Raises :class:`BpfError` when bpffs refuses the pin.
    """
    spec = CALLS.get(name)
    if spec is None:
        return None
    path = spec.pin_path(pin_dir, pending=pending)
    # Pin beside, then rename over: the name never points at nothing or at an empty map.
    tmp = f"{path}:{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    calls = obj.map(spec.map_name)
    calls.pin(tmp)
    try:
        os.rename(tmp, path)
    except OSError as exc:
        calls.unpin()
        raise BpfError("pin calls map", exc.errno or errno.EIO, target=f"{spec.map_name} at {path}") from exc
    calls.pin_path = path
    return path


def commit(pin_dir: str) -> list[str]:
    """After a reload swapped every attach point: each pending calls map in ``pin_dir`` becomes the
    node's (renamed over the old pin, whose map the kernel then empties: no program uses it any
    more). Returns the paths committed. Raises :class:`BpfError` when the rename fails (the pending
    pin then still keeps the running programs' map filled)."""
    done = []
    for spec in CALLS.values():
        src = spec.pin_path(pin_dir, pending=True)
        if not os.path.exists(src):
            continue
        dst = spec.pin_path(pin_dir)
        try:
            os.rename(src, dst)
        except OSError as exc:
            raise BpfError("commit calls map", exc.errno or errno.EIO, target=f"{src} -> {dst}") from exc
        done.append(dst)
    return done


def discard(pin_dir: str) -> None:
    """Remove the pending calls maps of an abandoned reload (the running programs keep theirs)."""
    for spec in CALLS.values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.pin_path(pin_dir, pending=True))


def pinned_slots(pin_dir: str, name: str, *, pending: bool = False) -> dict[int, int]:
    """The program id in each filled slot of object ``name``'s calls map pinned in ``pin_dir``.

    Raises :class:`BpfError` (``ENOENT``) when nothing is pinned there, :class:`KeyError` for an
    object without tail calls.
    """
    spec = CALLS[name]
    with Map.open_pinned(spec.pin_path(pin_dir, pending=pending), U32, U32) as calls:
        # A prog array read from user space gives the program's id (an empty slot: no entry).
        return {slot: prog_id for slot in range(calls.max_entries) if (prog_id := calls.get(slot)) is not None}
