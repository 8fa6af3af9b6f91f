"""Find the compiled datapath objects and load each with its node's ``.rodata`` and pins.

One function per object, as Cilium's ``pkg/datapath/loader`` has one file per object:
:func:`load_lxc`, :func:`load_host`, :func:`load_overlay`, :func:`load_sock` and :func:`load_sockops`. Each applies the
node's :class:`~ciliumlite.datapath.config.NodeRodata` (every config.h global, which every object
must declare), then the object's own knobs, then the node's overrides that the object declares.
Nothing is filtered silently: a config.h global the object lacks is a :class:`LayoutError` (the
object is from another build), and an override no object of the datapath declares is a
:class:`ValidationError` (a misspelt knob), raised before anything is loaded.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ciliumlite.bpf import BpfObject
from ciliumlite.bpf.errors import LayoutError, NotSupportedError, ValidationError
from ciliumlite.datapath import tailcalls
from ciliumlite.datapath.config import NodeRodata

OBJECTS_ENV = "CILIUMLITE_OBJECTS"
#: The datapath's objects, by the name of their ``.o``.
OBJECTS: tuple[str, ...] = ("bpf_lxc", "bpf_host", "bpf_overlay", "bpf_sock", "bpf_sockops", "bpf_xdp")


#: The objects directory of each node that runs another build than the default (by pin
#: directory, which names one node): set by the node (:func:`use_objects`) so that every later load
#: of the node (a new endpoint, the first service) takes its objects from the same build.
_NODE_OBJECTS: dict[str, str] = {}
#: ``max_entries`` of maps by name, per node (pin directory), set before each of its objects loads:
#: every object of a node must declare a pinned map the same size, or libbpf refuses to reuse the pin.
_NODE_MAP_SIZES: dict[str, dict[str, int]] = {}
#: Called with each object of a node opened while :func:`set_prepare` is in force, before it loads.
Prepare = Callable[[BpfObject], None]
_PREPARE: dict[str, Prepare] = {}


def use_objects(pin_dir: str, objects_dir: str) -> None:
    """Load the node of ``pin_dir`` from the objects in ``objects_dir`` from now on ("": the default)."""
    if objects_dir:
        _NODE_OBJECTS[pin_dir] = objects_dir
    else:
        _NODE_OBJECTS.pop(pin_dir, None)


def use_map_sizes(pin_dir: str, sizes: Mapping[str, int]) -> None:
    """Load every object of the node of ``pin_dir`` with these maps resized (``{}``: the build's
    sizes). The first object of a node creates the pins at these sizes; later ones must match."""
    if sizes:
        _NODE_MAP_SIZES[pin_dir] = dict(sizes)
    else:
        _NODE_MAP_SIZES.pop(pin_dir, None)


def set_prepare(pin_dir: str, prepare: Prepare | None) -> None:
    """Hand every object loaded for the node of ``pin_dir`` to ``prepare`` after it is opened and
    before it loads, until called again with None: an upgrade (:mod:`ciliumlite.datapath.migrate`)
    points the maps whose layout changed at new pins. The node's lock keeps other loads out meanwhile."""
    if prepare is None:
        _PREPARE.pop(pin_dir, None)
    else:
        _PREPARE[pin_dir] = prepare


def object_path(name: str, objects_dir: str = "") -> Path:
    """Path of a compiled datapath object (``bpf_lxc`` -> .../ciliumlite/objects/bpf_lxc.o), from
    ``objects_dir`` when given, else ``$CILIUMLITE_OBJECTS``, else the package's objects.

    Raises :class:`NotSupportedError` when the object was not built.
    """
    base = Path(objects_dir) if objects_dir else Path(os.environ[OBJECTS_ENV]) if OBJECTS_ENV in os.environ \
        else Path(str(resources.files("ciliumlite") / "objects"))
    path = base / f"{name}.o"
    if not path.is_file():
        raise NotSupportedError(f"datapath object {path} is missing", feature=f"{name}.o",
                                hint="build it: `make build` (or pip install . which runs CMake)")
    return path


@functools.cache
def _declared(path: str, mtime_ns: int) -> frozenset[str]:
    with BpfObject(path) as obj:  # opened, never loaded: only its BTF is read
        return frozenset(obj.rodata)


def declared_rodata(name: str) -> frozenset[str]:
    """The ``.rodata`` names object ``name`` declares (read from its BTF, cached per build)."""
    path = object_path(name)
    return _declared(str(path), path.stat().st_mtime_ns)


def check_overrides(rodata: NodeRodata, objects: Iterable[str] = OBJECTS) -> None:
    """Raise :class:`ValidationError` for an override that none of ``objects`` declares."""
    if not rodata.overrides:
        return
    known = frozenset().union(*(declared_rodata(n) for n in objects))
    unknown = sorted(k for k, _ in rodata.overrides if k not in known)
    if unknown:
        raise ValidationError(f"extra_rodata names {', '.join(map(repr, unknown))}, which no datapath object "
                              f"declares (known: {', '.join(sorted(known - {'_license'}))})")


def node_object_path(name: str, pin_dir: str) -> Path:
    """Path of object ``name`` for the node of ``pin_dir`` (its :func:`use_objects` build)."""
    return object_path(name, _NODE_OBJECTS.get(pin_dir, ""))


def _load(name: str, rodata: NodeRodata, pin_dir: str, knobs: Mapping[str, Any], *,
          pending: bool = False) -> BpfObject:
    check_overrides(rodata)  # a misspelt knob fails here too, before anything is loaded
    obj = BpfObject(node_object_path(name, pin_dir), pin_root=pin_dir)
    try:
        for map_name, size in _NODE_MAP_SIZES.get(pin_dir, {}).items():
            if map_name in obj.map_names:
                obj.resize(map_name, size)
        if (prepare := _PREPARE.get(pin_dir)) is not None:
            prepare(obj)
        missing = sorted(k for k in rodata.globals() if k not in obj.rodata)
        if missing:
            raise LayoutError(f"{name}.o does not declare the config.h globals {', '.join(missing)}: it is from "
                              "another build than ciliumlite.datapath.config (rebuild: `make build`)")
        obj.rodata.update(rodata.globals())
        obj.rodata.update(knobs)  # Rodata refuses a name the object lacks (ValidationError)
        obj.rodata.update({k: v for k, v in rodata.overrides if k in obj.rodata})
        obj.load()
        # Every tail call filled before any program of the object can be attached.
        tailcalls.fill(name, obj)
        tailcalls.pin(name, obj, pin_dir, pending=pending)
        return obj
    except BaseException:
        obj.close()
        raise


def load_lxc(rodata: NodeRodata, pin_dir: str, *, arp_responder: bool = True) -> BpfObject:
    """``bpf_lxc.o``: the endpoints' programs (``cil_from_container``) and, as the first object a
    node loads, the creator of the node's pinned maps. ``arp_responder`` answers pods' ARP in BPF.

    Raises :class:`LayoutError`, :class:`ValidationError`, :class:`VerifierError` or :class:`BpfError`.
    """
    return _load("bpf_lxc", rodata, pin_dir, {"enable_arp_responder": int(arp_responder)})


def load_host(rodata: NodeRodata, pin_dir: str, *, pending: bool = False) -> BpfObject:
    """``bpf_host.o``: ``cil_from_netdev`` / ``cil_to_netdev`` for the node's native device, with
    its calls map (``cilium_calls_host``) filled and pinned in ``pin_dir``
    (:mod:`ciliumlite.datapath.tailcalls`). ``pending=True`` (a reload, while the old programs
    still run) pins it at the pending name, for :func:`tailcalls.commit` after the swap.

    Raises as :func:`load_lxc`, and :class:`~ciliumlite.datapath.tailcalls.TailCallError` (a
    :class:`LayoutError`) when a tail-call target is missing.
    """
    return _load("bpf_host", rodata, pin_dir, {}, pending=pending)


def load_overlay(rodata: NodeRodata, pin_dir: str) -> BpfObject:
    """``bpf_overlay.o``: ``cil_from_overlay`` for the VXLAN device. Raises as :func:`load_lxc`."""
    return _load("bpf_overlay", rodata, pin_dir, {})


def load_sock(rodata: NodeRodata, pin_dir: str) -> BpfObject:
    """``bpf_sock.o``: socket LB at connect/sendmsg/recvmsg/getpeername (cgroup hooks).

    Raises as :func:`load_lxc`.
    """
    return _load("bpf_sock", rodata, pin_dir, {})


def load_sockops(rodata: NodeRodata, pin_dir: str) -> BpfObject:
    """``bpf_sockops.o``: socket acceleration (experimental): ``cil_sockops`` for the node's cgroup
    and ``cil_sk_msg`` for the ``cilium_sock_ops`` sockhash, with that map, the per-socket state,
    the runtime switch and the counters pinned by name beside the node's other maps.

    Raises as :func:`load_lxc`.
    """
    return _load("bpf_sockops", rodata, pin_dir, {})


def load_xdp(rodata: NodeRodata, pin_dir: str, *, nodeport: bool, native_mac: str | None = None) -> BpfObject:
    """``bpf_xdp.o``: ``cil_xdp_entry`` for the node's native device: the prefilter (its two maps
    pinned by name beside the node's others) and, with ``nodeport``, NodePort acceleration for
    remote backends. ``native_mac`` (the device's MAC) keeps frames flooded to other hosts out of
    NodePort.

    Raises as :func:`load_lxc`.
    """
    mac = int.from_bytes(bytes.fromhex(native_mac.replace(":", "")).ljust(8, b"\0"), "little") if native_mac else 0
    return _load("bpf_xdp", rodata, pin_dir, {"enable_xdp_nodeport": int(nodeport), "native_mac": mac})
